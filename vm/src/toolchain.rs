//! Where Kbuild runs for a kernel: on this machine, or in a minimal root of the Debian release
//! that built the kernel. A kernel's headers expect its own compiler (Debian 13's gcc-14 takes
//! flags gcc-12 does not know; Debian 11's gcc-10 is in no later release) and ship host tools
//! (fixdep, modpost, objtool, sign-file) linked against that release's libraries, so a build
//! server of another release runs them in a root of the kernel's release: bootstrapped once
//! with debootstrap into the per-user cache, and entered per command through a private mount
//! namespace in which the root's `/usr` replaces this machine's. Every other path (the cache,
//! the crate, the kernel tree) stays where it is, so Kbuild sees the same paths as cargo.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::apt::Debian;

/// Where a kernel's modules are built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Toolchain {
    /// This machine's programs.
    Host,
    /// A root of the kernel's Debian release, at `dir`.
    Root { debian: Debian, dir: PathBuf },
}

/// The Debian release whose gcc `CONFIG_CC_VERSION_TEXT` names ("x86_64-linux-gnu-gcc-14
/// (Debian 14.2.0-19) 14.2.0"), if it is one of Debian's.
pub fn debian_of_compiler(cc_version_text: &str) -> Option<Debian> {
    let version = cc_version_text.split("(Debian ").nth(1)?;
    let major = version.split(['.', ')', '-']).next()?.parse().ok()?;
    if !cc_version_text.split_whitespace().next()?.contains("gcc") {
        return None;
    }
    Debian::of_gcc(major)
}

/// The packages a release's root holds: Kbuild's programs and the libraries of the tree's
/// host tools, under that release's names.
fn root_packages(debian: Debian) -> &'static [&'static str] {
    match debian {
        Debian::Bullseye => &["make", "gcc-10", "libelf1", "libssl1.1", "dwarves"],
        Debian::Bookworm => &["make", "gcc-12", "libelf1", "libssl3", "dwarves"],
        Debian::Trixie => &["make", "gcc-14", "libelf1t64", "libssl3t64", "dwarves"],
    }
}

impl Toolchain {
    /// The toolchain for a tree whose `.config` says `cc_version_text`: this machine's when
    /// the kernel is built by this machine's Debian release or is not Debian's, else a root
    /// of the kernel's release under `cache` (`toolchains/<codename>`).
    pub fn for_compiler(cc_version_text: Option<&str>, cache: &Path) -> Toolchain {
        match cc_version_text.and_then(debian_of_compiler) {
            Some(debian) if Debian::host() != Some(debian) => Toolchain::Root {
                debian,
                dir: cache.join("toolchains").join(debian.codename()),
            },
            _ => Toolchain::Host,
        }
    }

    /// Where this machine's `path` leads for a command run with this toolchain: into the
    /// root for `/usr` (which [`Toolchain::command`] replaces) and the merged `/bin`, `/sbin`
    /// and `/lib*`, which are links into it; elsewhere, and on the host, to `path` itself.
    pub fn seen_as(&self, path: &Path) -> PathBuf {
        let Toolchain::Root { dir, .. } = self else {
            return path.to_path_buf();
        };
        let mapped = ["/usr", "/bin", "/sbin", "/lib", "/lib64"]
            .iter()
            .any(|m| path.starts_with(m));
        match path.strip_prefix("/") {
            Ok(rel) if mapped => dir.join(rel),
            _ => path.to_path_buf(),
        }
    }

