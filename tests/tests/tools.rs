//! `cargo klp build` checks the tools a kernel tree's module build runs before it starts: each
//! one hidden from PATH in turn, the build stops naming it, the Debian package that provides
//! it and why the kernel needs it, and leaves no `.ko` behind.
//!
//! The expectations come from the Debian kernels' own trees: both were built with gcc-12
//! (6.12 through its `x86_64-linux-gnu-` name, which Debian's `.kernelvariables` sets as
//! CROSS_COMPILE), and 6.12's headers ship `vmlinux`, so Kbuild runs pahole on every module
//! (`CONFIG_DEBUG_INFO_BTF_MODULES=y`, scripts/Makefile.modfinal).

use std::path::{Path, PathBuf};
use std::process::Command;

use klp_harness::Series;

/// A directory of links to every program on PATH except `hidden`.
fn path_without(hidden: &str, dir: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let path = std::env::var_os("PATH").unwrap_or_default();
    for d in std::env::split_paths(&path) {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name();
            if name == hidden || dir.join(&name).exists() {
                continue;
            }
            std::os::unix::fs::symlink(e.path(), dir.join(&name)).unwrap();
        }
    }
    dir.to_path_buf()
}

fn cargo_klp() -> PathBuf {
    klp_harness::cargo_klp_binary().unwrap_or_else(|e| panic!("{e:#}"))
}

fn hidden_tool_is_named(series: Series, hidden: &str, expected: &[&str]) {
    let k = klp_harness::kernel(series).unwrap_or_else(|e| panic!("{e:#}"));
    let scratch = klp_harness::target_dir()
        .join("klp-tools-test")
        .join(format!("{}-{hidden}", k.release));
    let shim = path_without(hidden, &scratch.join("bin"));
    let out_dir = scratch.join("out");
    let _ = std::fs::remove_dir_all(&out_dir);
    let out = Command::new(cargo_klp())
        .args(["klp", "build", "--manifest-path"])
        .arg(klp_harness::workspace().join("examples/cmdline/Cargo.toml"))
        .arg("--kdir")
        .arg(&k.kdir)
        .arg("--out")
        .arg(&out_dir)
        .env("PATH", &shim)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "built without {hidden}:\n{stderr}");
    for e in expected {
        assert!(stderr.contains(e), "expected `{e}` in:\n{stderr}");
    }
    assert!(
        !stderr.contains("Compiling"),
        "the check must come before the build starts:\n{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&out_dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn v6_1_without_make() {
    hidden_tool_is_named(
        Series::V6_1,
        "make",
        &["make not found: Kbuild links the module; apt-get install make"],
    );
}

#[test]
fn v6_1_without_the_kernels_compiler() {
    hidden_tool_is_named(
        Series::V6_1,
        "gcc-12",
        &[
            "gcc-12 not found: the kernel was built with it (CONFIG_CC_VERSION_TEXT=\"gcc-12 (Debian 12.",
            "apt-get install gcc-12",
        ],
    );
}

#[test]
fn v6_1_without_the_linker() {
    hidden_tool_is_named(
        Series::V6_1,
        "ld",
        &["ld not found: Kbuild links the module with it; apt-get install binutils"],
    );
}

#[test]
fn v6_12_without_pahole() {
    hidden_tool_is_named(
        Series::V6_12,
        "pahole",
        &["pahole not found: CONFIG_DEBUG_INFO_BTF_MODULES=y needs it (Kbuild adds BTF to every module); apt-get install dwarves"],
    );
}

#[test]
fn v6_12_without_the_kernels_compiler() {
    hidden_tool_is_named(
        Series::V6_12,
        "x86_64-linux-gnu-gcc-12",
        &[
            "x86_64-linux-gnu-gcc-12 not found: the kernel was built with it (CONFIG_CC_VERSION_TEXT=\"x86_64-linux-gnu-gcc-12 (Debian 12.",
            "apt-get install gcc-12",
        ],
    );
}

#[test]
fn v6_12_without_the_linker() {
    hidden_tool_is_named(
        Series::V6_12,
        "x86_64-linux-gnu-ld",
        &["x86_64-linux-gnu-ld not found: Kbuild links the module with it; apt-get install binutils-x86-64-linux-gnu"],
    );
}

/// `--message-format json`: stdout carries one JSON object per line, as cargo's does, the
/// steps first and the artifact last.
#[test]
fn v6_1_build_messages_as_json_lines() {
    let k = klp_harness::kernel(Series::V6_1).unwrap_or_else(|e| panic!("{e:#}"));
    let out_dir = klp_harness::target_dir()
        .join("klp-tools-test")
        .join("json-out");
    let _ = std::fs::remove_dir_all(&out_dir);
    let out = Command::new(cargo_klp())
        .args([
            "klp",
            "build",
            "--message-format",
            "json",
            "--manifest-path",
        ])
        .arg(klp_harness::workspace().join("examples/cmdline/Cargo.toml"))
        .arg("--kdir")
        .arg(&k.kdir)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let messages: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let reasons: Vec<&str> = messages
        .iter()
        .map(|m| m["reason"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"klp-step"), "{reasons:?}");
    assert_eq!(reasons.last(), Some(&"klp-artifact"), "{reasons:?}");
    let artifact = messages.last().unwrap();
    assert_eq!(artifact["module"], "klp_cmdline");
    let ko = std::path::Path::new(artifact["ko"].as_str().unwrap());
    assert!(ko.is_file() && ko.starts_with(&out_dir), "{ko:?}");
}
