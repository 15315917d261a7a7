//! A kernel with the project's livepatch-core series (`kernel/` in the repository): Debian's
//! `linux-source-6.12` with the series applied, configured from `tinyconfig` and the series'
//! config fragment, built once and kept under the kernel cache, keyed by the source's
//! version and a digest of the patches and the fragment. The kernel's own livepatch
//! selftests are built against it too.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::apt::{Apt, Debian};
use crate::kernels::Kernel;
use crate::{run, Output, Tool};

/// Debian's source package the series applies to.
pub const SOURCE_PACKAGE: &str = "linux-source-6.12";

/// What building the patched kernel runs, beyond what building a module does.
pub const BUILD_TOOLS: &[Tool] = &[
    Tool {
        program: "patch",
        package: "patch",
        why: "applying the livepatch series to the kernel's source",
    },
    Tool {
        program: "flex",
        package: "flex",
        why: "building a kernel (Kconfig's lexer)",
    },
    Tool {
        program: "bison",
        package: "bison",
        why: "building a kernel (Kconfig's parser)",
    },
    Tool {
        program: "bc",
        package: "bc",
        why: "building a kernel (its generated timeconst.h)",
    },
    Tool {
        program: "perl",
        package: "perl",
        why: "building a kernel, and scripts/checkpatch.pl",
    },
    Tool {
        program: "python3",
        package: "python3",
        why: "building a kernel with BTF (libbpf's bpf_doc.py, for resolve_btfids)",
    },
];

/// The series as the repository holds it: the patches, in order, and the config fragment.
#[derive(Debug, Clone)]
pub struct Series {
    /// `kernel/patches/NNNN-*.patch`, the cover letter (`0000-`) left out.
    pub patches: Vec<PathBuf>,
    /// `kernel/klp-rs.config`, merged over `tinyconfig`.
    pub config: PathBuf,
}

impl Series {
    /// The series under `dir` (the repository's `kernel/`).
    pub fn open(dir: &Path) -> Result<Series> {
        let pdir = dir.join("patches");
        let mut patches: Vec<PathBuf> = std::fs::read_dir(&pdir)
            .with_context(|| format!("no livepatch series in {}", pdir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.ends_with(".patch") && !name.starts_with("0000-")
            })
            .collect();
        patches.sort();
        if patches.is_empty() {
            bail!("no patches in {}", pdir.display());
        }
        let config = dir.join("klp-rs.config");
        if !config.is_file() {
            bail!("no config fragment at {}", config.display());
        }
        Ok(Series { patches, config })
    }

