use super::against::step_lines;
use super::load::*;
use super::*;
use klp_runtime::plan::{self, Side, StepLine};
use klp_runtime::reader::{CallbackSet as Set, ShadowType as Shadow};

/// An xz stream header (CRC32 check) and one block of LZMA2 chunks, each declaring
/// `unpacked` bytes: what the size check reads, without data that would decode.
fn xz_declaring(chunks: usize, unpacked: u32) -> Vec<u8> {
    let mut x = b"\xfd7zXZ\x00\x00\x01\x69\x22\xde\x36".to_vec();
    x.extend([0x02, 0x00, 0x21, 0x01, 0x16, 0, 0, 0, 0, 0, 0, 0]); // block header
    let u = unpacked - 1;
    for i in 0..chunks {
        let control = if i == 0 { 0xe0 } else { 0x80 } | (u >> 16) as u8;
        x.extend([control, (u >> 8) as u8, u as u8, 0, 0]);
        if i == 0 {
            x.push(0x5d); // properties
        }
        x.push(0); // one packed byte
    }
    x.push(0); // end of the chunks
    while !(x.len() - 12).is_multiple_of(4) {
        x.push(0); // block padding
    }
    x.extend([0; 4]); // CRC32
    x.push(0); // the index follows
    x
}

#[test]
fn xz_declaring_more_than_a_module_is_refused_before_decoding() {
    let two_mib = 1 << 21;
    let fits = MAX_MODULE / two_mib;
    assert_eq!(
        xz_size(&xz_declaring(fits, two_mib as u32)),
        Ok(MAX_MODULE as u64)
    );
    let e = xz_size(&xz_declaring(fits + 1, two_mib as u32)).unwrap_err();
    assert!(e.starts_with("decompresses to more than 128 MiB"), "{e}");
    let e = xz_size(&xz_declaring(3, 100)[..40]).unwrap_err();
    assert!(e.contains("truncated at offset 0x28"), "{e}");
}

#[test]
fn xz_size_is_what_lzma_rs_decodes() {
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut xz = Vec::new();
    lzma_rs::xz_compress(&mut &data[..], &mut xz).unwrap();
    assert_eq!(xz_size(&xz), Ok(data.len() as u64));
    let path = std::env::temp_dir().join(format!("klp-inspect-{}.ko.xz", std::process::id()));
    std::fs::write(&path, &xz).unwrap();
    let loaded = load(&path);
    std::fs::remove_file(&path).unwrap();
    let (bytes, compression) = loaded.unwrap();
    assert_eq!((&bytes[..], compression), (&data[..], Some("xz")));
}

/// An ELF64 file of `len` bytes whose section headers (after the null one) give these
/// (type, offset, size); `extended` puts the count in section 0 as for many sections.
fn elf(len: usize, sections: &[(u32, u64, u64)], extended: bool) -> Vec<u8> {
    let mut d = vec![0u8; len];
    d[..6].copy_from_slice(b"\x7fELF\x02\x01");
    let shoff = len - 64 * (sections.len() + 1);
    let shnum = sections.len() as u64 + 1;
    d[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
    d[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
    if extended {
        d[shoff + 0x20..shoff + 0x28].copy_from_slice(&shnum.to_le_bytes());
    } else {
        d[0x3c..0x3e].copy_from_slice(&(shnum as u16).to_le_bytes());
    }
    for (i, (kind, off, size)) in sections.iter().enumerate() {
        let h = shoff + 64 * (i + 1);
        d[h + 4..h + 8].copy_from_slice(&kind.to_le_bytes());
        d[h + 0x18..h + 0x20].copy_from_slice(&off.to_le_bytes());
        d[h + 0x20..h + 0x28].copy_from_slice(&size.to_le_bytes());
    }
    d
}

/// The extent checks of the headline reader, as a message.
fn check_extent(d: &[u8]) -> Result<(), String> {
    super::headline::read("t.ko", d, &Names::for_file(d.len()))
        .map(drop)
        .map_err(|e| e.to_string())
}

#[test]
fn sections_sharing_bytes_are_refused() {
    let apart = [(1, 64, 256), (1, 320, 256)];
    let shared = [(1, 64, 512), (1, 64, 512), (4, 64, 512)];
    for extended in [false, true] {
        assert_eq!(check_extent(&elf(1024, &apart, extended)), Ok(()));
        let e = check_extent(&elf(1024, &shared, extended)).unwrap_err();
        assert!(
            e.contains("add up to 0x600 bytes, more than the file's 0x400"),
            "{e}"
        );
    }
    // SHT_NOBITS claims no file space, however large.
    assert_eq!(check_extent(&elf(1024, &[(8, 0, 1 << 40)], false)), Ok(()));
    let e = check_extent(&elf(1024, &[(1, 1000, 100)], false)).unwrap_err();
    assert!(e.contains("section 1 spans offsets 0x3e8..0x44c"), "{e}");
}

fn patch<'a>(
    name: &'a str,
    sets: &[(u32, &'a std::ffi::CStr)],
    shadows: &[(u64, u32)],
) -> Patch<'a, &'a str> {
    Patch {
        name,
        format_version: 1,
        funcs: vec![],
        sets: sets
            .iter()
            .map(|&(id, object)| Set {
                id,
                object: klp_runtime::reader::ObjectName::new(object).unwrap(),
                hooks: [Some("hook"); 4],
                origin: Default::default(),
            })
            .collect(),
        shadows: shadows
            .iter()
            .map(|&(id, owner)| Shadow {
                id,
                owner,
                type_name: "T",
                size: 8,
                align: 8,
                ctor: None,
                dtor: None,
                origin: Default::default(),
            })
            .collect(),
    }
}

#[test]
fn a_shadow_type_kept_by_a_set_on_a_module_is_freed_only_without_it() {
    // Old set 3 (vmlinux) leaves; new set 4, on binfmt_misc, owns old set 3's 0x30: with
    // binfmt_misc loaded set 4 is set up and keeps it, without it 0x30 goes after set 3.
    let old = patch("old", &[(3, c"vmlinux")], &[(0x30, 3)]);
    let new = patch("new", &[(4, c"binfmt_misc")], &[(0x30, 4)]);
    let (lines, freed) = step_lines(Some(&old), &new).unwrap();
    assert_eq!(
        lines,
        [
            "new: set 4 binfmt_misc pre_patch (if binfmt_misc is loaded)",
            "old: set 3 vmlinux pre_unpatch",
            "transition",
            "old: set 3 vmlinux post_unpatch",
            "old: set 3 free shadow 0x30 (if binfmt_misc is not loaded)",
            "new: set 4 binfmt_misc post_patch (if binfmt_misc is loaded)",
        ]
    );
    assert_eq!(freed, [0x30]);
}

#[test]
fn vmlinux_only_plans_are_the_planners_steps() {
    let old = patch("old", &[(1, c"vmlinux"), (3, c"vmlinux")], &[(0x30, 3)]);
    let new = patch("new", &[(1, c"vmlinux"), (2, c"vmlinux")], &[]);
    let (lines, _) = step_lines(Some(&old), &new).unwrap();
    let planned: Vec<String> = plan::replace(Some(&old), &new, &|_| false)
        .unwrap()
        .steps()
        .map(|s| match s {
            None => "transition".to_string(),
            Some(s) => StepLine {
                patch: if s.side() == Side::Old { "old" } else { "new" },
                step: &s,
            }
            .to_string(),
        })
        .collect();
    assert_eq!(lines, planned);
    assert_eq!(lines.len(), 6);
}