    /// A command running `program` with this toolchain; arguments, environment and working
    /// directory are added to it as to any `Command`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let Toolchain::Root { dir, .. } = self else {
            return Command::new(program);
        };
        let mut cmd = Command::new("unshare");
        // Private, so that the root's /usr is seen only here. In a chroot whose / is not a
        // mount point the kernel refuses to change /'s propagation; there the mounts are
        // left as they are, which [`Toolchain::probe`] allows only when none of the
        // machine's mounts propagates (none is shared).
        let propagation = if root_is_mount_point() {
            "private"
        } else {
            "unchanged"
        };
        cmd.args(["--mount", "--propagation", propagation]);
        if !crate::is_root() {
            // A user namespace of its own lets an ordinary user mount in it.
            cmd.arg("--map-root-user");
        }
        // The root's loader cache too, where both have one (this machine's names libraries
        // the root may not have), bound first, while this machine's `mount` runs.
        cmd.args([
            "--",
            "/bin/sh",
            "-c",
            r#"root=$1; shift
if [ -e /etc/ld.so.cache ] && [ -e "$root/etc/ld.so.cache" ]; then
  mount --bind "$root/etc/ld.so.cache" /etc/ld.so.cache || exit 125
fi
mount --bind "$root/usr" /usr || exit 125
exec "$@""#,
            "klp-rs-root",
        ])
        .arg(dir)
        .arg(program);
        cmd
    }

    /// Whether the root is there (always, for the host).
    pub fn is_ready(&self) -> bool {
        match self {
            Toolchain::Host => true,
            Toolchain::Root { dir, .. } => dir.join(".complete").exists(),
        }
    }

    /// Bootstraps the root unless it is there, then checks that commands can enter it.
    /// `progress` is told before a bootstrap starts (it takes a minute or two).
    pub fn ensure(&self, progress: &dyn Fn(&str)) -> Result<()> {
        if !self.is_ready() {
            self.bootstrap(progress)?;
        }
        self.probe()
    }

    /// Runs `true` in the root, and on failure says what keeps this machine from entering it.
    fn probe(&self) -> Result<()> {
        let Toolchain::Root { debian, dir } = self else {
            return Ok(());
        };
        // Only `/usr` is replaced: `/bin`, `/lib` and `/lib64` must lead into it, or the
        // root's programs would load this machine's C library.
        for link in ["/bin", "/lib", "/lib64"] {
            let merged = std::fs::read_link(link)
                .is_ok_and(|t| t.starts_with("usr") || t.starts_with("/usr"));
            if !merged && Path::new(link).exists() {
                bail!(
                    "{link} is not a link into /usr: building for Debian {}'s kernel runs its \
                     programs with the root's /usr in place of this machine's, which needs a \
                     merged /usr; apt-get install usrmerge",
                    debian.number()
                );
            }
        }
        if !root_is_mount_point() && !no_shared_mounts() {
            bail!(
                "this process runs in a chroot whose / is not a mount point, on a machine whose \
                 mounts propagate (shared): the root's /usr, mounted for Kbuild, would show \
                 outside too, and a private mount namespace cannot be made there (unshare: \
                 cannot change root filesystem propagation). Building for Debian {}'s kernel \
                 needs one: bind-mount the chroot's directory onto itself before entering it \
                 (mount --bind DIR DIR; mount --make-rprivate DIR)",
                debian.number()
            );
        }
        let out = self
            .command("true")
            .output()
            .context("cannot run unshare (util-linux)")?;
        if !out.status.success() {
            bail!(
                "cannot enter the Debian {} root at {} ({}): {}. It needs a mount namespace: \
                 as root, or as a user where unprivileged user namespaces are allowed \
                 (sysctl kernel.unprivileged_userns_clone=1, not in a chroot or a container \
                 without CAP_SYS_ADMIN)",
                debian.number(),
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Bootstraps the root: debootstrap (minbase, merged `/usr`) of the release from the
    /// mirror this machine's apt names, with [`root_packages`]. One process at a time (a lock
    /// beside it); into a partial directory renamed when complete.
    fn bootstrap(&self, progress: &dyn Fn(&str)) -> Result<()> {
        let Toolchain::Root { debian, dir } = self else {
            return Ok(());
        };
        let parent = dir.parent().context("a root's directory has a parent")?;
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        let mirror = crate::apt::host_archive_mirror()?;
        let pkgs = root_packages(*debian).join(",");
        let command = format!(
            "debootstrap --variant=minbase --merged-usr --include={pkgs} {} '{}' {mirror}",
            debian.codename(),
            dir.display()
        );
        let why = format!(
            "the kernel was built by Debian {} with gcc-{} and its build tools need that \
             release's libraries; klp-rs builds its modules in a minimal Debian {} root",
            debian.number(),
            debian.gcc(),
            debian.number()
        );
        let debootstrap = ["/usr/sbin/debootstrap", "/sbin/debootstrap"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(debootstrap) = debootstrap else {
            bail!("debootstrap not found: {why}; apt-get install debootstrap");
        };
        if !crate::is_root() {
            bail!(
                "{why}, made once with debootstrap, which needs root; as root, run: \
                 {command} && touch '{}/.complete'",
                dir.display()
            );
        }
        let lock_file = parent.join(format!(".{}.lock", debian.codename()));
        let lock = std::fs::File::create(&lock_file)
            .with_context(|| format!("cannot create {}", lock_file.display()))?;
        lock.lock()?;
        if self.is_ready() {
            return Ok(());
        }
        progress(&format!(
            "Debian {} root with gcc-{} for Kbuild ({why})",
            debian.number(),
            debian.gcc()
        ));
        let partial = parent.join(format!(".{}.partial", debian.codename()));
        for leftover in [&partial, dir] {
            remove_root(leftover)?;
        }
        let result = crate::run(
            Command::new(debootstrap)
                .args(["--variant=minbase", "--merged-usr"])
                .arg(format!("--include={pkgs}"))
                .arg(debian.codename())
                .arg(&partial)
                .arg(&mirror),
            &format!("debootstrap of Debian {}", debian.number()),
            crate::Output::Captured,
        );
        if let Err(e) = result {
            // debootstrap's own log says what failed; it is kept beside the root.
            let log = parent.join(format!(".{}.debootstrap.log", debian.codename()));
            let kept = std::fs::copy(partial.join("debootstrap/debootstrap.log"), &log).is_ok();
            let _ = remove_root(&partial);
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(e.context(if kept {
                format!(
                    "debootstrap's log ({}):\n{}",
                    log.display(),
                    tail.join("\n")
                )
            } else {
                "debootstrap left no log".to_string()
            }));
        }
        // Nothing in the root runs as a system: its apt cache only takes space.
        let _ = std::fs::remove_dir_all(partial.join("var/cache/apt/archives"));
        std::fs::write(partial.join(".complete"), "")?;
        std::fs::rename(&partial, dir)
            .with_context(|| format!("cannot move the root to {}", dir.display()))?;
        Ok(())
    }
}

/// Whether `/` (this process's root) is a mount point: a private mount namespace can be
/// made only then.
fn root_is_mount_point() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(4) == Some("/")))
}

