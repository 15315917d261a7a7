//! The project's real-kernel fixture: set up a fresh machine (the Debian packages the suite
//! runs), fetch the kernels, build the workspace's patch crates and C fixtures, and boot them
//! through [`klp_vm`], the library `cargo klp run` uses. The real-kernel tests and
//! `cargo xtask` use it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result};

pub use klp_vm::{
    btf, initramfs, patched, run, BootOptions, GuestLog, Kernel, KernelSpec, Output, Series,
};

/// Debian packages the harness and the tests run. What a module build needs comes from each
/// kernel's tree instead ([`cargo_klp::tools`]: the kernel's compiler, pahole where Kbuild adds
/// BTF, the libraries of the tree's host tools), installed when the kernel is fetched.
pub const HOST_PACKAGES: &[&str] = &[
    "qemu-system-x86", // boots the kernels
    "busybox-static",  // the guests' userland
    "xz-utils",        // 6.1's vmlinux payload; inspect's .ko.xz test
    "zstd",            // inspect's .ko.zst test
    "kmod",            // modinfo, which the bench times against inspect
    "binutils",        // objdump (the IBT test), readelf (the bench)
    "openssl",         // the signing test's key
    "make",            // the C fixtures
    "gcc",             // the layout test compiles the C header with `cc`
    "libc6-dev",
    "debootstrap", // the roots that build for another Debian release's kernel
];

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the harness is in the workspace")
        .to_path_buf()
}

/// Where kernels, builds and VM files go: under the workspace's target dir.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// Where kernels are unpacked: the per-user cache `cargo klp` uses, so that `cargo klp run`
/// and `cargo klp build --kernel` find the kernels the suite fetched.
fn kernel_cache() -> PathBuf {
    klp_vm::kernel_cache_dir().unwrap_or_else(|| target_dir().join("klp-cache").join("kernels"))
}

fn status(verb: &str, msg: impl std::fmt::Display) {
    eprintln!("{verb:>12} {msg}");
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs Debian packages that are not installed yet.
fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    status("Installing", missing.join(" "));
    run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install (run as root)",
        Output::Shown,
    )
    .map(drop)
}

/// Installs what a fresh machine lacks: refreshed apt lists (to find the newest kernels), the
/// Debian packages above, and the rustup target and `rust-src` for rebuilding `core`.
pub fn setup_host() -> Result<()> {
    status("Updating", "apt package lists");
    run(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update (run as root)",
        Output::Shown,
    )
    .map(drop)?;
    apt_install(HOST_PACKAGES)?;
    status(
        "Installing",
        "rustup target x86_64-unknown-none and component rust-src",
    );
    run(
        Command::new("rustup").args(["target", "add", "x86_64-unknown-none"]),
        "rustup target add",
        Output::Shown,
    )
    .map(drop)?;
    run(
        Command::new("rustup").args(["component", "add", "rust-src"]),
        "rustup component add",
        Output::Shown,
    )
    .map(drop)?;
    Ok(())
}

/// Installs what building modules for `kernel` runs, as its tree says (signing included:
/// the tests sign).
fn setup_kernel(kernel: &Kernel) -> Result<()> {
    let tree = cargo_klp::build::KernelTree::open(Some(&kernel.kdir))?;
    if tree.toolchain == klp_vm::toolchain::Toolchain::Host {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let needs = cargo_klp::tools::required(&tree.dir, &tree.config, true);
        let missing = cargo_klp::tools::missing(&needs, &path, &tree.toolchain);
        let packages = cargo_klp::tools::packages(&missing);
        let packages: Vec<&str> = packages.iter().map(String::as_str).collect();
        apt_install(&packages)?;
    }
    // A root is bootstrapped with what it needs; then everything is checked as a build does.
    tree.prepare_toolchain(&|what| status("Bootstrapping", what), &target_dir(), true)
}

/// Fetches the newest kernel of `series` (unless unpacked already) and installs what building
/// modules for it runs (for another Debian release's kernel: bootstraps that release's root).
pub fn fetch_kernel(series: Series) -> Result<Kernel> {
    let kernel = klp_vm::kernels::ensure(&KernelSpec::Newest(series), &kernel_cache(), &|s| {
        if let klp_vm::kernels::Fetch::Release(r) = s {
            status("Fetching", format!("Debian kernel {r} (headers and image)"))
        }
    })?;
    setup_kernel(&kernel)?;
    Ok(kernel)
}

/// The repository's livepatch-core series (`kernel/`).
pub fn kernel_series() -> Result<klp_vm::patched::Series> {
    klp_vm::patched::Series::open(&workspace().join("kernel"))
}

