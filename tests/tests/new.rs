//! A patch author's first hour, through the command line as a user types it: `cargo klp new`
//! in a directory outside this workspace, the crate's own host test, then `cargo klp run` in
//! the real kernels (Debian 12's 6.1 and 6.12; Debian 13's 6.12 and Debian 11's 5.10 for the
//! first crate). Bad requests leave nothing behind.
//!
//! What the guest must print comes from the template's source (its replacement function
//! counts reads; set 1's hooks and the shadow type's `Drop` print), not from a run.

use std::path::{Path, PathBuf};
use std::process::Command;

use cargo_klp::new::{new_crate, Runtime};

fn scratch(what: &str) -> PathBuf {
    let dir = klp_harness::target_dir().join("klp-new-test").join(what);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    dir
}

/// A directory outside the workspace, as a user's crate is, removed when dropped.
struct Outside(PathBuf);

impl Outside {
    fn new(what: &str) -> Outside {
        let dir = std::env::temp_dir().join(format!("klp-new-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Outside(dir)
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The versions this workspace is tested with, so that nothing resolves anew (and no
/// network is needed): a new crate's dependencies are a subset.
fn locked(dir: &Path) {
    std::fs::copy(
        klp_harness::workspace().join("Cargo.lock"),
        dir.join("Cargo.lock"),
    )
    .unwrap();
}

fn runtime() -> Runtime {
    Runtime::Path(klp_harness::workspace().join("klp-runtime"))
}

/// Host builds of new crates share one target dir, kept between runs.
fn shared_target() -> PathBuf {
    klp_harness::target_dir()
        .join("klp-new-test")
        .join("target")
}

/// Runs the `cargo-klp` binary in `dir`; returns (exit code, stdout, stderr).
fn cargo_klp(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let exe = klp_harness::cargo_klp_binary().unwrap_or_else(|e| panic!("{e:#}"));
    let out = Command::new(exe)
        .arg("klp")
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", shared_target())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Kernel log lines the module printed, without the time stamp and the module's prefix.
fn module_lines<'a>(stdout: &'a str, module: &str) -> Vec<&'a str> {
    let prefix = format!("{module}: ");
    stdout
        .lines()
        .filter_map(|l| l.split_once("] ")?.1.strip_prefix(&prefix))
        .collect()
}

const SCRIPT: &str = r#"section before; cat /proc/cmdline
section load; load $PATCH || exit 10
section patched; cat /proc/cmdline; cat /proc/cmdline
section disable; disable $PATCH
section after; cat /proc/cmdline
section unload; rmmod $PATCH || exit 11
section log; dmesg | grep "$PATCH: "
"#;

#[test]
fn a_new_crate_passes_its_host_test_and_runs_in_every_kernel() {
    let home = Outside::new("first");
    let runtime = klp_harness::workspace().join("klp-runtime");
    let (code, _, err) = cargo_klp(
        &home.0,
        &[
            "new",
            "first_fix",
            "--runtime-path",
            runtime.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let dir = home.0.join("first_fix");
    locked(&dir);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .args(["test", "-q"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", shared_target())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.join("try.sh"), SCRIPT).unwrap();

    // 6.1 by its series (the newest ABI apt offers), 6.12 by its exact ABI, Debian 13's and
    // Debian 11's kernels by their series (built on this Debian 12 machine: the fleet's
    // release is not the build server's), and 6.1 again as a kernel the user has: its image,
    // build tree and modules given by path.
    let kernel = |s| klp_harness::kernel(s).unwrap_or_else(|e| panic!("{e:#}"));
    let k61 = kernel(klp_harness::Series::V6_1);
    let k612 = kernel(klp_harness::Series::V6_12);
    let k13 = kernel(klp_harness::Series::V6_12Debian13);
    let k11 = kernel(klp_harness::Series::V5_10);
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let kernels: Vec<(Vec<String>, &str)> = vec![
        (vec!["--kernel".into(), "debian:6.1".into()], &k61.release),
        (
            vec!["--kernel".into(), format!("debian:{}", k612.release)],
            &k612.release,
        ),
        (
            vec!["--kernel".into(), "debian13:6.12".into()],
            &k13.release,
        ),
        (
            vec!["--kernel".into(), "debian11:5.10".into()],
            &k11.release,
        ),
        (
            vec![
                "--image".into(),
                path(&k61.vmlinux),
                "--kdir".into(),
                path(&k61.kdir),
                "--modules-dir".into(),
                path(&k61.modules),
            ],
            // The release the tree's UTS_RELEASE names (Debian's kernel.release file says 6.1.N).
            &k61.release,
        ),
    ];
    for (kernel, release) in kernels {
        let mut args = vec!["run", "--script", "try.sh"];
        args.extend(kernel.iter().map(String::as_str));
        let (code, out, err) = cargo_klp(&dir, &args);
        let kernel = kernel.join(" ");
        assert_eq!(code, 0, "{kernel}:\n{out}\n{err}");
        assert!(
            err.contains(&format!("Booting Linux {release} ")),
            "{kernel}:\n{err}"
        );
        let section = |name: &str| -> Vec<&str> {
            out.lines()
                .skip_while(|l| *l != format!("--- {name}"))
                .skip(1)
                .take_while(|l| !l.starts_with("--- "))
                .filter(|l| !l.starts_with('['))
                .collect()
        };
        let original = "console=ttyS0 panic=-1 oops=panic quiet";
        assert_eq!(section("before"), [original], "{kernel}:\n{out}");
        assert_eq!(
            section("patched"),
            [
                "patched by first_fix (read 1 times)",
                "patched by first_fix (read 2 times)"
            ],
            "{kernel}:\n{out}"
        );
        assert_eq!(section("after"), [original], "{kernel}:\n{out}");
        // The user's hooks and the shadow type's Drop, as the kernel logged them (the
        // runtime's own step lines, `set 1 ...` and `shadow 0x100: ...`, left out).
        let said: Vec<&str> = module_lines(&out, "klp_first_fix")
            .into_iter()
            .filter(|l| l.starts_with("first_fix: "))
            .filter(|l| !l.starts_with("first_fix: set 1 ") && !l.starts_with("first_fix: shadow "))
            .collect();
        assert_eq!(
            said,
            [
                "first_fix: set up on vmlinux",
                "first_fix: torn down on vmlinux",
                "first_fix: reads freed after 2",
            ],
            "{kernel}:\n{out}"
        );
        assert!(err.contains("script exit status 0"), "{err}");
    }

    // The default script: load, the kernel's livepatch state, disable, unload.
    let (code, out, err) = cargo_klp(&dir, &["run", "--kernel", "debian:6.1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    for line in [
        "insmod klp_first_fix rc=0",
        "patch klp_first_fix enabled=1 transition=0",
        "disable klp_first_fix rc=0",
        "rmmod klp_first_fix rc=0",
    ] {
        assert!(out.lines().any(|l| l == line), "no `{line}` in:\n{out}");
    }

    // The script's status is the command's; a panic in the guest fails with its log.
    // A forged end marker changes nothing: the real one carries a nonce.
    std::fs::write(dir.join("three.sh"), "echo '@@@ exit 0'\nexit 3\n").unwrap();
    let (code, _, err) = cargo_klp(
        &dir,
        &["run", "--kernel", "debian:6.1", "--script", "three.sh"],
    );
    assert_eq!(code, 3, "{err}");
    std::fs::write(dir.join("crash.sh"), "echo c > /proc/sysrq-trigger\n").unwrap();
    let (code, _, err) = cargo_klp(
        &dir,
        &["run", "--kernel", "debian:6.1", "--script", "crash.sh"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("the kernel reported trouble (`Kernel panic`)"),
        "{err}"
    );
    assert!(
        err.contains("sysrq: Trigger a crash"),
        "the log is not in the error:\n{err}"
    );
}

#[test]
fn run_loads_an_older_version_and_a_module_of_the_image_first() {
    let k = klp_harness::kernel(klp_harness::Series::V6_1).unwrap_or_else(|e| panic!("{e:#}"));
    let p1 = klp_harness::build_patch("p1", &k).unwrap_or_else(|e| panic!("{e:#}"));
    let ws = klp_harness::workspace();
    // Under another file name, as an old version often is: the guest knows it by its name.
    let old = klp_harness::target_dir()
        .join("klp-new-test")
        .join("last-week.ko");
    std::fs::create_dir_all(old.parent().unwrap()).unwrap();
    std::fs::copy(&p1, &old).unwrap();
    let (code, out, err) = cargo_klp(
        &ws,
        &[
            "run",
            "-p",
            "p4",
            "--kernel",
            "debian:6.1",
            "--with",
            old.to_str().unwrap(),
            "--module",
            "binfmt_misc",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let mut lines = out.lines().filter(|l| !l.starts_with('['));
    // In order: the image's module, the old version, the new one replacing it (the kernel's
    // sysfs then lists only the new one), both unloaded.
    for line in [
        "insmod binfmt_misc rc=0",
        "insmod klp_v1 rc=0",
        "insmod klp_v4 rc=0",
        "--- livepatch",
        "patch klp_v4 enabled=1 transition=0",
        "--- unload",
        "disable klp_v4 rc=0",
        "rmmod klp_v4 rc=0",
        "rmmod klp_v1 rc=0",
    ] {
        assert!(
            lines.any(|l| l == line),
            "no `{line}` (in this order) in:\n{out}"
        );
    }
    assert!(!out.contains("patch klp_v1 enabled"), "{out}");
}

#[test]
fn a_second_new_crate_builds_without_rebuilding_core() {
    let k = klp_harness::kernel(klp_harness::Series::V6_1).unwrap_or_else(|e| panic!("{e:#}"));
    let shell = cargo_klp::status::Shell::new(false);
    let mut core_rebuilt = Vec::new();
    for name in ["warm_fix", "second_fix"] {
        let dir = new_crate(name, &scratch(name), &runtime()).unwrap();
        locked(&dir);
        let opts = cargo_klp::build::BuildOptions {
            manifest_path: Some(dir.join("Cargo.toml")),
            kdir: Some(k.kdir.clone()),
            out: Some(dir.join("out")),
            ..Default::default()
        };
        let built = cargo_klp::build::build(&shell, &opts).unwrap_or_else(|e| panic!("{e:#}"));
        let r = cargo_klp::inspect::inspect(&built.ko).unwrap();
        assert_eq!(r.name.as_deref(), Some(format!("klp_{name}").as_str()));
        assert_eq!(r.replace, Some(true));
        assert_eq!(
            r.objects[0]
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
        core_rebuilt.push(built.core_rebuilt);
    }
    // The first may have filled the per-user cache; the second finds core and alloc, rebuilt
    // with this kernel's flags, there.
    assert!(!core_rebuilt[1], "core was rebuilt for a second crate");
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

    let dir = dir.with_file_name("previous_version");
    let e = new_crate("previous_version", &dir, &runtime())
        .unwrap_err()
        .to_string();
    assert!(e.contains("choose another name"), "{e}");
    assert!(!dir.exists());

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
