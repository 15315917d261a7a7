//! `cargo klp new NAME`: a patch crate that builds and passes its own host test as it is —
//! `patch!()`, one replacement function, one callback set owning a shadow type, a simulator
//! test, `[package.metadata.klp]`, and a README of the next commands. It is written to a
//! temporary directory beside the destination and renamed into place, so a failure leaves
//! nothing behind.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Where the new crate's `klp-runtime` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runtime {
    /// A checkout of klp-rs (its `klp-runtime` directory).
    Path(PathBuf),
    /// A version from the registry.
    Version(String),
}

impl Runtime {
    /// The runtime this cargo-klp was built with, when its sources are still where they
    /// were built; else the same version from the registry.
    pub fn default_for_this_build() -> Runtime {
        let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../klp-runtime");
        match beside.canonicalize() {
            Ok(dir) if dir.join("Cargo.toml").is_file() => Runtime::Path(dir),
            _ => Runtime::Version(env!("CARGO_PKG_VERSION").into()),
        }
    }

    fn dependency(&self) -> String {
        match self {
            Runtime::Path(p) => format!("{{ path = {:?} }}", p.display().to_string()),
            Runtime::Version(v) => format!("{v:?}"),
        }
    }
}

/// Writes the crate `name` into `dir` (which must not exist); returns `dir`.
pub fn new_crate(name: &str, dir: &Path, runtime: &Runtime) -> Result<PathBuf> {
    check_name(name)?;
    if dir.exists() {
        bail!(
            "{} already exists: give `cargo klp new` a new directory (--path DIR)",
            dir.display()
        );
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let staging = parent.join(format!(".klp-new-{}-{}", name, std::process::id()));
    let written = write_files(&staging, name, runtime).and_then(|()| {
        std::fs::rename(&staging, dir)
            .with_context(|| format!("cannot move the new crate to {}", dir.display()))
    });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    written.map(|()| dir.to_path_buf())
}

/// A crate name that is also a valid module name once prefixed with `klp_`.
fn check_name(name: &str) -> Result<()> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok || name.len() > 50 {
        bail!(
            "`{name}` cannot name a patch crate: use lowercase letters, digits and `_`, starting \
             with a letter (the module is named klp_{name}, and module names are C identifiers)"
        );
    }
    if name == "previous_version" {
        // Its tables would merge with those of the test that stands for the previous version.
        bail!(
            "`previous_version` is the name of the new crate's upgrade test (a patch of its \
             own); choose another name"
        );
    }
    Ok(())
}

fn write_files(dir: &Path, name: &str, runtime: &Runtime) -> Result<()> {
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::create_dir_all(dir.join("tests"))?;
    let files = [
        ("Cargo.toml", manifest(name, runtime)),
        ("src/lib.rs", LIB_RS.replace("{name}", name)),
        ("tests/sim.rs", SIM_RS.replace("{name}", name)),
        (
            "tests/previous_version.rs",
            PREVIOUS_VERSION_RS.replace("{name}", name),
        ),
        ("README.md", README_MD.replace("{name}", name)),
        (".gitignore", "/target\n".into()),
    ];
    for (path, text) in files {
        std::fs::write(dir.join(path), text)
            .with_context(|| format!("cannot write {}", dir.join(path).display()))?;
    }
    Ok(())
}

fn manifest(name: &str, runtime: &Runtime) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

# A crate of its own, outside any workspace.
[workspace]

[lib]
doctest = false

[dependencies]
# Where klp-runtime comes from: a path to a klp-rs checkout, or a version.
klp-runtime = {dep}

# The module `cargo klp build` makes.
[package.metadata.klp]
name = "klp_{name}"
description = "Rust live patch {name}"
license = "GPL"
# Atomic replace: loading the next version of this patch replaces this one.
replace = true
"#,
        dep = runtime.dependency()
    )
}

const LIB_RS: &str = r#"//! Live patch `{name}`: `/proc/cmdline` says it is patched, and how often it was read.
#![no_std]

use core::ffi::{c_int, c_void};

use klp_runtime::bindings::{seq_print, SeqFile};
use klp_runtime::{klp_callbacks, klp_func, klp_shadow, pr_info, Object, Result};

klp_runtime::patch!();

/// How often the patched function ran: one per patch, attached to no kernel object. Owned
/// by callback set 1, so it is freed when a patch without set 1 replaces this one.
#[klp_shadow(id = 0x100, callbacks = 1)]
pub struct Reads {
    pub count: u64,
}

impl Drop for Reads {
    fn drop(&mut self) {
        pr_info!("{name}: reads freed after {}", self.count);
    }
}

const PATCH_WIDE: *const c_void = core::ptr::null();

/// Replaces `fs/proc/cmdline.c:cmdline_proc_show`.
#[klp_func(name = "cmdline_proc_show")]
pub extern "C" fn cmdline_proc_show(m: *mut SeqFile, _v: *mut c_void) -> c_int {
    // Patched code may run in any context: it never sleeps to allocate.
    let count = match Reads::get_or_alloc_atomic(PATCH_WIDE, || Reads { count: 0 }) {
        Ok(mut r) => {
            // SAFETY: a plain counter; a lost update between two readers is harmless.
            let r = unsafe { r.as_mut() };
            r.count += 1;
            r.count
        }
        Err(_) => 0,
    };
    // SAFETY: `m` is the seq_file the kernel passes to this show function.
    unsafe { seq_print(m, format_args!("patched by {name} (read {count} times)\n")) };
    0
}

