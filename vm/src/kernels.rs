//! Kernels: resolve what `--kernel` names (the newest ABI of a Debian series from apt, or an
//! exact ABI), fetch its headers and image packages, and unpack them under a cache directory
//! (nothing is installed system-wide); or take a local image and build tree as they are.
//! Each fetched kernel's directory is complete when its `.complete` marker exists.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};

use crate::apt::{Apt, Debian};

/// A kernel series the project supports: a Debian release's kernel line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Series {
    /// Debian 11's kernel (gcc-10; no IBT, no module BTF).
    V5_10,
    /// Debian 12's kernel.
    V6_1,
    /// Debian 12's security-updated 6.12 (IBT on).
    V6_12,
    /// Debian 13's own 6.12 (gcc-14, its own config).
    V6_12Debian13,
}

impl Series {
    pub const ALL: [Series; 4] = [
        Series::V5_10,
        Series::V6_1,
        Series::V6_12,
        Series::V6_12Debian13,
    ];

    /// apt name pattern of the headers package.
    fn headers_pattern(self) -> &'static str {
        match self {
            Series::V5_10 => r"^linux-headers-5\.10\.0-[0-9]+-amd64$",
            Series::V6_1 => r"^linux-headers-6\.1\.0-[0-9]+-amd64$",
            Series::V6_12 => r"^linux-headers-6\.12\.[0-9]+\+deb12-amd64$",
            Series::V6_12Debian13 => r"^linux-headers-6\.12\.[0-9]+\+deb13-amd64$",
        }
    }

    /// The Debian release whose kernel this is.
    pub fn debian(self) -> Debian {
        match self {
            Series::V5_10 => Debian::Bullseye,
            Series::V6_1 | Series::V6_12 => Debian::Bookworm,
            Series::V6_12Debian13 => Debian::Trixie,
        }
    }

    /// The kernel version: `5.10`, `6.1`, `6.12`.
    pub fn name(self) -> &'static str {
        match self {
            Series::V5_10 => "5.10",
            Series::V6_1 => "6.1",
            Series::V6_12 | Series::V6_12Debian13 => "6.12",
        }
    }

    /// What `--kernel` calls it: `debian11:5.10`, `debian12:6.1`, `debian13:6.12`.
    pub fn spec(self) -> String {
        format!("debian{}:{}", self.debian().number(), self.name())
    }

    /// The series an exact Debian ABI belongs to.
    fn of_release(release: &str) -> Option<Series> {
        if release.starts_with("5.10.0-") {
            Some(Series::V5_10)
        } else if release.starts_with("6.1.0-") {
            Some(Series::V6_1)
        } else if release.starts_with("6.12.") && release.contains("+deb12-") {
            Some(Series::V6_12)
        } else if release.starts_with("6.12.") && release.contains("+deb13-") {
            Some(Series::V6_12Debian13)
        } else {
            None
        }
    }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec())
    }
}

/// The release a kernel build tree is for: its `UTS_RELEASE`, the name `uname -r` and the
/// modules' vermagic carry (Debian's `include/config/kernel.release` holds the upstream
/// version instead); the directory's name if the tree lacks it.
pub fn tree_release(kdir: &Path) -> String {
    std::fs::read_to_string(kdir.join("include/generated/utsrelease.h"))
        .ok()
        .and_then(|h| h.split('"').nth(1).map(str::to_string))
        .unwrap_or_else(|| {
            kdir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
}

/// A Debian kernel as `--kernel` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSpec {
    /// The newest ABI of a series that apt offers: `debian12:6.1`, `debian13:6.12`.
    Newest(Series),
    /// An exact ABI: `debian12:6.1.0-56-amd64`, `debian13:6.12.118+deb13-amd64`.
    Release(String),
}

impl FromStr for KernelSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let usage = "use debian11:5.10, debian12:6.1, debian12:6.12 or debian13:6.12 (the \
                     newest ABI of that kernel; `debian:` means debian12 for 6.1 and 6.12), or \
                     an exact Debian ABI such as debian12:6.1.0-56-amd64";
        let Some((distro, rest)) = s.split_once(':') else {
            bail!("unknown kernel `{s}`: {usage}");
        };
        let debian = match distro {
            "debian" => None,
            _ => match Debian::ALL
                .into_iter()
                .find(|d| distro == format!("debian{}", d.number()))
            {
                Some(d) => Some(d),
                None => bail!("unknown kernel `{s}`: {usage}"),
            },
        };
        // `debian:6.12` has meant Debian 12's since before Debian 13 was supported.
        let of = |series: Series| debian.is_none_or(|d| d == series.debian());
        if let Some(series) = Series::ALL
            .into_iter()
            .filter(|x| x.name() == rest && of(*x))
            .min_by_key(|x| x.debian())
        {
            return Ok(KernelSpec::Newest(series));
        }
        let plain = rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+-~".contains(c));
        match Series::of_release(rest) {
            Some(series) if plain && rest.ends_with("-amd64") && of(series) => {
                Ok(KernelSpec::Release(rest.to_string()))
            }
            _ => bail!(
                "unknown kernel `{s}`: {usage} (klp-rs is proven on Debian 11's 5.10, Debian \
                 12's 6.1 and 6.12 and Debian 13's 6.12 amd64 kernels)"
            ),
        }
    }
}

