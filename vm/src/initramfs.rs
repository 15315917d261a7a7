//! A tiny initramfs: busybox, the modules under test, and a test script run by `/init`.
//!
//! The cpio "newc" writer is written out here rather than taken from a crate: it is thirty
//! lines of a fixed format, and the crates for it are unmaintained or pull in far more.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// Whether an x86-64 ELF executable asks for a program interpreter (`PT_INTERP`): a
/// dynamically linked one, which cannot run in the guest. Anything unreadable is not.
fn is_dynamic(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    (0..usize::from(count)).any(|i| {
        usize::try_from(phoff)
            .ok()
            .and_then(|off| off.checked_add(i.checked_mul(usize::from(size))?))
            .and_then(u32_at)
            == Some(PT_INTERP)
    })
}

/// A cpio "newc" archive under construction.
#[derive(Default)]
pub struct Cpio {
    data: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, body: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            body.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        self.data.extend_from_slice(b"070701");
        for f in fields {
            self.data.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, &[]);
    }

    pub fn file(&mut self, name: &str, body: &[u8], executable: bool) {
        self.entry(name, if executable { 0o100_755 } else { 0o100_644 }, body);
    }

    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120_777, target.as_bytes());
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.data
    }
}

/// The markers `/init` prints around the script: `@@@ start-NONCE` before it, then
/// `@@@ exit-NONCE STATUS`. The nonce is new for every boot, so that nothing the script or a
/// module prints can pass for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Markers {
    pub start: String,
    pub exit: String,
}

impl Markers {
    pub fn new() -> Markers {
        use std::hash::{BuildHasher, Hasher};
        // std's per-process random keys, mixed with the time and a counter.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let nonce = format!("{:016x}", h.finish());
        Markers {
            start: format!("@@@ start-{nonce}"),
            exit: format!("@@@ exit-{nonce} "),
        }
    }
}

impl Default for Markers {
    fn default() -> Self {
        Markers::new()
    }
}

/// What `/init` runs: mount the pseudo file systems, run the test (bounded by `limit`
/// seconds, so that a guest whose host process died still ends), say how it ended, and
/// reboot, which ends qemu (`-no-reboot`) whether or not the kernel can power off (a
/// kernel without ACPI cannot).
fn init(markers: &Markers, limit: u64) -> String {
    format!(
        "#!/bin/sh\n\
         export PATH=/bin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         echo \"{}\"\n\
         timeout -s KILL {limit} sh /test.sh\n\
         echo \"{}$?\"\n\
         reboot -f\n",
        markers.start, markers.exit
    )
}

