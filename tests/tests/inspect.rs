//! `cargo klp inspect` on modules we built, C livepatch modules built here under Kbuild, the
//! whole Debian 6.1 image, and corrupted files. Expectations come from the sources of the
//! modules (the examples and tests/fixtures/c), not from inspect's own output.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use cargo_klp::inspect::{self, CallbackSet, Function, Kind, ShadowType, State};
use klp_harness::{Kernel, Series};
use proptest::prelude::*;

fn kernel() -> Kernel {
    klp_harness::kernel(Series::V6_1).unwrap_or_else(|e| panic!("{e:#}"))
}

fn ours(package: &str) -> PathBuf {
    klp_harness::build_patch(package, &kernel()).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A C fixture module built under Kbuild.
fn c_module(fixture: &str, module: &str) -> PathBuf {
    klp_harness::build_c_fixture(fixture, module, &kernel()).unwrap_or_else(|e| panic!("{e:#}"))
}

fn set(id: u32, hooks: [Option<&str>; 4]) -> CallbackSet {
    let h = |i: usize| hooks[i].map(str::to_string);
    CallbackSet {
        id,
        pre_patch: h(0),
        post_patch: h(1),
        pre_unpatch: h(2),
        post_unpatch: h(3),
    }
}

fn hook_presence(c: &CallbackSet) -> [bool; 4] {
    [
        c.pre_patch.is_some(),
        c.post_patch.is_some(),
        c.pre_unpatch.is_some(),
        c.post_unpatch.is_some(),
    ]
}

#[test]
fn a_klp_rs_module_reads_as_its_source_declares() {
    let r = inspect::inspect(&ours("p4")).unwrap();
    assert_eq!(
        (r.kind, r.format_version, r.livepatch, r.signed),
        (
            Kind::KlpRs,
            Some(klp_runtime::abi::FORMAT_VERSION),
            true,
            false
        )
    );
    assert_eq!(r.replace, Some(true), "replace defaults to true");
    assert_eq!(r.name.as_deref(), Some("klp_v4"));
    assert_eq!(r.license.as_deref(), Some("GPL"));
    assert_eq!(
        r.description.as_deref(),
        Some("Rust live patch: versioned example, patch 4 of 4")
    );
    assert!(
        r.vermagic
            .as_deref()
            .unwrap()
            .starts_with("6.1.0-56-amd64 ")
            || r.vermagic
                .as_deref()
                .unwrap()
                .starts_with(&kernel().release)
    );
    assert_eq!(r.objects.len(), 1);
    let o = &r.objects[0];
    assert_eq!(o.name, "vmlinux");
    assert_eq!(o.functions.len(), 1);
    assert_eq!(
        (o.functions[0].old.as_str(), o.functions[0].sympos),
        ("cmdline_proc_show", 0)
    );
    assert!(o.functions[0]
        .new
        .as_deref()
        .unwrap()
        .contains("cmdline_proc_show"));
    // examples/versioned/common/mod.rs: set 1 has all four hooks; p4's set 3 too.
    assert_eq!(
        o.callback_sets
            .iter()
            .map(|s| (s.id, hook_presence(s)))
            .collect::<Vec<_>>(),
        [(1, [true; 4]), (3, [true; 4])]
    );
    let mut shadows = r.shadow_types.clone();
    shadows.sort_by_key(|t| t.id);
    assert_eq!(
        shadows,
        [
            ShadowType {
                id: 0x10,
                owner: 1,
                type_name: "Banner".into(),
                size: 1,
                align: 1
            },
            ShadowType {
                id: 0x30,
                owner: 3,
                type_name: "TaskStats".into(),
                size: 16,
                align: 8
            },
        ]
    );
    assert_eq!(
        r.states,
        [State {
            id: 0x6b6c_7072_7300_0001,
            version: 1
        }]
    );
}

#[test]
fn a_c_sample_module_is_decoded_through_its_relocations() {
    let r = inspect::inspect(&c_module("sample", "klp_c_sample")).unwrap();
    assert_eq!(
        (r.kind, r.replace, r.livepatch),
        (Kind::CStatic, Some(true), true)
    );
    assert_eq!(r.objects.len(), 1);
    assert_eq!(r.objects[0].name, "vmlinux");
    assert_eq!(
        r.objects[0].functions,
        [
            Function {
                old: "cmdline_proc_show".into(),
                sympos: 0,
                new: Some("sample_cmdline_proc_show".into())
            },
            Function {
                old: "version_proc_show".into(),
                sympos: 1,
                new: Some("sample_version_proc_show".into())
            },
        ]
    );
    assert_eq!(r.states, [State { id: 7, version: 2 }]);
}

#[test]
fn a_klp_build_module_is_decoded_from_its_compact_tables() {
    let r = inspect::inspect(&c_module("klpbuild", "klp_c_build")).unwrap();
    assert_eq!(r.kind, Kind::KlpBuild);
    type Funcs = Vec<(String, u64, Option<String>)>;
    let summary: Vec<(String, Funcs)> = r
        .objects
        .iter()
        .map(|o| {
            (
                o.name.clone(),
                o.functions
                    .iter()
                    .map(|f| (f.old.clone(), f.sympos, f.new.clone()))
                    .collect(),
            )
        })
        .collect();
    let f = |o: &str, p: u64, n: &str| (o.to_string(), p, Some(n.to_string()));
    assert_eq!(
        summary,
        [
            (
                "vmlinux".to_string(),
                vec![
                    f("cmdline_proc_show", 0, "build_cmdline"),
                    f("version_proc_show", 2, "build_version")
                ]
            ),
            (
                "binfmt_misc".to_string(),
                vec![f("bm_status_read", 0, "build_status")]
            ),
        ]
    );
    assert_eq!(
        r.objects[0].callbacks,
        Some(set(0, [None, Some("build_post_patch"), None, None]))
    );
    assert_eq!(r.objects[1].callbacks, None);
    assert_eq!(
        r.klp_rela_sections,
        [".klp.rela.vmlinux..text.cmdline_proc_show"]
    );
    assert_eq!(r.klp_symbols, [".klp.sym.vmlinux.saved_command_line,0"]);
}

fn image_module(path: &str) -> PathBuf {
    let k = kernel();
    let plain = k.modules.join("kernel").join(path);
    assert!(plain.exists(), "{}", plain.display());
    plain
}

#[test]
fn an_ordinary_module_is_not_a_livepatch_and_its_signature_is_seen() {
    let r = inspect::inspect(&image_module("fs/binfmt_misc.ko")).unwrap();
    assert_eq!(
        (r.kind, r.livepatch, r.signed),
        (Kind::NotLivepatch, false, true)
    );
    assert_eq!(r.name.as_deref(), Some("binfmt_misc"));
    assert!(r.objects.is_empty());
    let text = inspect::render(&r);
    assert!(text.ends_with("└── not a livepatch\n"), "{text}");
}

#[test]
fn compressed_modules_read_like_the_plain_module() {
    let ko = ours("p3");
    let plain = inspect::inspect(&ko).unwrap();
    let dir = klp_harness::target_dir().join("klp-c").join("compressed");
    std::fs::create_dir_all(&dir).unwrap();
    for (tool, ext, name) in [("xz", "xz", "xz"), ("zstd", "zst", "zstd")] {
        let out = dir.join(format!("klp_v3.ko.{ext}"));
        let status = Command::new(tool)
            .args(["-q", "-f", "-k", "-c"])
            .arg(&ko)
            .stdout(std::fs::File::create(&out).unwrap())
            .status();
        assert!(status.unwrap().success(), "{tool}");
        let r = inspect::inspect(&out).unwrap();
        assert_eq!(r.compression, Some(name));
        assert_eq!(
            (r.kind, &r.objects, &r.shadow_types),
            (plain.kind, &plain.objects, &plain.shadow_types),
            "{tool}"
        );
    }
}

#[test]
fn against_a_c_patch_that_would_replace_ours_is_refused() {
    let plan = inspect::against(&c_module("sample", "klp_c_sample"), &ours("p3")).unwrap();
    let why = plan.refused.expect("refused");
    assert!(why.contains("lacks klp_state 0x6b6c707273000001"), "{why}");
    assert!(why.contains("cannot replace a klp-rs patch"), "{why}");
}

#[test]
fn against_ours_replacing_a_c_patch_with_a_state_we_lack_is_refused() {
    let plan = inspect::against(&ours("p1"), &c_module("sample", "klp_c_sample")).unwrap();
    assert!(plan
        .refused
        .expect("refused")
        .contains("lacks klp_state 0x7 (version 2)"));
}

#[test]
fn against_a_module_with_tables_of_a_newer_format_is_refused() {
    let next =
        klp_harness::build_patch_with("p1", &kernel(), &["--cfg", "klp_rs_next_format"]).unwrap();
    let plan = inspect::against(&ours("p3"), &next).unwrap();
    let why = plan.refused.expect("refused");
    assert!(
        why.contains("klp_v1's tables are format 3, it reads up to 2"),
        "{why}"
    );
    assert!(plan.steps.is_empty(), "nothing runs");
    let r = inspect::inspect(&next).unwrap();
    assert_eq!((r.kind, r.format_version), (Kind::KlpRs, Some(3)));
    assert_eq!(
        r.warnings,
        ["klp-rs tables of format 3; this cargo-klp reads up to 2: update it to see them"]
    );
}

#[test]
fn against_lists_functions_added_removed_and_kept() {
    let plan = inspect::against(&ours("modobj"), &ours("p3")).unwrap();
    assert_eq!(plan.refused, None);
    assert_eq!(plan.functions_added, ["binfmt_misc:bm_status_read,0"]);
    assert_eq!(plan.functions_removed, ["vmlinux:cmdline_proc_show,0"]);
    assert!(plan.functions_kept.is_empty());
    // modobj has sets 1 and 2 like p3, so no set changes hands; p3's 0x20 and 0x10 are not
    // owned by modobj's sets: they are freed after the transition.
    assert_eq!(
        plan.steps,
        [
            "transition",
            "p3: set 2 free shadow 0x20",
            "p3: set 1 free shadow 0x10"
        ]
    );
}

#[test]
fn against_lists_module_object_steps_as_conditional() {
    // modobj: set 1 on vmlinux, set 2 on binfmt_misc owning shadow 0x200 (all four hooks);
    // p2: set 1 only. Replacing modobj by p2, set 2 leaves: its pre_unpatch before the
    // transition and its post_unpatch after it run only where binfmt_misc is loaded; its
    // shadow type is freed either way.
    let plan = inspect::against(&ours("p2"), &ours("modobj")).unwrap();
    assert_eq!(plan.refused, None);
    assert_eq!(
        plan.steps,
        [
            "modobj: set 2 binfmt_misc pre_unpatch (if binfmt_misc is loaded)",
            "transition",
            "modobj: set 2 binfmt_misc post_unpatch (if binfmt_misc is loaded)",
            "modobj: set 2 free shadow 0x200",
        ]
    );
    assert_eq!(plan.shadow_types_freed, [0x200]);
    // As README shows it: p2 patches cmdline_proc_show, modobj bm_status_read.
    assert_eq!(
        inspect::render_plan(&plan),
        "replace klp_modobj by klp_v2\n\
         \x20 1. modobj: set 2 binfmt_misc pre_unpatch (if binfmt_misc is loaded)\n\
         \x20 2. transition\n\
         \x20 3. modobj: set 2 binfmt_misc post_unpatch (if binfmt_misc is loaded)\n\
         \x20 4. modobj: set 2 free shadow 0x200\n\
         shadow types freed: 0x200\n\
         functions: 1 added, 1 removed, 0 kept\n\
         \x20 + vmlinux:cmdline_proc_show,0\n\
         \x20 - binfmt_misc:bm_status_read,0\n"
    );
    // The other way, set 2 arrives: its pre_patch before, its post_patch after the
    // transition, where binfmt_misc is loaded; p2's 0x10 (set 1, kept) is not owned by
    // modobj's set 1, so it goes with p2.
    let plan = inspect::against(&ours("modobj"), &ours("p2")).unwrap();
    assert_eq!(
        plan.steps,
        [
            "modobj: set 2 binfmt_misc pre_patch (if binfmt_misc is loaded)",
            "transition",
            "p2: set 1 free shadow 0x10",
            "modobj: set 2 binfmt_misc post_patch (if binfmt_misc is loaded)",
        ]
    );
}

/// The fields of one of the document's tables (`| \`a.b[].c\` | ...` rows), last path part.
fn documented_fields(table: &str) -> Vec<String> {
    table
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(|f| {
            f.split('.')
                .next_back()
                .unwrap()
                .trim_end_matches("[]")
                .to_string()
        })
        .collect()
}

#[test]
fn json_carries_every_documented_field() {
    let doc =
        std::fs::read_to_string(klp_harness::workspace().join("docs/inspect-json.md")).unwrap();
    let (modules, plans) = doc
        .split_once("--against OLD`")
        .expect("the document has a plan section");
    let module_fields = documented_fields(modules);
    let plan_fields = documented_fields(plans);
    assert!(
        module_fields.len() > 30 && plan_fields.len() == 8,
        "{module_fields:?} {plan_fields:?}"
    );
    let r = serde_json::to_string(&inspect::inspect(&ours("p4")).unwrap()).unwrap();
    let p = serde_json::to_string(&inspect::against(&ours("p4"), &ours("p3")).unwrap()).unwrap();
    for (fields, json) in [(module_fields, r), (plan_fields, p)] {
        for field in fields.iter().filter(|f| *f != "plan") {
            assert!(
                json.contains(&format!("\"{field}\"")),
                "documented field `{field}` missing from {json}"
            );
        }
    }
}

#[test]
fn every_module_of_the_debian_image_inspects() {
    let files = klp_harness::image_modules(&kernel()).unwrap();
    assert!(files.len() > 3500, "{} modules", files.len());
    let results = inspect::inspect_all(&files);
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert!(
        errors.is_empty(),
        "{} of {} failed: {:?}",
        errors.len(),
        files.len(),
        &errors[..errors.len().min(5)]
    );
    let named = results
        .iter()
        .flatten()
        .filter(|r| r.name.is_some() && r.vermagic.is_some())
        .count();
    assert_eq!(named, files.len(), "every module has modinfo");
}

/// Counts the bytes each thread holds, so that a test sees the most an inspection held at
/// once: a count or size read from a crafted file must not become an allocation out of
/// proportion to the file.
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    fn add(delta: isize) {
        // Const-initialised cells without destructors: no allocation, no failure.
        let _ = LIVE.try_with(|live| {
            let now = live.get().wrapping_add(delta);
            live.set(now);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        });
    }

    pub struct Counting;

    // SAFETY: every call is forwarded to the system allocator; the bookkeeping only updates
    // thread-local integers.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            add(layout.size() as isize);
            // SAFETY: the caller's contract, forwarded.
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            add(layout.size() as isize);
            // SAFETY: the caller's contract, forwarded.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            add(-(layout.size() as isize));
            // SAFETY: the caller's contract, forwarded.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            add(new_size as isize - layout.size() as isize);
            // SAFETY: the caller's contract, forwarded.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    /// `f`'s result, and the most bytes this thread held at once while it ran beyond what
    /// it held before.
    pub fn peak<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let start = LIVE.with(Cell::get);
        PEAK.with(|p| p.set(start));
        let r = f();
        (
            r,
            usize::try_from(PEAK.with(Cell::get) - start).unwrap_or(0),
        )
    }
}

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