impl fmt::Display for KernelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelSpec::Newest(s) => write!(f, "{}", s.spec()),
            KernelSpec::Release(r) => match Series::of_release(r) {
                Some(s) => write!(f, "debian{}:{r}", s.debian().number()),
                None => write!(f, "debian:{r}"),
            },
        }
    }
}

/// An unpacked kernel: build tree, bootable image and modules.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The ABI name, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// KDIR for `cargo klp build`.
    pub kdir: PathBuf,
    /// What qemu boots: the uncompressed kernel of a fetched one (through its PVH entry,
    /// which skips decompressing under TCG), or a local image as given (`vmlinux` or
    /// `bzImage`).
    pub vmlinux: PathBuf,
    /// `lib/modules/<release>` of the image.
    pub modules: PathBuf,
}

impl Kernel {
    /// The image's size and modification time (`SIZE-NANOS`): what tells another build
    /// under the same release name apart, for the answers and BTF kept per kernel.
    pub fn image_stamp(&self) -> std::io::Result<String> {
        let meta = std::fs::metadata(&self.vmlinux)?;
        let time = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Ok(format!("{}-{time}", meta.len()))
    }

    /// A kernel the user has: an image qemu boots and its build tree (the release is the
    /// tree's [`tree_release`]); its modules in `modules`, else `/lib/modules/<release>`.
    pub fn local(image: &Path, kdir: &Path, modules: Option<&Path>) -> Result<Kernel> {
        let file = kdir.join("include/generated/utsrelease.h");
        if !file.is_file() {
            bail!(
                "{} is not a prepared kernel build tree (no {})",
                kdir.display(),
                file.display()
            );
        }
        let release = tree_release(kdir);
        if !image.is_file() {
            bail!("{}: no such kernel image", image.display());
        }
        Ok(Kernel {
            kdir: kdir.to_path_buf(),
            vmlinux: image.to_path_buf(),
            modules: modules
                .map(Path::to_path_buf)
                .unwrap_or_else(|| Path::new("/lib/modules").join(&release)),
            release,
        })
    }

    /// A module of the kernel's image by name (`binfmt_misc`), decompressed if the image
    /// ships it compressed, written to `dir/<name>.ko`.
    pub fn image_module(&self, name: &str, dir: &Path) -> Result<PathBuf> {
        let file = name.replace('-', "_");
        let mut found = None;
        let mut dirs = vec![self.modules.join("kernel")];
        while let Some(d) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.filter_map(|e| e.ok()) {
                let p = e.path();
                let n = e.file_name().to_string_lossy().replace('-', "_");
                if p.is_dir() {
                    dirs.push(p);
                } else if [".ko", ".ko.xz", ".ko.zst"]
                    .iter()
                    .any(|ext| n.strip_suffix(ext) == Some(&file))
                {
                    found = Some(p);
                }
            }
        }
        let src = found.with_context(|| {
            format!(
                "no module `{name}` in the kernel's image ({})",
                self.modules.display()
            )
        })?;
        let data = std::fs::read(&src).with_context(|| src.display().to_string())?;
        let plain = match src.extension().and_then(|e| e.to_str()) {
            Some("xz") => xz_decompress(&data).with_context(|| src.display().to_string())?,
            Some("zst") => zstd_decompress(&data).with_context(|| src.display().to_string())?,
            _ => data,
        };
        std::fs::create_dir_all(dir)?;
        let out = dir.join(format!("{file}.ko"));
        std::fs::write(&out, plain)?;
        Ok(out)
    }
}

