//! `cargo klp inspect` on modules we built, C livepatch modules built here under Kbuild, the
//! whole Debian 6.1 image, and corrupted files. Expectations come from the sources of the
//! modules (the examples and tests/fixtures/c), not from inspect's own output.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use cargo_klp::inspect::{self, CallbackSet, Function, Kind, ShadowType, State};
use proptest::prelude::*;
use xtask::{Kernel, Series};

fn kernel() -> Kernel {
    xtask::kernel(Series::V6_1).unwrap_or_else(|e| panic!("{e:#}"))
}

fn ours(package: &str) -> PathBuf {
    xtask::build_patch(package, &kernel()).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A C fixture module built under Kbuild.
fn c_module(fixture: &str, module: &str) -> PathBuf {
    xtask::build_c_fixture(fixture, module, &kernel()).unwrap_or_else(|e| panic!("{e:#}"))
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
        (Kind::KlpRs, Some(1), true, false)
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
    let dir = xtask::target_dir().join("klp-c").join("compressed");
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
    let next = xtask::build_patch_with("p1", &kernel(), &["--cfg", "klp_rs_next_format"]).unwrap();
    let plan = inspect::against(&ours("p3"), &next).unwrap();
    let why = plan.refused.expect("refused");
    assert!(
        why.contains("klp_v1's tables are format 2, it reads up to 1"),
        "{why}"
    );
    assert!(plan.steps.is_empty(), "nothing runs");
    let r = inspect::inspect(&next).unwrap();
    assert_eq!((r.kind, r.format_version), (Kind::KlpRs, Some(2)));
    assert_eq!(
        r.warnings,
        ["klp-rs tables of format 2; this cargo-klp reads up to 1: update it to see them"]
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
    let doc = std::fs::read_to_string(xtask::workspace().join("docs/inspect-json.md")).unwrap();
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
    let files = xtask::image_modules(&kernel()).unwrap();
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

fn fixture_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| std::fs::read(ours("p4")).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Truncated or corrupted modules give an error naming the file, never a panic.
    #[test]
    fn corrupted_modules_give_errors_not_panics(
        cut in 0usize..100_000,
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..16),
    ) {
        let mut data = fixture_bytes().to_vec();
        data.truncate(cut.min(data.len()));
        for (at, byte) in flips {
            if !data.is_empty() {
                let i = at.index(data.len());
                data[i] = byte;
            }
        }
        match inspect::inspect_bytes("fuzzed.ko", &data, None) {
            Ok(_) => {}
            Err(e) => prop_assert!(e.to_string().starts_with("fuzzed.ko: "), "{}", e),
        }
    }
}

#[test]
fn a_truncated_module_says_where() {
    let data = &fixture_bytes()[..fixture_bytes().len() / 2];
    let e = inspect::inspect_bytes("half.ko", data, None)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("half.ko: "), "{e}");
    assert!(e.contains("offset 0x"), "{e}");
}