/// Set 1 sets up what the patch needs and tears it down.
#[klp_callbacks(id = 1)]
pub mod core_set {
    use super::*;

    pub fn pre_patch(obj: &Object) -> Result {
        Reads::get_or_alloc(PATCH_WIDE, || Reads { count: 0 })?;
        pr_info!("{name}: set up on {}", obj.name());
        Ok(())
    }

    pub fn post_unpatch(obj: &Object) {
        pr_info!("{name}: torn down on {}", obj.name());
    }
}
"#;

const SIM_RS: &str = r#"//! The patch in the simulator (a model of the kernel's livepatch core): its real callbacks
//! and replacement function run on the host.

use klp_runtime::bindings::SeqFile;
use klp_runtime::sim::{store, Kernel};

fn read_cmdline() -> String {
    let mut m = SeqFile::new();
    {name}::cmdline_proc_show(&mut m, std::ptr::null_mut());
    m.text().to_string()
}

#[test]
fn enable_read_disable() {
    let mut k = Kernel::new();
    k.insmod(&{name}::KLP_PATCH).unwrap();
    assert_eq!(read_cmdline(), "patched by {name} (read 1 times)\n");
    assert_eq!(read_cmdline(), "patched by {name} (read 2 times)\n");
    k.disable("{name}").unwrap();
    // Set 1 left: its shadow type was freed, and its Drop said so.
    assert_eq!(store::count(0x100), 0);
    assert_eq!(
        k.messages(),
        [
            "{name}: set up on vmlinux",
            "{name}: torn down on vmlinux",
            "{name}: reads freed after 2",
        ]
    );
}

#[test]
fn a_failed_load_leaves_nothing_behind() {
    let mut k = Kernel::new();
    k.fail_pre_patch("{name}", 1, 12);
    assert!(k.insmod(&{name}::KLP_PATCH).is_err());
    assert_eq!(k.enabled_patch(), None);
    assert_eq!(store::total(), 0);
}
"#;

const PREVIOUS_VERSION_RS: &str = r#"//! Upgrade and downgrade in the simulator. This file is a patch of its own, standing for the
//! version your fleet runs now: edit it to match that version (its functions, callback sets
//! and shadow types). A replace runs exactly the callback sets only one of the two patches
//! has: here set 1, which only {name} has.

use core::ffi::{c_int, c_void};

use klp_runtime::bindings::{seq_print, SeqFile};
use klp_runtime::klp_func;
use klp_runtime::sim::{store, Kernel};

// The previous version's tables; in the simulator its patch is named after this file,
// `previous_version`.
klp_runtime::patch!();

/// The previous version's replacement function: no callback sets, no shadow state.
#[klp_func(name = "cmdline_proc_show")]
pub extern "C" fn previous_cmdline_proc_show(m: *mut SeqFile, _v: *mut c_void) -> c_int {
    // SAFETY: `m` is the seq_file the kernel passes to this show function.
    unsafe { seq_print(m, format_args!("patched by the previous version\n")) };
    0
}

fn read_cmdline() -> String {
    let mut m = SeqFile::new();
    {name}::cmdline_proc_show(&mut m, std::ptr::null_mut());
    m.text().to_string()
}

#[test]
fn upgrade_then_downgrade() {
    let mut k = Kernel::new();
    // The fleet today.
    k.insmod(&KLP_PATCH).unwrap();
    assert!(k.messages().is_empty());

    // The upgrade: {name} replaces it. Set 1 is only in {name}: its pre_patch runs.
    k.insmod(&{name}::KLP_PATCH).unwrap();
    assert_eq!(k.enabled_patch(), Some("{name}"));
    assert_eq!(k.messages(), ["{name}: set up on vmlinux"]);
    assert_eq!(read_cmdline(), "patched by {name} (read 1 times)\n");
    assert_eq!(read_cmdline(), "patched by {name} (read 2 times)\n");
    // The replaced module is unloaded, as it would be before it is loaded again.
    k.rmmod("previous_version").unwrap();
    k.clear_log();

    // The downgrade: the previous version replaces {name}. Set 1 leaves: its
    // post_unpatch runs, then its shadow type is freed, and Drop says so.
    k.insmod(&KLP_PATCH).unwrap();
    assert_eq!(k.enabled_patch(), Some("previous_version"));
    assert_eq!(
        k.messages(),
        [
            "{name}: torn down on vmlinux",
            "{name}: reads freed after 2",
        ]
    );
    assert_eq!(store::count(0x100), 0);
}
"#;

const README_MD: &str = r#"# {name}

A live patch written with klp-rs.

1. Test it on the host, in the simulator: `cargo test` (`tests/previous_version.rs` stands
   for the version your fleet runs now: make it match, and the test shows what the upgrade
   and the downgrade run).
2. Run it in the exact kernel your fleet runs, booted under qemu:
   `cargo klp run --kernel debian:6.1` (or `debian:6.12`, or an exact ABI; `--with OLD.ko`
   loads the version it replaces first; `--script FILE` runs your own checks).
3. See what replacing the older version will run: `cargo klp inspect
   target/klp/klp_{name}.ko --against OLD.ko`
4. Build what ships, signed: `cargo klp build --kernel debian:6.1 --sign KEY CERT` (or
   `--kdir DIR` for a kernel tree you have).
"#;