/// What inspecting a file of `len` bytes may hold at once: a small multiple of the file.
fn budget(len: usize) -> usize {
    8 * len + (1 << 20)
}

fn rd(d: &[u8], at: usize, n: usize) -> u64 {
    d[at..at + n]
        .iter()
        .rev()
        .fold(0, |v, b| (v << 8) | u64::from(*b))
}

/// Writes the low `n` bytes of `v` at `at`, if they fit.
fn wr(d: &mut [u8], at: usize, n: usize, v: u64) {
    if let Some(b) = at.checked_add(n).and_then(|end| d.get_mut(at..end)) {
        b.copy_from_slice(&v.to_le_bytes()[..n]);
    }
}

const SHT_SYMTAB: u32 = 2;
const SHT_RELA: u32 = 4;
const SHT_NOBITS: u32 = 8;

/// A section header of an (unmutated) ELF64 module: where it is and what it says.
#[derive(Debug, Clone)]
struct Shdr {
    name: String,
    /// File offset of the header itself.
    at: usize,
    kind: u32,
    offset: usize,
    size: usize,
    link: usize,
}

fn section_headers(d: &[u8]) -> Vec<Shdr> {
    let (shoff, shnum) = (rd(d, 0x28, 8) as usize, rd(d, 0x3c, 2) as usize);
    let field = |i: usize, off: usize, n: usize| rd(d, shoff + i * 64 + off, n) as usize;
    let names = field(rd(d, 0x3e, 2) as usize, 0x18, 8);
    (0..shnum)
        .map(|i| {
            let name = &d[names + field(i, 0, 4)..];
            let end = name.iter().position(|b| *b == 0).unwrap();
            Shdr {
                name: String::from_utf8_lossy(&name[..end]).into(),
                at: shoff + i * 64,
                kind: field(i, 4, 4) as u32,
                offset: field(i, 0x18, 8),
                size: field(i, 0x20, 8),
                link: field(i, 0x28, 4),
            }
        })
        .collect()
}