/// Compares Debian-ish version strings by their numeric runs.
fn version_key(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The private apt configuration kernels are fetched through (see [`crate::apt`]).
fn private_apt(cache: &Path, series: Series) -> Result<Apt> {
    Apt::open(&cache.join(".apt"), series.debian())
}

/// A release name as kept in a file: one of the series' ABIs, nothing else.
fn kept_release(text: &str, series: Series) -> Option<(&str, &str)> {
    let (stamp, release) = text.trim().split_once(' ')?;
    let plain = release
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ".+-~".contains(c));
    (plain && Series::of_release(release) == Some(series)).then_some((stamp, release))
}

/// The release a spec names: the newest of a series that apt offers, or the exact one.
/// The answer for a series is kept under `cache` until the lists change (asking apt costs
/// most of a second).
pub fn resolve(spec: &KernelSpec, cache: &Path) -> Result<String> {
    let series = match spec {
        KernelSpec::Newest(series) => *series,
        KernelSpec::Release(r) => return Ok(r.clone()),
    };
    let kept = cache.join(format!(".newest-{}", series.spec().replace(':', "-")));
    let apt = private_apt(cache, series)?;
    let kept_text = std::fs::read_to_string(&kept).unwrap_or_default();
    let kept_answer = kept_release(&kept_text, series);
    if let Err(e) = apt.update(false) {
        // Offline with the lists due a refresh: the last answer stands if that kernel is
        // here, whole; else there is nothing to go on.
        match kept_answer {
            Some((_, release)) if unpacked(release, cache).1 => return Ok(release.to_string()),
            _ => return Err(e),
        }
    }
    let stamp = apt.lists_stamp();
    if let (Some(stamp), Some((s, release))) = (&stamp, kept_answer) {
        if s == stamp {
            return Ok(release.to_string());
        }
    }
    let release = newest(&apt, series)?;
    if let Some(stamp) = apt.lists_stamp() {
        // Kept whole or not at all; a failure only costs asking apt next time. The temporary
        // name is the process's and the thread's: threads resolve series side by side.
        let name = kept.file_name().unwrap_or_default().to_string_lossy();
        let tmp = cache.join(format!(
            "{name}.tmp-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        if std::fs::create_dir_all(cache).is_ok()
            && std::fs::write(&tmp, format!("{stamp} {release}\n")).is_ok()
        {
            let _ = std::fs::rename(&tmp, &kept);
        }
    }
    Ok(release)
}

/// The newest release of a series that apt offers (the lists refreshed once if they have
/// none).
fn newest(apt: &Apt, series: Series) -> Result<String> {
    let find = || -> Result<Option<String>> {
        let out = apt.cache(&["search", "--names-only", series.headers_pattern()])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|p| p.strip_prefix("linux-headers-"))
            .filter(|r| Series::of_release(r) == Some(series))
            .max_by_key(|r| version_key(r))
            .map(str::to_string))
    };
    if let Some(r) = find()? {
        return Ok(r);
    }
    apt.update(true)?;
    find()?.ok_or_else(|| {
        anyhow!(
            "Debian's mirror offers no {} kernel headers ({}) in the suites {}",
            series.spec(),
            series.headers_pattern(),
            series.debian().suites().join(", ")
        )
    })
}

/// The packages to unpack for a release: its headers, what they include (common headers,
/// kbuild tools) and the unsigned image.
fn packages(apt: &Apt, release: &str) -> Result<Vec<String>> {
    let headers = format!("linux-headers-{release}");
    let mut pkgs = vec![headers.clone()];
    for line in apt.cache(&["depends", &headers])?.lines() {
        if let Some(dep) = line.trim().strip_prefix("Depends: ") {
            if dep.starts_with("linux-headers-") || dep.starts_with("linux-kbuild-") {
                pkgs.push(dep.to_string());
            }
        }
    }
    pkgs.push(format!("linux-image-{release}-unsigned"));
    Ok(pkgs)
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    crate::run(cmd, what, crate::Output::Captured).map(drop)
}