/// Builds the kernel with the livepatch-core series (unless built already), installing what
/// building it and running its selftests in a guest need.
pub fn fetch_patched_kernel() -> Result<klp_vm::patched::Patched> {
    let mut packages: Vec<&str> = klp_vm::patched::BUILD_TOOLS
        .iter()
        .map(|t| t.package)
        .collect();
    // objtool, which the ORC unwinder needs, links libelf; pahole makes the BTF, and
    // Kconfig reads its version before it offers BTF at all.
    packages.extend(["libelf-dev", "dwarves"]);
    packages.extend(klp_vm::patched::SELFTEST_PACKAGES);
    apt_install(&packages)?;
    let series = kernel_series()?;
    let patched = klp_vm::patched::ensure(&series, &kernel_cache(), &|step| {
        status(
            "Building",
            format!("the kernel with the callback-sets series: {step}"),
        )
    })?;
    setup_kernel(&patched.kernel)?;
    Ok(patched)
}

/// The kernel with the livepatch-core series, for tests: built by the setup step, never here.
pub fn patched_kernel() -> Result<klp_vm::patched::Patched> {
    static PATCHED: OnceLock<std::result::Result<klp_vm::patched::Patched, String>> =
        OnceLock::new();
    PATCHED
        .get_or_init(|| {
            let not_set_up = "the kernel with the callback-sets series is not built; run \
                              `cargo xtask setup`";
            klp_vm::patched::cached(
                &kernel_series().map_err(|e| format!("{e:#}"))?,
                &kernel_cache(),
            )
            .map_err(|e| format!("{not_set_up}: {e:#}"))?
            .ok_or_else(|| not_set_up.to_string())
        })
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

/// Boots `kernel` with `extra` in the guest (programs, files) and runs `script` in it.
pub fn boot_with(
    kernel: &Kernel,
    script: &str,
    extra: &initramfs::Extra,
    timeout: std::time::Duration,
) -> Result<GuestLog> {
    let opts = BootOptions {
        timeout,
        ..BootOptions::default()
    };
    klp_vm::boot_with(
        kernel,
        &[],
        script,
        &target_dir().join("klp-vm"),
        opts,
        extra,
    )
}

/// A kernel the setup step fetched, for tests: they never download or install.
pub fn kernel(series: Series) -> Result<Kernel> {
    static KERNELS: OnceLock<Mutex<Vec<(Series, Kernel)>>> = OnceLock::new();
    let cache = KERNELS.get_or_init(|| Mutex::new(Vec::new()));
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, k)) = cache.iter().find(|(s, _)| *s == series) {
        return Ok(k.clone());
    }
    let not_set_up = || {
        format!(
            "the {} kernel is not set up; run `cargo xtask setup`",
            series.spec()
        )
    };
    let k = klp_vm::kernels::cached(&KernelSpec::Newest(series), &kernel_cache())
        .with_context(not_set_up)?
        .with_context(not_set_up)?;
    cache.push((series, k.clone()));
    Ok(k)
}

/// Builds a workspace patch crate for `kernel` with `cargo klp build`; each (crate, kernel)
/// once per process.
pub fn build_patch(package: &str, kernel: &Kernel) -> Result<PathBuf> {
    build_patch_with(package, kernel, &[])
}

/// As [`build_patch`], with extra rustc flags for the kernel object; modules built with
/// extra flags go to a directory of their own.
pub fn build_patch_with(
    package: &str,
    kernel: &Kernel,
    extra_rustflags: &[&str],
) -> Result<PathBuf> {
    let variant = extra_rustflags.join("_").replace(['-', ' '], "");
    build_variant(package, kernel, &variant, |opts| {
        opts.extra_rustflags = extra_rustflags.iter().map(|f| f.to_string()).collect();
    })
}

/// As [`build_patch`], a test build whose runtime allocations fail on demand
/// (`cargo klp build --alloc-faults`), in a directory of its own.
pub fn build_patch_alloc_faults(package: &str, kernel: &Kernel) -> Result<PathBuf> {
    build_variant(package, kernel, "alloc-faults", |opts| {
        opts.alloc_faults = true
    })
}

/// As [`build_patch`], a module that runs its callback sets itself even for a kernel whose
/// core runs them, in a directory of its own.
pub fn build_patch_dispatching(package: &str, kernel: &Kernel) -> Result<PathBuf> {
    build_variant(package, kernel, "dispatch", |opts| {
        opts.dispatch_sets = true
    })
}