fn named<'s>(sections: &'s [Shdr], name: &str) -> &'s Shdr {
    sections
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no section {name}"))
}

/// File offsets of the entries of a symbol table or relocation section.
fn entries(s: &Shdr) -> impl Iterator<Item = usize> + '_ {
    (0..s.size / 24).map(move |i| s.offset + i * 24)
}

/// A module the property test mutates, with the sections inspect's decoders read: klp-rs
/// tables, klp-build's `.init.klp_*`, the data holding a C patch's static structures, the
/// strings they point to, modinfo, `.klp.rela.*`, the relocations of all of these, and the
/// symbol and string tables.
struct Fixture {
    name: &'static str,
    bytes: Vec<u8>,
    sections: Vec<Shdr>,
    decoded: Vec<Shdr>,
    symtab: Shdr,
}

fn decoded(name: &str) -> bool {
    let name = name.strip_prefix(".rela").unwrap_or(name);
    [
        ".klp_rs.",
        ".init.klp_",
        ".data",
        ".rodata",
        ".modinfo",
        ".klp.rela.",
        ".gnu.linkonce.this_module",
        ".symtab",
        ".strtab",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// Modules of every kind inspect decodes: klp-rs (one with a module object), klp-build's
/// tables, a samples-style C patch, an ordinary Debian module.
fn fixtures() -> &'static [Fixture] {
    static FIXTURES: OnceLock<Vec<Fixture>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        [
            ("p4", ours("p4")),
            ("modobj", ours("modobj")),
            ("klp-build", c_module("klpbuild", "klp_c_build")),
            ("C sample", c_module("sample", "klp_c_sample")),
            ("binfmt_misc", image_module("fs/binfmt_misc.ko")),
        ]
        .into_iter()
        .map(|(name, path)| {
            let bytes = std::fs::read(path).unwrap();
            let sections = section_headers(&bytes);
            let decoded = sections
                .iter()
                .filter(|s| decoded(&s.name) && s.size > 0)
                .cloned()
                .collect();
            let symtab = sections
                .iter()
                .find(|s| s.kind == SHT_SYMTAB)
                .unwrap()
                .clone();
            Fixture {
                name,
                bytes,
                sections,
                decoded,
                symtab,
            }
        })
        .collect()
    })
}