/// Decompresses the first xz stream of `data` (what follows it is ignored) with xz-utils:
/// the kernel's payload uses the x86 BCJ filter, which the pure-Rust decoders lack.
pub fn xz_decompress(data: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("xz")
        .args(["--decompress", "--stdout", "--single-stream"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot run xz (install xz-utils)")?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    if out.stdout.is_empty() {
        bail!("xz: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// Decompresses a zstd stream.
fn zstd_decompress(data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut dec =
        ruzstd::decoding::StreamingDecoder::new(data).map_err(|e| anyhow!("zstd: {e}"))?;
    std::io::copy(&mut dec, &mut out)?;
    Ok(out)
}

/// Finds the compressed payload in a bzImage and decompresses it: xz on 6.1, zstd on 6.12.
pub(crate) fn vmlinux_from_bzimage(bz: &[u8]) -> Result<Vec<u8>> {
    const XZ: &[u8] = b"\xfd7zXZ\x00";
    const ZSTD: &[u8] = b"\x28\xb5\x2f\xfd";
    let find = |magic: &[u8]| bz.windows(magic.len()).position(|w| w == magic);
    let out = if let Some(off) = find(XZ) {
        xz_decompress(&bz[off..])?
    } else if let Some(off) = find(ZSTD) {
        zstd_decompress(&bz[off..])?
    } else {
        bail!("no xz or zstd payload in the kernel image");
    };
    if !out.starts_with(b"\x7fELF") {
        bail!(
            "the decompressed kernel is not an ELF file ({} bytes)",
            out.len()
        );
    }
    Ok(out)
}

/// `include /usr/src/` made relative to the including Makefile (make reads it with `-C` on
/// the tree, or with `-f` and its path).
const RELATIVE_INCLUDE: &str = "include $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)/";

/// A step of fetching a kernel, for the caller to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch<'a> {
    /// The release about to be fetched (nothing is fetched for one already unpacked).
    Release(&'a str),
    /// Downloading these packages.
    Downloading(&'a [String]),
    /// Unpacking a package.
    Unpacking(&'a str),
    /// Decompressing the kernel image into the `vmlinux` qemu boots.
    Decompressing,
}

/// The layout of a release unpacked in `dir`.
fn layout(release: &str, dir: &Path) -> Kernel {
    let root = dir.join("root");
    Kernel {
        kdir: root.join(format!("usr/src/linux-headers-{release}")),
        vmlinux: dir.join("vmlinux"),
        modules: {
            // Debian 13's packages put modules under /usr (merged /usr), earlier ones under /lib.
            let lib = root.join(format!("lib/modules/{release}"));
            let usr = root.join(format!("usr/lib/modules/{release}"));
            if !lib.exists() && usr.exists() {
                usr
            } else {
                lib
            }
        },
        release: release.to_string(),
    }
}

/// Where a release is unpacked under `cache`, and whether it is complete.
fn unpacked(release: &str, cache: &Path) -> (Kernel, bool) {
    let dir = cache.join(release);
    (layout(release, &dir), dir.join(".complete").exists())
}

/// The kernel `spec` names if it is already unpacked under `cache`; nothing is fetched.
pub fn cached(spec: &KernelSpec, cache: &Path) -> Result<Option<Kernel>> {
    let (kernel, complete) = unpacked(&resolve(spec, cache)?, cache);
    Ok(complete.then_some(kernel))
}

/// Fetches and unpacks the kernel `spec` names under `cache`, unless already there;
/// `progress` is told each step ([`Fetch`]) as it starts. One process at a time fetches a
/// release (a lock file beside it; the others wait, then find it complete); it unpacks into
/// a partial directory, renamed into place when complete, so a process killed halfway
/// leaves nothing that passes for a kernel, and the next fetch clears what it left.
pub fn ensure(spec: &KernelSpec, cache: &Path, progress: &dyn Fn(Fetch<'_>)) -> Result<Kernel> {
    let release = resolve(spec, cache)?;
    let (kernel, complete) = unpacked(&release, cache);
    if complete {
        return Ok(kernel);
    }
    std::fs::create_dir_all(cache)
        .with_context(|| format!("cannot create the kernel cache {}", cache.display()))?;
    let lock_file = cache.join(format!(".{release}.lock"));
    let lock = std::fs::File::create(&lock_file)
        .with_context(|| format!("cannot create {}", lock_file.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", lock_file.display()))?;
    if unpacked(&release, cache).1 {
        // Another process fetched it while this one waited.
        return Ok(unpacked(&release, cache).0);
    }
    progress(Fetch::Release(&release));
    let dir = cache.join(&release);
    let partial = cache.join(format!(".{release}.partial"));
    for leftover in [&partial, &dir] {
        if leftover.exists() {
            std::fs::remove_dir_all(leftover).with_context(|| {
                format!("cannot remove what a fetch left: {}", leftover.display())
            })?;
        }
    }
    let series = Series::of_release(&release)
        .with_context(|| format!("{release} is not an ABI of a supported Debian kernel"))?;
    if let Err(e) = fetch_into(&private_apt(cache, series)?, &release, &partial, progress) {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &dir)
        .with_context(|| format!("cannot move the kernel to {}", dir.display()))?;
    // The lock is released when `lock` is dropped. The layout is read again: where the
    // modules are depends on what the packages held.
    Ok(unpacked(&release, cache).0)
}

/// Downloads and unpacks `release` into `dir` (headers, image, the decompressed `vmlinux`),
/// marking it complete last.
fn fetch_into(apt: &Apt, release: &str, dir: &Path, progress: &dyn Fn(Fetch<'_>)) -> Result<()> {
    let Kernel { kdir, vmlinux, .. } = layout(release, dir);
    let root = dir.join("root");
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs)?;
    // An exact ABI may be asked for before the lists were ever fetched, or after it appeared.
    apt.update(false)?;
    let pkgs = match packages(apt, release) {
        Ok(p) => p,
        Err(_) => {
            apt.update(true)?;
            packages(apt, release)
                .with_context(|| format!("Debian's mirror offers no kernel {release}"))?
        }
    };
    progress(Fetch::Downloading(&pkgs));
    apt.download(&pkgs, &debs)?;
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    std::fs::create_dir_all(&root)?;
    for deb in std::fs::read_dir(&debs)? {
        let deb = deb?.path();
        progress(Fetch::Unpacking(
            &deb.file_name().unwrap_or_default().to_string_lossy(),
        ));
        run(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
            "dpkg-deb -x",
        )?;
    }
    // The headers' Makefile includes the common headers by absolute path; make it relative
    // to the Makefile itself, so that the cache can move.
    let makefile = kdir.join("Makefile");
    let text = std::fs::read_to_string(&makefile)?;
    std::fs::write(
        &makefile,
        text.replace("include /usr/src/", RELATIVE_INCLUDE),
    )?;
    progress(Fetch::Decompressing);
    let bz = std::fs::read(root.join(format!("boot/vmlinuz-{release}")))?;
    std::fs::write(&vmlinux, vmlinux_from_bzimage(&bz)?)?;
    std::fs::remove_dir_all(&debs)?;
    std::fs::write(dir.join(".complete"), "")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_abis_sort_higher() {
        let mut v = ["6.1.0-9-amd64", "6.1.0-56-amd64", "6.1.0-10-amd64"];
        v.sort_by_key(|r| version_key(r));
        assert_eq!(v, ["6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-56-amd64"]);
        assert!(version_key("6.12.117+deb12-amd64") > version_key("6.12.57+deb12-amd64"));
    }

    #[test]
    fn each_debian_release_is_named_in_the_spec() {
        let p = |s: &str| s.parse::<KernelSpec>().map_err(|e| e.to_string());
        assert_eq!(p("debian11:5.10"), Ok(KernelSpec::Newest(Series::V5_10)));
        assert_eq!(p("debian:5.10"), Ok(KernelSpec::Newest(Series::V5_10)));
        assert_eq!(p("debian:6.12"), Ok(KernelSpec::Newest(Series::V6_12)));
        assert_eq!(p("debian12:6.12"), Ok(KernelSpec::Newest(Series::V6_12)));
        assert_eq!(
            p("debian13:6.12"),
            Ok(KernelSpec::Newest(Series::V6_12Debian13))
        );
        assert_eq!(
            p("debian13:6.12.118+deb13-amd64"),
            Ok(KernelSpec::Release("6.12.118+deb13-amd64".into()))
        );
        assert!(p("debian12:6.12.118+deb13-amd64").is_err());
        assert!(p("debian11:6.1").unwrap_err().contains("debian11:5.10"));
        assert!(p("debian14:6.12").is_err());
        assert!(p("debian012:6.1").is_err());
        assert_eq!(
            KernelSpec::Newest(Series::V6_12Debian13).to_string(),
            "debian13:6.12"
        );
    }
}
