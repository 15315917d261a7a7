//! A tiny initramfs: busybox, the modules under test, and a test script run by `/init`.
//!
//! The cpio "newc" writer is written out here rather than taken from a crate: it is thirty
//! lines of a fixed format, and the crates for it are unmaintained or pull in far more.

use std::path::Path;

use anyhow::{Context, Result};

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

/// The line `/init` prints before the script starts.
pub const START: &str = "@@@ start";

/// What `/init` runs: mount the pseudo file systems, run the test, say how it ended, power off.
const INIT: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "@@@ start"
sh /test.sh
echo "@@@ exit $?"
poweroff -f
"#;

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
# Disables a patch and waits for the transition.
disable() { echo 0 > "/sys/kernel/livepatch/$1/enabled"; echo "disable $1 rc=$?"; waitlp; }
"#;

/// Builds the initramfs: `/bin/busybox` and its applets, `/mod/*.ko`, `/test.sh`.
pub fn build(busybox: &Path, modules: &[&Path], script: &str) -> Result<Vec<u8>> {
    let mut c = Cpio::default();
    for d in ["bin", "proc", "sys", "dev", "mod", "tmp"] {
        c.dir(d);
    }
    let bb = std::fs::read(busybox)
        .with_context(|| format!("{} (install busybox-static)", busybox.display()))?;
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
    c.file("init", INIT.as_bytes(), true);
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
    fn init_prints_the_start_marker_the_log_looks_for() {
        assert!(INIT.contains(&format!("echo \"{START}\"\nsh /test.sh")));
    }
}