fn fixture(name: &str) -> &'static Fixture {
    fixtures().iter().find(|f| f.name == name).unwrap()
}

/// Section header fields: type, flags, offset, size, link, info, entsize.
const HEADER_FIELDS: [(usize, usize); 7] = [
    (4, 4),
    (8, 8),
    (0x18, 8),
    (0x20, 8),
    (0x28, 4),
    (0x2c, 4),
    (0x38, 8),
];
/// Symbol fields: name, section index, value, size.
const SYMBOL_FIELDS: [(usize, usize); 4] = [(0, 4), (6, 2), (8, 8), (0x10, 8)];

#[derive(Debug, Clone)]
enum Mutation {
    /// `width` bytes of `value` at an aligned place inside a section the decoders read.
    Inside {
        section: prop::sample::Index,
        at: prop::sample::Index,
        width: usize,
        value: u64,
    },
    /// A field of such a section's header.
    Header {
        section: prop::sample::Index,
        field: prop::sample::Index,
        value: u64,
    },
    /// A field of a symbol.
    Symbol {
        symbol: prop::sample::Index,
        field: prop::sample::Index,
        value: u64,
    },
    /// Any byte of the file.
    Byte { at: prop::sample::Index, value: u8 },
}

impl Mutation {
    fn apply(&self, f: &Fixture, data: &mut [u8]) {
        match self {
            Mutation::Inside {
                section,
                at,
                width,
                value,
            } => {
                let s = section.get(&f.decoded);
                if s.kind != SHT_NOBITS {
                    let at = s.offset + (at.index(s.size) & !(width - 1));
                    wr(data, at, *width, *value);
                }
            }
            Mutation::Header {
                section,
                field,
                value,
            } => {
                let (off, n) = *field.get(&HEADER_FIELDS);
                wr(data, section.get(&f.decoded).at + off, n, *value);
            }
            Mutation::Symbol {
                symbol,
                field,
                value,
            } => {
                let (off, n) = *field.get(&SYMBOL_FIELDS);
                let at = f.symtab.offset + symbol.index(f.symtab.size / 24) * 24;
                wr(data, at + off, n, *value);
            }
            Mutation::Byte { at, value } => {
                let at = at.index(data.len());
                data[at] = *value;
            }
        }
    }
}