/// Helpers prepended to every test script.
pub const GUEST_LIB: &str = r#"
# Waits until no livepatch is in transition (bounded: 30 s).
waitlp() {
  i=0
  while [ $i -lt 300 ]; do
    busy=0
    for t in /sys/kernel/livepatch/*/transition; do
      # A patch's directory goes away when its disable completes.
      [ "$(cat "$t" 2>/dev/null)" = 1 ] && busy=1
    done
    [ $busy = 0 ] && return 0
    usleep 100000; i=$((i + 1))
  done
  echo "@@@ transition-timeout"
  return 1
}
# Starts a named section of the log.
section() { echo "@@@ section $1"; }
# The livepatch sysfs state, one line per patch.
lpstate() {
  for d in /sys/kernel/livepatch/*; do
    [ -d "$d" ] && echo "patch $(basename "$d") enabled=$(cat "$d/enabled") transition=$(cat "$d/transition")"
  done
  return 0
}
# insmod, then wait for the transition.
load() { insmod "/mod/$1.ko"; rc=$?; echo "insmod $1 rc=$rc"; waitlp; return $rc; }
# Disables a patch and waits for the transition; fails if the kernel refused.
disable() {
  echo 0 > "/sys/kernel/livepatch/$1/enabled"; rc=$?; echo "disable $1 rc=$rc"
  waitlp || return 1; return $rc
}
# rmmod once the module is free (bounded: 10 s): a patch's last reference goes from a
# workqueue after its transition ends (klp_free_patch_finish).
unload() {
  i=0
  while [ "$(cat "/sys/module/$1/refcnt" 2>/dev/null)" != 0 ] && [ $i -lt 200 ]; do
    usleep 50000; i=$((i + 1))
  done
  rmmod "$1"; rc=$?; echo "rmmod $1 rc=$rc"; return $rc
}
"#;

/// What a guest gets beyond busybox and the modules under test: host files at guest paths,
/// and host programs in `/usr/bin` with the shared libraries they load, for scripts that
/// need more than busybox (the kernel's own selftests use bash and GNU tools).
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// (guest path without the leading `/`, host file).
    pub files: Vec<(String, std::path::PathBuf)>,
    /// (name in `/usr/bin`, host program): a program of another name is linked to it, as
    /// `modinfo` is to `kmod`.
    pub programs: Vec<(String, String)>,
}

impl Extra {
    /// Adds the directories of `path` the archive does not have yet, parents first.
    fn parents(c: &mut Cpio, have: &mut Vec<String>, path: &str) {
        let mut at = String::new();
        let dirs: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for d in &dirs[..dirs.len().saturating_sub(1)] {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(d);
            if !have.contains(&at) {
                c.dir(&at);
                have.push(at.clone());
            }
        }
    }

    fn add_to(&self, c: &mut Cpio, have: &mut Vec<String>) -> Result<()> {
        let mut copied: Vec<String> = Vec::new();
        let mut copy = |c: &mut Cpio, have: &mut Vec<String>, guest: &str, host: &Path| {
            if copied.iter().any(|g| g == guest) {
                return Ok(());
            }
            let body = std::fs::read(host).with_context(|| host.display().to_string())?;
            Self::parents(c, have, guest);
            c.file(guest, &body, true);
            copied.push(guest.to_string());
            anyhow::Ok(())
        };
        for (guest, host) in &self.files {
            copy(c, have, guest, host)?;
        }
        for (name, program) in &self.programs {
            let host = which(program)?;
            let real = host.canonicalize()?;
            let file = real.file_name().context("program path")?.to_string_lossy();
            copy(c, have, &format!("usr/bin/{file}"), &real)?;
            if *name != file {
                Self::parents(c, have, &format!("usr/bin/{name}"));
                c.symlink(&format!("usr/bin/{name}"), &file);
            }
            for lib in libraries(&real)? {
                let guest = lib.to_string_lossy().trim_start_matches('/').to_string();
                copy(c, have, &guest, &lib)?;
            }
        }
        Ok(())
    }
}

/// Where `program` is on this machine's `PATH`.
fn which(program: &str) -> Result<std::path::PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("`{program}` is not installed on this machine"))
}

/// The shared libraries and the interpreter `program` loads, as `ldd` lists them.
fn libraries(program: &Path) -> Result<Vec<std::path::PathBuf>> {
    let out = std::process::Command::new("ldd")
        .arg(program)
        .output()
        .context("cannot run ldd (libc-bin)")?;
    if !out.status.success() {
        bail!("ldd {} failed", program.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, or the interpreter's
            // `/lib64/ld-linux-x86-64.so.2 (0x...)`.
            let path = l.split_once("=> ").map_or(l, |(_, p)| p).trim();
            let path = path.split(" (").next()?;
            path.starts_with('/')
                .then(|| std::path::PathBuf::from(path))
        })
        .collect())
}

/// Builds the initramfs: `/bin/busybox` and its applets, `/mod/*.ko`, `/test.sh`, and
/// `extra`.
pub fn build(
    busybox: &Path,
    modules: &[&Path],
    script: &str,
    markers: &Markers,
    limit: std::time::Duration,
    extra: &Extra,
) -> Result<Vec<u8>> {
    let mut c = Cpio::default();
    let mut have: Vec<String> = Vec::new();
    for d in ["bin", "proc", "sys", "dev", "mod", "tmp"] {
        c.dir(d);
        have.push(d.to_string());
    }
    extra.add_to(&mut c, &mut have)?;
    let bb = std::fs::read(busybox)
        .with_context(|| format!("{} (install busybox-static)", busybox.display()))?;
    if is_dynamic(&bb) {
        bail!(
            "{} is linked dynamically, and the guest has no libraries: install busybox-static \
             (apt-get install busybox-static)",
            busybox.display()
        );
    }
    c.file("bin/busybox", &bb, true);
    let applets = std::process::Command::new(busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&applets.stdout)
        .lines()
        .filter(|a| *a != "busybox")
    {
        c.symlink(&format!("bin/{applet}"), "busybox");
    }
    for m in modules {
        let name = m
            .file_name()
            .and_then(|n| n.to_str())
            .context("module path")?;
        c.file(
            &format!("mod/{name}"),
            &std::fs::read(m).with_context(|| m.display().to_string())?,
            false,
        );
    }
    c.file(
        "init",
        init(markers, limit.as_secs().max(1)).as_bytes(),
        true,
    );
    c.file("test.sh", format!("{GUEST_LIB}\n{script}").as_bytes(), true);
    Ok(c.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_entries_are_aligned_and_self_describing() {
        let mut c = Cpio::default();
        c.file("a", b"xyz", false);
        let data = c.finish();
        assert_eq!(&data[..6], b"070701");
        // filesize field (7th) of the first entry
        assert_eq!(&data[6 + 6 * 8..6 + 7 * 8], b"00000003");
        assert_eq!(data.len() % 4, 0);
        assert!(data.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn init_prints_markers_of_its_own_around_the_script() {
        let (a, b) = (Markers::new(), Markers::new());
        assert_ne!(a, b);
        let text = init(&a, 180);
        assert!(text.contains(&format!(
            "echo \"{}\"\ntimeout -s KILL 180 sh /test.sh\necho \"{}$?\"",
            a.start, a.exit
        )));
    }

    #[test]
    fn a_dynamic_busybox_is_told_apart() {
        // This test's own executable is linked dynamically.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(is_dynamic(&me));
        assert!(!is_dynamic(b"\x7fELF"));
    }
}