    /// What the build depends on besides the source: the patches and the fragment, hashed
    /// with the recipe's own version, so that any change builds afresh.
    fn digest(&self) -> Result<String> {
        let mut h = Sha256::new();
        h.update(RECIPE.as_bytes());
        for p in self.patches.iter().chain([&self.config]) {
            h.update(p.file_name().unwrap_or_default().as_encoded_bytes());
            h.update(std::fs::read(p).with_context(|| p.display().to_string())?);
        }
        Ok(h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }
}

/// Changes whenever the steps in [`build_into`] change what they produce.
const RECIPE: &str = "klp-rs patched kernel recipe 2";

/// A built patched kernel.
#[derive(Debug, Clone)]
pub struct Patched {
    /// The kernel: `kdir` is the build directory (`O=`), which `cargo klp build --kdir`
    /// takes; `vmlinux` boots through PVH.
    pub kernel: Kernel,
    /// The patched source tree.
    pub source: PathBuf,
    /// The livepatch selftests' directory in the source, their modules built.
    pub selftests: PathBuf,
    /// The source package's version, e.g. `6.12.117-1~deb12u1`.
    pub version: String,
}

/// The candidate version of [`SOURCE_PACKAGE`] in Debian 12's private apt lists.
fn source_version(apt: &Apt) -> Result<String> {
    apt.update(false)?;
    let policy = apt.cache(&["policy", SOURCE_PACKAGE])?;
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate: "))
        .filter(|v| *v != "(none)")
        .map(str::to_string)
        .with_context(|| format!("Debian 12's mirror offers no {SOURCE_PACKAGE}"))
}

fn layout(dir: &Path, version: &str) -> Patched {
    let source = dir.join("source");
    let build = dir.join("build");
    let release = crate::kernels::tree_release(&build);
    Patched {
        kernel: Kernel {
            modules: dir.join("modules/lib/modules").join(&release),
            release,
            vmlinux: build.join("vmlinux"),
            kdir: build,
        },
        selftests: source.join("tools/testing/selftests/livepatch"),
        source,
        version: version.to_string(),
    }
}

/// The source's version and the directory name of its build with `series`.
fn name(apt: &Apt, series: &Series) -> Result<(String, String)> {
    let version = source_version(apt)?;
    let name = format!("patched-{version}-{}", series.digest()?).replace('~', "_");
    Ok((version, name))
}

/// The patched kernel for `series` if it is built under `cache` already; nothing is built.
pub fn cached(series: &Series, cache: &Path) -> Result<Option<Patched>> {
    let apt = Apt::open(&cache.join(".apt"), Debian::Bookworm)?;
    let (version, name) = name(&apt, series)?;
    let dir = cache.join(name);
    Ok(dir
        .join(".complete")
        .exists()
        .then(|| layout(&dir, &version)))
}

/// The patched kernel for `series`, built under `cache` (the kernel cache) unless it is
/// there already; `progress` hears each step. One process builds at a time (a lock beside
/// it). Kbuild writes the build directory's absolute path into what it generates, so the
/// build happens in place, and the directory counts only once its `.complete` marker is
/// written: what a killed build left is removed by the next one.
pub fn ensure(series: &Series, cache: &Path, progress: &dyn Fn(&str)) -> Result<Patched> {
    let apt = Apt::open(&cache.join(".apt"), Debian::Bookworm)?;
    let (version, name) = name(&apt, series)?;
    let dir = cache.join(&name);
    if dir.join(".complete").exists() {
        return Ok(layout(&dir, &version));
    }
    std::fs::create_dir_all(cache)?;
    let lock_path = cache.join(format!(".{name}.lock"));
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    if dir.join(".complete").exists() {
        return Ok(layout(&dir, &version));
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove what a build left: {}", dir.display()))?;
    }
    if let Err(e) = build_into(&apt, series, &version, &dir, progress) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    std::fs::write(dir.join(".complete"), "")?;
    // A build of another version or series is stale now; each takes about 2 GB.
    for e in std::fs::read_dir(cache)?.filter_map(|e| e.ok()) {
        let other = e.file_name().to_string_lossy().into_owned();
        if other.starts_with("patched-") && other != name && e.path().is_dir() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok(layout(&dir, &version))
}

fn make(dir: &Path) -> Command {
    let mut c = Command::new("make");
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    c.current_dir(dir).arg(format!("-j{jobs}")).arg("-s");
    c
}

/// Fetches the source, applies the series, configures and builds the kernel and the
/// selftests' modules in `dir`.
fn build_into(
    apt: &Apt,
    series: &Series,
    version: &str,
    dir: &Path,
    progress: &dyn Fn(&str),
) -> Result<()> {
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs)?;
    progress(&format!("{SOURCE_PACKAGE} {version}"));
    apt.download(&[format!("{SOURCE_PACKAGE}={version}")], &debs)?;
    let deb = std::fs::read_dir(&debs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no package")?;
    let unpacked = dir.join("unpacked");
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked),
        "dpkg-deb -x",
        Output::Captured,
    )?;
    let tarball = unpacked.join(format!("usr/src/{SOURCE_PACKAGE}.tar.xz"));
    run(
        Command::new("tar")
            .arg("-xJf")
            .arg(&tarball)
            .arg("-C")
            .arg(dir),
        "tar -xJf (xz-utils is needed)",
        Output::Captured,
    )?;
    std::fs::rename(dir.join(SOURCE_PACKAGE), dir.join("source"))?;
    std::fs::remove_dir_all(&unpacked)?;
    std::fs::remove_dir_all(&debs)?;
    let source = dir.join("source");
    for p in &series.patches {
        progress(&format!(
            "applying {}",
            p.file_name().unwrap_or_default().to_string_lossy()
        ));
        run(
            Command::new("patch")
                .args(["-p1", "--batch", "--forward", "--quiet", "-i"])
                .arg(p)
                .current_dir(&source),
            &format!(
                "patch -p1 < {} (the series does not apply to {SOURCE_PACKAGE} {version})",
                p.display()
            ),
            Output::Captured,
        )?;
    }
    let build = dir.join("build");
    std::fs::create_dir_all(&build)?;
    let o = format!("O={}", build.display());
    progress("configuring (tinyconfig and the series' fragment)");
    run(
        make(&source).arg(&o).arg("tinyconfig"),
        "make tinyconfig",
        Output::Captured,
    )?;
    run(
        Command::new("scripts/kconfig/merge_config.sh")
            .arg("-m")
            .arg("-O")
            .arg(&build)
            .arg(build.join(".config"))
            .arg(&series.config)
            .current_dir(&source),
        "merge_config.sh",
        Output::Captured,
    )?;
    run(
        make(&source).arg(&o).arg("olddefconfig"),
        "make olddefconfig",
        Output::Captured,
    )?;
    check_config(&build.join(".config"), &series.config)?;
    progress("building vmlinux (a few minutes)");
    run(
        make(&source)
            .arg(&o)
            .args(["vmlinux", "modules", "modules_prepare"]),
        "make vmlinux",
        Output::Captured,
    )?;
    run(
        make(&source)
            .arg(&o)
            .arg(format!(
                "INSTALL_MOD_PATH={}",
                dir.join("modules").display()
            ))
            .arg("modules_install"),
        "make modules_install (kmod's depmod is needed)",
        Output::Captured,
    )?;
    progress("building the livepatch selftests' modules");
    let mods = source.join("tools/testing/selftests/livepatch/test_modules");
    run(
        make(&build)
            .arg(format!("M={}", mods.display()))
            .arg("modules"),
        "make M=tools/testing/selftests/livepatch/test_modules",
        Output::Captured,
    )?;
    Ok(())
}