/// Numbers that make decoders misbehave: sizes and counts at the edges of their types,
/// `SHT_NOBITS`, entry sizes, small offsets.
fn value() -> impl Strategy<Value = u64> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            1,
            u64::from(SHT_NOBITS),
            24,
            56,
            64,
            0xff,
            0xffff,
            0x10_0000,
            0x7fff_ffff,
            0xffff_ffff,
            1 << 32,
            1 << 40,
            i64::MAX as u64,
            i64::MIN as u64,
            u64::MAX - 7,
            u64::MAX,
        ]),
        0..0x1000u64,
        any::<u64>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let index = any::<prop::sample::Index>;
    prop_oneof![
        4 => (index(), index(), prop::sample::select(vec![1usize, 2, 4, 8]), value()).prop_map(
            |(section, at, width, value)| Mutation::Inside {
                section,
                at,
                width,
                value
            }
        ),
        2 => (index(), index(), value()).prop_map(|(section, field, value)| Mutation::Header {
            section,
            field,
            value
        }),
        2 => (index(), index(), value()).prop_map(|(symbol, field, value)| Mutation::Symbol {
            symbol,
            field,
            value
        }),
        1 => (index(), any::<u8>()).prop_map(|(at, value)| Mutation::Byte { at, value }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Modules mutated where the decoders read (tables, static structures, their
    /// relocations, strings, section headers, symbols) or anywhere, and maybe truncated: a
    /// report or an error naming the file, never a panic (overflow included: this is a
    /// debug build), and never more memory at once than a small multiple of the file.
    #[test]
    fn corrupted_modules_give_errors_not_panics(
        fixture in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..6),
        cut in prop::option::weighted(0.2, any::<prop::sample::Index>()),
    ) {
        let f = fixture.get(fixtures());
        let mut data = f.bytes.clone();
        for m in &mutations {
            m.apply(f, &mut data);
        }
        if let Some(cut) = cut {
            data.truncate(cut.index(data.len() + 1));
        }
        let (result, peak) = counting::peak(|| {
            inspect::inspect_bytes("fuzzed.ko", &data, None).map(|r| inspect::render(&r))
        });
        if let Err(e) = result {
            prop_assert!(e.to_string().starts_with("fuzzed.ko: "), "{}", e);
        }
        prop_assert!(
            peak <= budget(data.len()),
            "{}: {peak} bytes held at once for a file of {}",
            f.name,
            data.len()
        );
    }
}

/// A module with some fields rewritten.
fn edited(f: &Fixture, edit: impl FnOnce(&Fixture, &mut Vec<u8>)) -> Vec<u8> {
    let mut d = f.bytes.clone();
    edit(f, &mut d);
    d
}

/// Fills a string table with one string starting `prefix`, and points every name at it:
/// each entry's name is then as long as the table.
fn one_long_name(d: &mut [u8], strings: &Shdr, prefix: &str, names: impl Iterator<Item = usize>) {
    let long = &mut d[strings.offset + 1..strings.offset + strings.size - 1];
    long.fill(b'A');
    long[..prefix.len()].copy_from_slice(prefix.as_bytes());
    for at in names {
        wr(d, at, 4, 1);
    }
}

/// Modules crafted in the shapes that exhausted memory, overflowed or looped, each written
/// from what it does to a decoder: (file name, bytes).
fn crafted() -> Vec<(&'static str, Vec<u8>)> {
    let (klpbuild, sample, p4) = (fixture("klp-build"), fixture("C sample"), fixture("p4"));
    let nr_funcs = |nr: u64| {
        move |f: &Fixture, d: &mut Vec<u8>| {
            wr(
                d,
                named(&f.sections, ".init.klp_objects").offset + 56,
                4,
                nr,
            )
        }
    };
    let nobits = |name: &'static str| {
        move |f: &Fixture, d: &mut Vec<u8>| {
            let s = named(&f.sections, name);
            wr(d, s.at + 4, 4, SHT_NOBITS.into());
            wr(d, s.at + 0x20, 8, 1 << 40);
        }
    };
    vec![
        // klp_object_ext.nr_funcs, a u32 the decoder counts functions by.
        (
            "klpbuild-nr-funcs-4g.ko",
            edited(klpbuild, nr_funcs(0xffff_ffff)),
        ),
        (
            "klpbuild-nr-funcs-1m.ko",
            edited(klpbuild, nr_funcs(1 << 20)),
        ),
        // A table section that occupies no file space but claims a terabyte.
        (
            "klpbuild-objects-nobits.ko",
            edited(klpbuild, nobits(".init.klp_objects")),
        ),
        (
            "klpbuild-funcs-nobits.ko",
            edited(klpbuild, nobits(".init.klp_funcs")),
        ),
        // The symbols that size a C patch's arrays (klp_state, klp_object, klp_func)
        // claim 2^62 bytes.
        (
            "sample-symbol-sizes-huge.ko",
            edited(sample, |f, d| {
                let data = f.sections.iter().position(|s| s.name == ".data").unwrap();
                for at in entries(&f.symtab) {
                    if rd(d, at + 6, 2) as usize == data && rd(d, at + 0x10, 8) > 0 {
                        wr(d, at + 0x10, 8, 1 << 62);
                    }
                }
            }),
        ),
        // Relocations at the top of the address space: the decoder reads the fields after.
        (
            "sample-reloc-offsets-max.ko",
            edited(sample, |f, d| {
                for (k, at) in entries(named(&f.sections, ".rela.data")).enumerate() {
                    wr(d, at, 8, u64::MAX - 4 - 24 * k as u64);
                }
            }),
        ),
        // Symbol value plus addend past i64::MAX.
        (
            "p4-addends-max.ko",
            edited(p4, |f, d| {
                for at in entries(&f.symtab) {
                    wr(d, at + 8, 8, 0x1000);
                }
                for s in f
                    .sections
                    .iter()
                    .filter(|s| s.name.starts_with(".rela.klp_rs."))
                {
                    for at in entries(s) {
                        wr(d, at + 16, 8, i64::MAX as u64);
                    }
                }
            }),
        ),
        // Every section named by one string as long as the section-name table: each
        // `.klp.rela.*` name copied costs all of it.
        (
            "p4-one-section-name.ko",
            edited(p4, |f, d| {
                let strings = &f.sections[rd(d, 0x3e, 2) as usize];
                one_long_name(d, strings, ".klp.rela.", f.sections.iter().map(|s| s.at));
            }),
        ),
        // Every symbol named by one string as long as the string table (`.klp.sym.*`).
        (
            "p4-one-symbol-name.ko",
            edited(p4, |f, d| {
                let strings = &f.sections[f.symtab.link];
                one_long_name(d, strings, ".klp.sym.", entries(&f.symtab));
            }),
        ),
        // Every relocation section made a copy of the largest, applying to `.data`: the
        // same relocations read over and over.
        (
            "sample-relocations-aliased.ko",
            edited(sample, |f, d| {
                let data = f.sections.iter().position(|s| s.name == ".data").unwrap();
                let big = f
                    .sections
                    .iter()
                    .filter(|s| s.kind == SHT_RELA)
                    .max_by_key(|s| s.size)
                    .unwrap();
                for s in f.sections.iter().filter(|s| s.kind == SHT_RELA) {
                    wr(d, s.at + 0x18, 8, big.offset as u64);
                    wr(d, s.at + 0x20, 8, big.size as u64);
                    wr(d, s.at + 0x2c, 4, data as u64);
                }
            }),
        ),
    ]
}

