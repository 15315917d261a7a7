//! Boots a kernel under qemu (TCG: KVM does not work on these machines) with a test
//! initramfs, and returns what the serial console printed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::initramfs;
use crate::kernels::Kernel;

/// How to boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootOptions {
    /// Virtual CPUs (qemu's TCG runs them on threads of their own).
    pub cpus: u32,
    /// Boot to power-off; past it the VM is killed and the run fails.
    pub timeout: Duration,
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            cpus: 1,
            timeout: Duration::from_secs(180),
        }
    }
}

/// What a boot printed.
#[derive(Debug, Clone)]
pub struct GuestLog {
    pub serial: String,
    pub elapsed: Duration,
    /// The markers `/init` printed around the script.
    pub markers: initramfs::Markers,
}

impl GuestLog {
    /// The script's exit status.
    pub fn status(&self) -> Option<i32> {
        self.serial
            .lines()
            .find_map(|l| l.trim_end().split_once(&self.markers.exit)?.1.parse().ok())
    }

    /// What the script printed: the console from its start to its end, kernel messages
    /// included; a `section NAME` marker shows as `--- NAME`.
    pub fn script_output(&self) -> Vec<String> {
        self.serial
            .lines()
            .skip_while(|l| !l.trim_end().ends_with(&self.markers.start))
            .skip(1)
            .take_while(|l| !l.contains(&self.markers.exit))
            .map(|l| match l.trim_end().strip_prefix("@@@ section ") {
                Some(name) => format!("--- {name}"),
                None => l.trim_end().to_string(),
            })
            .collect()
    }

    /// Lines of a section the script started with `section NAME`, up to the next marker.
    pub fn section(&self, name: &str) -> Vec<String> {
        let start = format!("@@@ section {name}");
        self.serial
            .lines()
            // The first marker may share its line with the firmware's last words.
            .skip_while(|l| !l.trim_end().ends_with(&start))
            .skip(1)
            .take_while(|l| !l.starts_with("@@@ "))
            .map(|l| l.trim_end().to_string())
            .collect()
    }

    /// Kernel log lines a module printed (`[time] module: text`), as `text`, in order.
    pub fn module_lines(&self, module: &str) -> Vec<String> {
        let prefix = format!("{module}: ");
        self.serial
            .lines()
            .filter_map(|l| {
                let rest = l.trim_end().split_once("] ").map_or(l, |(_, r)| r);
                rest.strip_prefix(&prefix).map(str::to_string)
            })
            .collect()
    }
}

/// Signs of a kernel in trouble; any of them fails the run.
const TROUBLE: [&str; 6] = [
    "Kernel panic",
    "Oops",
    "BUG:",
    "WARNING:",
    "general protection fault",
    "Call Trace:",
];

/// Boots `kernel`, runs `script` (after the helpers in [`initramfs::GUEST_LIB`]) with
/// `modules` in `/mod`, and returns the console output. Fails on a timeout, an oops or
/// panic, or a script that did not finish, with the whole log in the error; a script that
/// finished with an error status is not a failure here ([`GuestLog::status`]).
pub fn boot(
    kernel: &Kernel,
    modules: &[&Path],
    script: &str,
    work: &Path,
    opts: BootOptions,
) -> Result<GuestLog> {
    boot_with(
        kernel,
        modules,
        script,
        work,
        opts,
        &initramfs::Extra::default(),
    )
}

/// As [`boot`], the guest given `extra` files and programs.
///
/// A boot that fails before the script starts is tried once more: nothing under test has
/// run by then (the modules are loaded by the script), and qemu's TCG with several vCPUs
/// has been seen to trip the kernel's own boot-time code patching (an `int3` oops in
/// `sched_clock_cpu` on Debian 13's 6.12 with two vCPUs, at 1.9 s, once). A second such
/// boot fails the run.
pub fn boot_with(
    kernel: &Kernel,
    modules: &[&Path],
    script: &str,
    work: &Path,
    opts: BootOptions,
    extra: &initramfs::Extra,
) -> Result<GuestLog> {
    let mut started = false;
    match boot_attempt(kernel, modules, script, work, opts, extra, &mut started) {
        Err(error) if !started => {
            eprintln!("warning: {error:#}\n(before the test script started: booting once more)");
            boot_attempt(kernel, modules, script, work, opts, extra, &mut started)
        }
        r => r,
    }
}

/// One boot; `script_started` says whether the script's start marker was printed.
fn boot_attempt(
    kernel: &Kernel,
    modules: &[&Path],
    script: &str,
    work: &Path,
    opts: BootOptions,
    extra: &initramfs::Extra,
    script_started: &mut bool,
) -> Result<GuestLog> {
    std::fs::create_dir_all(work)?;
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let initrd: PathBuf = work.join(format!("initrd-{}-{run}.cpio", std::process::id()));
    let markers = initramfs::Markers::new();
    std::fs::write(
        &initrd,
        initramfs::build(
            Path::new("/bin/busybox"),
            modules,
            script,
            &markers,
            opts.timeout,
            extra,
        )?,
    )?;
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "512",
            "-smp",
            &opts.cpus.to_string(),
            "-nographic",
            "-no-reboot",
            "-kernel",
        ])
        .arg(&kernel.vmlinux)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 oops=panic quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run qemu-system-x86_64 (install qemu-system-x86)")?;
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    // qemu's own complaints (an image it cannot boot, say) go to stderr.
    let mut stderr = child.stderr.take().expect("piped");
    let complaints = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let limit = opts.timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let serial = String::from_utf8_lossy(&reader.join().unwrap_or_default()).replace('\r', "");
    let qemu_said = String::from_utf8_lossy(&complaints.join().unwrap_or_default()).into_owned();
    let _ = std::fs::remove_file(&initrd);
    let log = GuestLog {
        serial,
        elapsed: started.elapsed(),
        markers,
    };
    *script_started = log
        .serial
        .lines()
        .any(|l| l.trim_end().ends_with(&log.markers.start));
    let show = |why: &str| {
        format!(
            "{why} on {} ({:.1}s):\n{}",
            kernel.release,
            log.elapsed.as_secs_f64(),
            log.serial
        )
    };
    match status {
        None => bail!(show(&format!(
            "the VM did not power off within {}s (a longer timeout: `cargo klp run --timeout`)",
            limit.as_secs()
        ))),
        Some(s) if !s.success() => {
            bail!(show(&format!("qemu exited with {s}: {}", qemu_said.trim())))
        }
        _ => {}
    }
    if let Some(t) = TROUBLE.iter().find(|t| log.serial.contains(*t)) {
        bail!(show(&format!("the kernel reported trouble (`{t}`)")));
    }
    if log.serial.contains("@@@ transition-timeout") {
        bail!(show("a livepatch transition did not finish"));
    }
    if log.status().is_none() {
        bail!(show("the test script did not finish"));
    }
    Ok(log)
}