/// The kernel's livepatch selftests the suite runs in the patched kernel: the series' own,
/// then the existing ones this config can run (test-ftrace.sh, test-sysfs.sh and
/// test-syscall.sh need what a tinyconfig kernel or a busybox guest lacks).
pub const SELFTESTS: &[&str] = &[
    "test-callback-sets.sh",
    "test-livepatch.sh",
    "test-callbacks.sh",
    "test-shadow-vars.sh",
    "test-state.sh",
];

/// Debian packages whose programs the selftests run in the guest (bash, GNU date, sysctl,
/// kmod's insmod and modinfo, diff), copied from this machine with their libraries.
pub const SELFTEST_PACKAGES: &[&str] = &["bash", "coreutils", "procps", "kmod", "diffutils"];

impl Patched {
    /// What the guest needs to run `tests` (file names under the selftests' directory) the
    /// way `make run_tests` would, and the script that runs them: each in a section of its
    /// own, followed by `exit STATUS`.
    pub fn selftests_guest(&self, tests: &[&str]) -> Result<(crate::initramfs::Extra, String)> {
        let mut extra = crate::initramfs::Extra::default();
        let dir = &self.selftests;
        for f in tests.iter().copied().chain(["functions.sh"]) {
            extra.files.push((format!("selftests/{f}"), dir.join(f)));
        }
        let mods = dir.join("test_modules");
        let mut kos: Vec<PathBuf> = std::fs::read_dir(&mods)
            .with_context(|| mods.display().to_string())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "ko"))
            .collect();
        kos.sort();
        for ko in kos {
            let name = ko.file_name().unwrap_or_default().to_string_lossy();
            extra
                .files
                .push((format!("selftests/test_modules/{name}"), ko.clone()));
        }
        for (name, program) in [
            ("bash", "bash"),
            ("date", "date"),
            ("sysctl", "sysctl"),
            ("diff", "diff"),
            ("kmod", "kmod"),
            ("insmod", "kmod"),
            ("rmmod", "kmod"),
            ("modinfo", "kmod"),
        ] {
            extra.programs.push((name.to_string(), program.to_string()));
        }
        // functions.sh sets dynamic debug through debugfs, diffs through /dev/fd, and only
        // checks that KDIR exists: the modules are built already.
        // The tests read the kernel log with dmesg; the console gets none of it while they
        // run (their lines would break into the TEST lines), and all of it at the end, where
        // the boot's check for oopses and warnings reads it.
        let mut script = String::from(
            "mount -t debugfs debugfs /sys/kernel/debug\n\
             ln -s /proc/self/fd /dev/fd\n\
             cd /selftests\n\
             export PATH=/usr/bin:/bin KDIR=/selftests\n\
             dmesg -n 1\n",
        );
        for t in tests {
            script += &format!("section {t}; bash ./{t}; echo \"exit $?\"\n");
        }
        script += "section dmesg; dmesg\n";
        Ok((extra, script))
    }
}

/// Every option the fragment sets made it into the final `.config`: one whose dependencies
/// are missing is dropped silently by Kconfig.
fn check_config(config: &Path, fragment: &Path) -> Result<()> {
    let have = std::fs::read_to_string(config)?;
    let want = std::fs::read_to_string(fragment)?;
    let dropped: Vec<&str> = want
        .lines()
        .filter(|l| l.starts_with("CONFIG_"))
        .filter(|l| !have.lines().any(|h| h == *l))
        .collect();
    if !dropped.is_empty() {
        bail!(
            "{} sets options the kernel's Kconfig dropped (a dependency is missing): {}",
            fragment.display(),
            dropped.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_option_is_named() {
        let dir = std::env::temp_dir().join(format!("klp-patched-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(".config"), "CONFIG_A=y\n# CONFIG_B is not set\n").unwrap();
        std::fs::write(dir.join("frag"), "# a comment\nCONFIG_A=y\nCONFIG_B=y\n").unwrap();
        let e = check_config(&dir.join(".config"), &dir.join("frag")).unwrap_err();
        assert!(e
            .to_string()
            .ends_with("dropped (a dependency is missing): CONFIG_B=y"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