/// 600 MiB of zeros, xz- and zstd-compressed (about 100 KiB each), made once.
fn bombs(dir: &std::path::Path) -> Vec<PathBuf> {
    [("xz", "xz -T1 -0"), ("zst", "zstd -q -1")]
        .into_iter()
        .map(|(ext, tool)| {
            let out = dir.join(format!("zeros.ko.{ext}"));
            if !out.exists() {
                let tmp = out.with_extension("tmp");
                let status = Command::new("sh")
                    .arg("-c")
                    .arg(format!("head -c 600M /dev/zero | {tool} -c > \"$0\""))
                    .arg(&tmp)
                    .status()
                    .unwrap();
                assert!(status.success(), "{tool}");
                std::fs::rename(&tmp, &out).unwrap();
            }
            out
        })
        .collect()
}

/// The child of [`crafted_modules_under_a_memory_limit`]: inspects the files named in
/// `KLP_INSPECT_FILES` one by one, printing what each held at once and its result, then
/// all together as `cargo klp inspect` does.
#[test]
#[ignore = "run by crafted_modules_under_a_memory_limit in a child process"]
fn crafted_child() {
    let Some(list) = std::env::var_os("KLP_INSPECT_FILES") else {
        return;
    };
    let files: Vec<PathBuf> = std::env::split_paths(&list).collect();
    for f in &files {
        println!("start\t{}", f.display());
        let (r, peak) = counting::peak(|| inspect::inspect(f).map(|r| inspect::render(&r)));
        let r = r.map_or_else(|e| e.to_string().replace('\n', " "), |_| "ok".into());
        println!("done\t{}\t{peak}\t{r}", f.display());
    }
    let all = inspect::inspect_all(&files);
    let ok = all.iter().filter(|r| r.is_ok()).count();
    println!("batch\t{}\t{ok}", all.len());
}