/// Builds a workspace patch crate for `kernel`, the options adjusted by `configure`, into
/// `target/klp/<release>/<variant>` (the plain build when `variant` is empty); each
/// (crate, variant, kernel) once per process.
fn build_variant(
    package: &str,
    kernel: &Kernel,
    variant: &str,
    configure: impl FnOnce(&mut cargo_klp::build::BuildOptions),
) -> Result<PathBuf> {
    static BUILT: OnceLock<Mutex<Vec<(String, String, PathBuf)>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    // One build at a time: cargo and Kbuild both lock, and two cores are all there is.
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    let key = format!("{package} {variant}");
    if let Some((_, _, ko)) = built
        .iter()
        .find(|(p, r, _)| *p == key && *r == kernel.release)
    {
        return Ok(ko.clone());
    }
    let mut out_dir = target_dir().join("klp").join(&kernel.release);
    if !variant.is_empty() {
        out_dir = out_dir.join(variant);
    }
    let mut opts = cargo_klp::build::BuildOptions {
        manifest_path: Some(workspace().join("Cargo.toml")),
        package: Some(package.to_string()),
        out: Some(out_dir),
        ..Default::default()
    }
    // Every module the suite builds has its replaced functions checked in the kernel.
    .for_kernel(kernel);
    configure(&mut opts);
    let shell = cargo_klp::status::Shell::new(false);
    let out = cargo_klp::build::build(&shell, &opts)
        .with_context(|| format!("cargo klp build -p {package}"))?;
    built.push((key, kernel.release.clone(), out.ko.clone()));
    Ok(out.ko)
}

/// Boots `kernel` with `modules` and runs `script` in it, on one CPU.
pub fn boot(kernel: &Kernel, modules: &[&Path], script: &str) -> Result<GuestLog> {
    boot_on(kernel, modules, script, 1)
}

/// As [`boot`], with `cpus` virtual CPUs (qemu's TCG runs them on threads of their own).
pub fn boot_on(kernel: &Kernel, modules: &[&Path], script: &str, cpus: u32) -> Result<GuestLog> {
    let opts = BootOptions {
        cpus,
        ..BootOptions::default()
    };
    klp_vm::boot(kernel, modules, script, &target_dir().join("klp-vm"), opts)
}

/// A module of the kernel image by name (`binfmt_misc`), decompressed, in the VM work dir.
pub fn image_module(kernel: &Kernel, name: &str) -> Result<PathBuf> {
    kernel.image_module(name, &target_dir().join("klp-vm").join(&kernel.release))
}

/// Builds a C fixture module (`tests/fixtures/c/<fixture>`) under Kbuild for `kernel`, once
/// per process.
pub fn build_c_fixture(fixture: &str, module: &str, kernel: &Kernel) -> Result<PathBuf> {
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    let _guard = LOCK
        .get_or_init(|| Mutex::new(()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let dir = target_dir()
        .join("klp-c")
        .join(format!("{fixture}-{}", kernel.release));
    let ko = dir.join(format!("{module}.ko"));
    let src = workspace().join("tests/fixtures/c").join(fixture);
    std::fs::create_dir_all(&dir)?;
    for f in std::fs::read_dir(&src)? {
        let f = f?.path();
        let to = dir.join(f.file_name().context("file name")?);
        // Copy only what changed, so make rebuilds only then.
        if std::fs::read(&f)? != std::fs::read(&to).unwrap_or_default() {
            std::fs::copy(&f, &to)?;
        }
    }
    let tree = cargo_klp::build::KernelTree::open(Some(&kernel.kdir))?;
    run(
        tree.toolchain
            .command("make")
            .arg("-C")
            .arg(&kernel.kdir)
            .arg(format!("M={}", dir.display()))
            .arg("modules"),
        &format!("building {}", src.display()),
        Output::Captured,
    )?;
    Ok(ko)
}

/// Every module file (`.ko`, `.ko.xz`, ...) of a kernel's image, sorted.
pub fn image_modules(kernel: &Kernel) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut dirs = vec![kernel.modules.join("kernel")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d)? {
            let p = e?.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.to_string_lossy().contains(".ko") {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The `cargo-klp` binary of this workspace, built once per process (`cargo test` of one
/// package does not build other packages' binaries).
pub fn cargo_klp_binary() -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            run(
                Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                    .args(["build", "-q", "-p", "cargo-klp", "--bin", "cargo-klp"])
                    .current_dir(workspace()),
                "cargo build -p cargo-klp",
                Output::Captured,
            )
            .map(drop)
            .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(target_dir().join("debug/cargo-klp"))
}
