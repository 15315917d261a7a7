//! `cargo klp new`: the crate it writes passes its own tests as it is, outside this
//! workspace, and builds into a module whose tables say what its source declares; bad
//! requests leave nothing behind.

use std::path::PathBuf;
use std::process::Command;

use cargo_klp::new::{new_crate, Runtime};
use klp_harness::Series;

fn scratch(what: &str) -> PathBuf {
    let dir = klp_harness::target_dir().join("klp-new-test").join(what);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    dir
}

fn locked(dir: &std::path::Path) {
    std::fs::copy(
        klp_harness::workspace().join("Cargo.lock"),
        dir.join("Cargo.lock"),
    )
    .unwrap();
}

fn runtime() -> Runtime {
    Runtime::Path(klp_harness::workspace().join("klp-runtime"))
}

#[test]
fn a_new_crate_passes_its_own_tests_and_builds_a_module() {
    let dir = new_crate("first_fix", &scratch("first_fix"), &runtime()).unwrap();
    // The versions this workspace is tested with, so that the test resolves nothing anew
    // (and needs no network): the new crate's dependencies are a subset.
    locked(&dir);
    // Its own target dir (it is not in this workspace), kept between runs.
    let target = klp_harness::target_dir()
        .join("klp-new-test")
        .join("target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .args(["test", "-q", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let k = klp_harness::kernel(Series::V6_1).unwrap_or_else(|e| panic!("{e:#}"));
    let shell = cargo_klp::status::Shell::new(false);
    let opts = cargo_klp::build::BuildOptions {
        manifest_path: Some(dir.join("Cargo.toml")),
        kdir: Some(k.kdir.clone()),
        out: Some(dir.join("out")),
        ..Default::default()
    };
    let built = cargo_klp::build::build(&shell, &opts).unwrap_or_else(|e| panic!("{e:#}"));
    let r = cargo_klp::inspect::inspect(&built.ko).unwrap();
    assert_eq!(r.name.as_deref(), Some("klp_first_fix"));
    assert_eq!(r.replace, Some(true));
    let vmlinux = &r.objects[0];
    assert_eq!(
        vmlinux
            .functions
            .iter()
            .map(|f| f.old.as_str())
            .collect::<Vec<_>>(),
        ["cmdline_proc_show"]
    );
    assert_eq!(
        r.shadow_types
            .iter()
            .map(|t| (t.id, t.owner))
            .collect::<Vec<_>>(),
        [(0x100, 1)]
    );

    // A second new crate, elsewhere: its first build finds core and alloc, rebuilt with this
    // kernel's flags, in the per-user cache the first one filled.
    let dir = new_crate("second_fix", &scratch("second_fix"), &runtime()).unwrap();
    locked(&dir);
    let opts = cargo_klp::build::BuildOptions {
        manifest_path: Some(dir.join("Cargo.toml")),
        ..opts
    };
    let second = cargo_klp::build::build(&shell, &opts).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!second.core_rebuilt, "core was rebuilt for a second crate");
    let r = cargo_klp::inspect::inspect(&second.ko).unwrap();
    assert_eq!(r.name.as_deref(), Some("klp_second_fix"));
}

#[test]
fn an_existing_directory_or_a_bad_name_is_refused_and_nothing_is_written() {
    // A parent of its own: the other test stages its crate beside its own directory.
    let dir = scratch("refusals").join("taken");
    std::fs::create_dir_all(&dir).unwrap();
    let e = new_crate("taken", &dir, &runtime())
        .unwrap_err()
        .to_string();
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);

    let dir = dir.with_file_name("Bad-Name");
    let e = new_crate("Bad-Name", &dir, &runtime())
        .unwrap_err()
        .to_string();
    assert!(e.contains("lowercase letters, digits and `_`"), "{e}");
    assert!(!dir.exists());
    // No staging directory is left beside it either.
    let parent = dir.parent().unwrap();
    assert!(std::fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok())
        .all(|e| !e.file_name().to_string_lossy().starts_with(".klp-new-")));
}
