//! Debian kernels and the VM that boots them: resolve a kernel (`debian:6.12`, an exact ABI,
//! or a local image and headers), fetch and unpack its packages into the per-user cache, and
//! boot it under qemu with modules and a script, returning what the guest printed.
//! `cargo klp run`, `cargo klp build --kernel` and the project's real-kernel tests all use it.

pub mod apt;
pub mod btf;
pub mod guest;
pub mod initramfs;
pub mod kernels;
pub mod patched;
pub mod toolchain;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

pub use guest::{boot, boot_with, BootOptions, GuestLog};
pub use kernels::{Kernel, KernelSpec, Series};

/// The per-user cache: `$KLP_CACHE_DIR`, else `$XDG_CACHE_HOME/klp-rs`, else
/// `~/.cache/klp-rs`. Every patch crate shares it: kernels (`kernels/`) and the kernel
/// objects `cargo klp build` compiles, `core` and `alloc` rebuilt once per user, not per crate.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    // cargo and rustc resolve a relative path from different directories; XDG says to
    // ignore a relative XDG_CACHE_HOME.
    let klp = var("KLP_CACHE_DIR").and_then(|d| std::path::absolute(d).ok());
    klp.or_else(|| {
        var("XDG_CACHE_HOME")
            .filter(|d| d.is_absolute())
            .map(|d| d.join("klp-rs"))
    })
    .or_else(|| {
        var("HOME")
            .filter(|d| d.is_absolute())
            .map(|d| d.join(".cache").join("klp-rs"))
    })
}

/// Where kernels are unpacked: `kernels/` in the per-user [`cache_dir`].
pub fn kernel_cache_dir() -> Option<PathBuf> {
    cache_dir().map(|d| d.join("kernels"))
}

/// A program this crate runs, with the Debian package that provides it and why it is needed,
/// for the caller to check before it starts (`cargo klp` names the package when one is missing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
    pub why: &'static str,
}

/// What fetching a Debian kernel runs.
pub const FETCH_TOOLS: &[Tool] = &[
    Tool {
        program: "apt-get",
        package: "apt",
        why: "fetching the kernel's packages needs Debian's apt",
    },
    Tool {
        program: "dpkg-deb",
        package: "dpkg",
        why: "unpacking the kernel's packages",
    },
    Tool {
        program: "xz",
        package: "xz-utils",
        why: "decompressing the kernel image (6.1's) and xz-compressed modules",
    },
];

/// What booting a kernel runs.
pub const BOOT_TOOLS: &[Tool] = &[
    Tool {
        program: "qemu-system-x86_64",
        package: "qemu-system-x86",
        why: "booting the kernel",
    },
    Tool {
        program: "busybox",
        package: "busybox-static",
        why: "the guest's userland (a static busybox)",
    },
];

/// What [`run`] does with a command's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Passed through (installs, the test suite): the user watches it.
    Shown,
    /// Kept: returned, and shown in the error if the command fails.
    Captured,
}

/// Runs a command to completion: the one way the harness and the tasks run a tool. `what`
/// names it in errors. Returns its standard output when captured.
pub fn run(cmd: &mut Command, what: &str, output: Output) -> Result<String> {
    if output == Output::Shown {
        let s = cmd.status().with_context(|| format!("cannot run {what}"))?;
        if !s.success() {
            bail!("{what} failed ({s})");
        }
        return Ok(String::new());
    }
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether this process runs as root (debootstrap and apt's sandbox care).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { geteuid() == 0 }
}

extern "C" {
    fn geteuid() -> u32;
}
