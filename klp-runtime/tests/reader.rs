//! The shared decoder on hand-made bytes: forward compatibility (a newer writer's larger
//! entries), and every malformed input giving an error that says what is wrong where.

use klp_runtime::abi::{self, layout};
use klp_runtime::reader::{header_version, read_tables, ReadError, Resolver, TableKind};
use klp_runtime::reader::{ObjectName, Origin};

/// Resolves a pointer field's raw value `n` to the `n`th string; functions to their raw value.
struct Strings(&'static [&'static std::ffi::CStr]);

impl<'a> Resolver<'a> for Strings {
    type Func = u64;
    fn string(
        &self,
        table: TableKind,
        offset: usize,
        raw: u64,
    ) -> Result<&'a std::ffi::CStr, ReadError> {
        self.0
            .get(raw as usize)
            .copied()
            .ok_or(ReadError::BadString {
                table,
                offset,
                why: "no such string",
            })
    }
    fn func(&self, _: TableKind, _: usize, raw: u64) -> Result<Option<u64>, ReadError> {
        Ok((raw != 0).then_some(raw))
    }
}

const STRINGS: Strings = Strings(&[c"vmlinux", c"cmdline_proc_show", c"origin", c"u64"]);

/// A set entry as a writer of `size` bytes would emit it (extra bytes are a newer writer's).
fn set_entry(size: u32, id: u32, hooks: [u64; 4]) -> Vec<u8> {
    let mut e = vec![0u8; size as usize];
    e[0..4].copy_from_slice(&size.to_le_bytes());
    e[layout::SET_ID..layout::SET_ID + 4].copy_from_slice(&id.to_le_bytes());
    e[layout::SET_OBJECT..layout::SET_OBJECT + 8].copy_from_slice(&0u64.to_le_bytes());
    for (field, h) in layout::SET_HOOKS.iter().zip(hooks) {
        e[*field..field + 8].copy_from_slice(&h.to_le_bytes());
    }
    e[layout::SET_ORIGIN..layout::SET_ORIGIN + 8].copy_from_slice(&2u64.to_le_bytes());
    e
}

fn header(version: u32) -> Vec<u8> {
    let mut h = vec![0u8; layout::HEADER_SIZE];
    h[..8].copy_from_slice(&abi::MAGIC);
    h[layout::HEADER_FORMAT_VERSION..][..4].copy_from_slice(&version.to_le_bytes());
    h[layout::HEADER_SIZE_FIELD..][..4]
        .copy_from_slice(&(layout::HEADER_SIZE as u32).to_le_bytes());
    h
}

#[test]
fn a_newer_writers_larger_entries_are_read_by_their_known_prefix() {
    let mut sets = set_entry(layout::SET_SIZE as u32 + 16, 7, [0x10, 0, 0, 0x40]);
    sets.extend(set_entry(layout::SET_SIZE as u32, 8, [0, 0x20, 0, 0]));
    let sets: &'static [u8] = Vec::leak(sets);
    let p = read_tables(&STRINGS, "p", 1, &[], sets, &[]).unwrap();
    assert_eq!(p.sets.len(), 2);
    assert_eq!(
        (p.sets[0].id, p.sets[0].hooks),
        (7, [Some(0x10), None, None, Some(0x40)])
    );
    assert_eq!(
        (p.sets[1].id, p.sets[1].object, p.sets[1].origin),
        (8, ObjectName::VMLINUX, Origin::new("origin"))
    );
}

#[test]
fn a_header_from_a_newer_format_is_refused_naming_both_versions() {
    // Format 1 (shadow ids not yet namespaced) is still read.
    assert_eq!(header_version(&header(1)), Ok(1));
    assert_eq!(header_version(&header(2)), Ok(2));
    let err = header_version(&header(3)).unwrap_err();
    assert_eq!(
        err,
        ReadError::TooNew {
            found: 3,
            supported: 2
        }
    );
    assert!(err
        .to_string()
        .contains("version 3 is newer than this reader understands (up to 2)"));
}

#[test]
fn bad_magic_and_short_headers_are_errors() {
    let mut h = header(1);
    h[0] = b'X';
    assert_eq!(header_version(&h), Err(ReadError::BadMagic));
    let err = header_version(&header(1)[..20]).unwrap_err();
    assert!(
        matches!(
            err,
            ReadError::Truncated {
                table: TableKind::Header,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_truncated_table_names_the_table_and_the_offset() {
    let mut sets = set_entry(layout::SET_SIZE as u32, 1, [0; 4]);
    sets.extend(&set_entry(layout::SET_SIZE as u32, 2, [0; 4])[..20]);
    let sets: &'static [u8] = Vec::leak(sets);
    let err = read_tables(&STRINGS, "p", 1, &[], sets, &[]).unwrap_err();
    assert_eq!(
        err,
        ReadError::Truncated {
            table: TableKind::Sets,
            offset: 56,
            need: 56,
            have: 20
        }
    );
    assert_eq!(
        err.to_string(),
        "callback-set table is truncated at offset 0x38: an entry needs 56 bytes, 20 remain"
    );
}

#[test]
fn an_entry_size_below_the_minimum_or_unaligned_is_an_error() {
    for size in [0u32, 8, 57] {
        let mut e = set_entry(layout::SET_SIZE as u32, 1, [0; 4]);
        e[0..4].copy_from_slice(&size.to_le_bytes());
        let e: &'static [u8] = Vec::leak(e);
        let err = read_tables(&STRINGS, "p", 1, &[], e, &[]).unwrap_err();
        assert!(
            matches!(err, ReadError::BadEntrySize { offset: 0, .. }),
            "size {size}: {err:?}"
        );
    }
}

#[test]
fn an_unresolvable_string_is_an_error_not_a_panic() {
    let mut e = set_entry(layout::SET_SIZE as u32, 1, [0; 4]);
    e[layout::SET_OBJECT..layout::SET_OBJECT + 8].copy_from_slice(&99u64.to_le_bytes());
    let e: &'static [u8] = Vec::leak(e);
    let err = read_tables(&STRINGS, "p", 1, &[], e, &[]).unwrap_err();
    assert_eq!(
        err,
        ReadError::BadString {
            table: TableKind::Sets,
            offset: layout::SET_OBJECT,
            why: "no such string"
        }
    );
}

#[test]
fn an_origin_is_taken_apart_once_and_reads_as_written() {
    let written = "broken::dup::first (tests/fixtures/broken/src/lib.rs:21)";
    let o = Origin::new(written);
    assert_eq!(
        (o.item(), o.file(), o.line()),
        ("broken::dup::first", "tests/fixtures/broken/src/lib.rs", 21)
    );
    assert_eq!(o.to_string(), written);
    // Another shape is kept whole, sorted first.
    let odd = Origin::new("hand-written");
    assert_eq!(
        (odd.item(), odd.line(), odd.to_string()),
        ("hand-written", 0, "hand-written".into())
    );
}