/// Runs [`crafted_child`] on `files` with 1 GiB of address space and a minute: (exit
/// status, stdout and stderr).
fn inspect_in_child(files: &[PathBuf]) -> (std::process::ExitStatus, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 1048576 && exec timeout 60 \"$0\" \"$@\"")
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crafted_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KLP_INSPECT_FILES", std::env::join_paths(files).unwrap())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

/// Crafted modules, each in a process limited to 1 GiB of address space (as a user would
/// run `cargo klp inspect` under `ulimit -v`): no abort, no panic, no loop; a report or an
/// error naming the file; what an uncompressed one holds at once is a small multiple of the
/// file. Then all of them with the intact fixtures in one batch: the bad ones are errors,
/// the rest are reported.
#[test]
fn crafted_modules_under_a_memory_limit() {
    let dir = klp_harness::target_dir().join("klp-c").join("crafted");
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = bombs(&dir);
    for (name, bytes) in crafted() {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        files.push(p);
    }
    let mut failures = Vec::new();
    for f in &files {
        let (status, text) = inspect_in_child(std::slice::from_ref(f));
        let done = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("done\t{}\t", f.display())));
        let Some((peak, result)) = done.and_then(|d| d.split_once('\t')) else {
            let why = text
                .lines()
                .filter(|l| !l.starts_with("start") && !l.trim().is_empty())
                .take(4)
                .collect::<Vec<_>>()
                .join(" | ");
            failures.push(format!("{}: child {status}: {why}", f.display()));
            continue;
        };
        let len = std::fs::metadata(f).unwrap().len() as usize;
        let peak: usize = peak.parse().unwrap();
        let compressed = f.extension().is_some_and(|e| e != "ko");
        if !compressed && peak > budget(len) {
            failures.push(format!(
                "{}: held {peak} bytes at once for a file of {len}",
                f.display()
            ));
        }
        if result != "ok" && !result.starts_with(&format!("{}: ", f.display())) {
            failures.push(format!("{}: error without the file: {result}", f.display()));
        }
        if !status.success() {
            failures.push(format!("{}: child {status}", f.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The batch: the intact fixtures too, in the middle.
    let mut batch = files.clone();
    for f in fixtures() {
        let p = dir.join(format!("intact-{}.ko", f.name.replace(' ', "-")));
        std::fs::write(&p, &f.bytes).unwrap();
        batch.insert(batch.len() / 2, p);
    }
    let (status, text) = inspect_in_child(&batch);
    assert!(status.success(), "{status}: {text}");
    let results: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("done\t"))
        .collect();
    assert_eq!(results.len(), batch.len(), "{text}");
    let ok = results.iter().filter(|r| r.ends_with("\tok")).count();
    assert!(ok >= fixtures().len(), "{text}");
    assert!(
        text.contains(&format!("batch\t{}\t{ok}\n", batch.len())),
        "the batch reports every file as inspected one by one: {text}"
    );
}

#[test]
fn a_truncated_module_says_where() {
    let whole = &fixture("p4").bytes;
    let data = &whole[..whole.len() / 2];
    let e = inspect::inspect_bytes("half.ko", data, None)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("half.ko: "), "{e}");
    assert!(e.contains("offset 0x"), "{e}");
}