/// Whether no mount of the machine propagates (no `shared:` peer group in PID 1's view, which
/// a chroot's own view does not show): then mounts made in a new namespace stay in it even
/// with propagation unchanged. `false` when that view cannot be read.
fn no_shared_mounts() -> bool {
    std::fs::read_to_string("/proc/1/mountinfo").is_ok_and(|m| {
        m.lines().all(|l| {
            // Optional fields sit between the mount options (6th) and the `-` separator.
            l.split(' ')
                .skip(6)
                .take_while(|f| *f != "-")
                .all(|f| !f.starts_with("shared:"))
        })
    })
}

/// Removes a root or what a bootstrap left of one: debootstrap mounts `/proc` and `/sys`
/// inside while it runs, and a bootstrap killed halfway leaves them mounted; those are
/// unmounted first, so that removing never reaches into the machine's own.
fn remove_root(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let dir = dir.canonicalize()?;
    let mounts = || -> Vec<PathBuf> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut under: Vec<PathBuf> = text
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| PathBuf::from(p.replace("\\040", " ")))
            .filter(|p| p.starts_with(&dir))
            .collect();
        // Deepest first.
        under.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        under
    };
    for m in mounts() {
        let _ = Command::new("umount").arg("-l").arg(&m).status();
    }
    if let Some(m) = mounts().first() {
        bail!(
            "cannot remove {}: {} is still mounted inside; unmount it (umount -l), then \
             remove the directory",
            dir.display(),
            m.display()
        );
    }
    std::fs::remove_dir_all(&dir)
        .with_context(|| format!("cannot remove what a bootstrap left: {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_replaces_usr_and_what_links_into_it() {
        let root = Toolchain::Root {
            debian: Debian::Trixie,
            dir: PathBuf::from("/c/trixie"),
        };
        let seen = |p: &str| root.seen_as(Path::new(p));
        assert_eq!(seen("/usr/bin"), Path::new("/c/trixie/usr/bin"));
        assert_eq!(seen("/lib64"), Path::new("/c/trixie/lib64"));
        assert_eq!(seen("/root/.cargo/bin"), Path::new("/root/.cargo/bin"));
        assert_eq!(seen("/usrx"), Path::new("/usrx"));
        assert_eq!(
            Toolchain::Host.seen_as(Path::new("/usr/bin")),
            Path::new("/usr/bin")
        );
    }

    #[test]
    fn a_kernel_is_built_where_its_compiler_is() {
        let d = |t: &str| debian_of_compiler(t);
        assert_eq!(
            d("x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0"),
            Some(Debian::Trixie)
        );
        assert_eq!(
            d("gcc-10 (Debian 10.2.1-6) 10.2.1 20210110"),
            Some(Debian::Bullseye)
        );
        assert_eq!(
            d("x86_64-linux-gnu-gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"),
            Some(Debian::Bookworm)
        );
        assert_eq!(d("gcc (GCC) 14.2.1"), None);
        assert_eq!(d("Debian clang version 14.0.6 (Debian 14.0.6)"), None);
    }
}
