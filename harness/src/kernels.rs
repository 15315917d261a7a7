//! Debian kernels for the tests: resolve the newest ABI of a series from apt, fetch its
//! headers and image packages, and unpack them under the target dir (nothing is installed
//! system-wide). Each kernel's directory is complete when its `.complete` marker exists.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

/// A kernel series the project supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Series {
    /// Debian 12's kernel.
    V6_1,
    /// Debian 12's security-updated 6.12 (IBT on).
    V6_12,
}

impl Series {
    pub const ALL: [Series; 2] = [Series::V6_1, Series::V6_12];

    /// apt name pattern of the headers package; the capture is the release.
    fn headers_pattern(self) -> &'static str {
        match self {
            Series::V6_1 => r"^linux-headers-6\.1\.0-[0-9]+-amd64$",
            Series::V6_12 => r"^linux-headers-6\.12\.[0-9]+\+deb[0-9]+-amd64$",
        }
    }

    /// The Debian 12 suites that carry this series' kernels.
    fn suites(self) -> &'static str {
        match self {
            Series::V6_1 => "bookworm (point releases) and bookworm-security (the newest ABIs)",
            Series::V6_12 => "bookworm-security (Debian 12 gets its 6.12 kernels only there)",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
        }
    }
}

/// An unpacked kernel: build tree, bootable image and modules.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub series: Series,
    /// The ABI name, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// KDIR for `cargo klp build`.
    pub kdir: PathBuf,
    /// The uncompressed kernel (qemu boots it through its PVH entry).
    pub vmlinux: PathBuf,
    /// `lib/modules/<release>` of the image.
    pub modules: PathBuf,
}

/// Compares Debian-ish version strings by their numeric runs.
fn version_key(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn apt(args: &[&str]) -> Result<String> {
    crate::run(
        Command::new("apt-cache").args(args),
        &format!("apt-cache {} (Debian's apt is needed)", args.join(" ")),
        crate::Output::Captured,
    )
}

/// The newest release of a series that apt offers.
pub fn resolve(series: Series) -> Result<String> {
    let out = apt(&["search", "--names-only", series.headers_pattern()])?;
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|p| p.strip_prefix("linux-headers-"))
        .max_by_key(|r| version_key(r))
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{}", no_kernel_message(series, &configured_suites())))
}

/// The suites the machine's apt sources list (deb822 `Suites:` and one-line `deb` entries).
fn configured_suites() -> Vec<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(dir.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    let mut suites = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for line in text.lines().map(str::trim) {
            let found: Vec<&str> = if let Some(list) = line.strip_prefix("Suites:") {
                list.split_whitespace().collect()
            } else if line.starts_with("deb ") {
                // deb [options] URI SUITE COMPONENTS...
                let words: Vec<&str> = line
                    .split_whitespace()
                    .filter(|w| !w.starts_with('[') && !w.ends_with(']'))
                    .collect();
                words.get(2).into_iter().copied().collect()
            } else {
                Vec::new()
            };
            for s in found {
                if !suites.iter().any(|x| x == s) {
                    suites.push(s.to_string());
                }
            }
        }
    }
    suites
}

fn no_kernel_message(series: Series, configured: &[String]) -> String {
    let configured = if configured.is_empty() {
        "none".to_string()
    } else {
        configured.join(", ")
    };
    format!(
        "apt offers no Debian {} kernel headers. Debian 12 gets them from {}; \
         the configured apt sources list the suites: {configured}. Add the missing suite \
         (its `Suites:` line in /etc/apt/sources.list.d/debian.sources, or a `deb` line in \
         /etc/apt/sources.list), then run `apt-get update`",
        series.name(),
        series.suites()
    )
}

/// The packages to unpack for a release: its headers, what they include (common headers,
/// kbuild tools) and the unsigned image.
fn packages(release: &str) -> Result<Vec<String>> {
    let headers = format!("linux-headers-{release}");
    let mut pkgs = vec![headers.clone()];
    for line in apt(&["depends", &headers])?.lines() {
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

/// Finds the compressed payload in a bzImage and decompresses it: xz on 6.1, zstd on 6.12.
fn vmlinux_from_bzimage(bz: &[u8]) -> Result<Vec<u8>> {
    const XZ: &[u8] = b"\xfd7zXZ\x00";
    const ZSTD: &[u8] = b"\x28\xb5\x2f\xfd";
    let find = |magic: &[u8]| bz.windows(magic.len()).position(|w| w == magic);
    let mut out = Vec::new();
    if let Some(off) = find(XZ) {
        out = xz_decompress(&bz[off..])?;
    } else if let Some(off) = find(ZSTD) {
        let mut dec = ruzstd::decoding::StreamingDecoder::new(&bz[off..])
            .map_err(|e| anyhow!("zstd: {e}"))?;
        std::io::copy(&mut dec, &mut out)?;
    } else {
        bail!("no xz or zstd payload in the kernel image");
    }
    if !out.starts_with(b"\x7fELF") {
        bail!(
            "the decompressed kernel is not an ELF file ({} bytes)",
            out.len()
        );
    }
    Ok(out)
}

/// Fetches and unpacks the newest kernel of `series` under `cache`, unless already there.
pub fn ensure(series: Series, cache: &Path) -> Result<Kernel> {
    let release = resolve(series)?;
    let dir = cache.join(&release);
    let root = dir.join("root");
    let kernel = Kernel {
        series,
        kdir: root.join(format!("usr/src/linux-headers-{release}")),
        vmlinux: dir.join("vmlinux"),
        modules: root.join(format!("lib/modules/{release}")),
        release: release.clone(),
    };
    if dir.join(".complete").exists() {
        return Ok(kernel);
    }
    eprintln!("    Fetching Debian kernel {release} (headers and image)");
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs)?;
    let pkgs = packages(&release)?;
    run(
        Command::new("apt-get")
            .arg("download")
            .args(&pkgs)
            .current_dir(&debs),
        "apt-get download",
    )?;
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    std::fs::create_dir_all(&root)?;
    for deb in std::fs::read_dir(&debs)? {
        let deb = deb?.path();
        run(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
            "dpkg-deb -x",
        )?;
    }
    // The headers' Makefile includes the common headers by absolute path.
    let makefile = kernel.kdir.join("Makefile");
    let text = std::fs::read_to_string(&makefile)?;
    std::fs::write(
        &makefile,
        text.replace(
            "include /usr/src/",
            &format!("include {}/usr/src/", root.display()),
        ),
    )?;
    let bz = std::fs::read(root.join(format!("boot/vmlinuz-{release}")))?;
    std::fs::write(&kernel.vmlinux, vmlinux_from_bzimage(&bz)?)?;
    std::fs::remove_dir_all(&debs)?;
    std::fs::write(dir.join(".complete"), "")?;
    Ok(kernel)
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
    fn a_missing_series_names_the_suite_that_carries_it() {
        let msg = no_kernel_message(
            Series::V6_12,
            &["bookworm".into(), "bookworm-updates".into()],
        );
        assert!(
            msg.contains("Debian 12 gets them from bookworm-security"),
            "{msg}"
        );
        assert!(
            msg.contains("the suites: bookworm, bookworm-updates."),
            "{msg}"
        );
    }
}
