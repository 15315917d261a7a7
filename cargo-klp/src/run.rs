//! `cargo klp run`: the patch built for a kernel, that kernel booted under qemu with it
//! ([`klp_vm`]), a script run in the guest: the user's, or the default one (load, show
//! `/sys/kernel/livepatch`, disable, unload, the kernel log). The guest's output goes to
//! stdout; the command exits with the script's status.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use klp_vm::kernels::Fetch;
use klp_vm::{BootOptions, Kernel, KernelSpec};

use crate::build::{self, BuildOptions};
use crate::status::Shell;
use crate::tools;

/// The kernel to build for and boot.
#[derive(Debug, Clone)]
pub enum KernelChoice {
    /// A Debian kernel, fetched into the per-user cache on first use.
    Debian(KernelSpec),
    /// A kernel the user has: an image qemu boots, its build tree, its modules directory.
    Local {
        image: PathBuf,
        kdir: PathBuf,
        modules: Option<PathBuf>,
    },
}

/// What `cargo klp run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub build: BuildOptions,
    pub kernel: KernelChoice,
    /// Modules loaded before the patch, in order (an older version it replaces, say).
    pub with: Vec<PathBuf>,
    /// Modules of the kernel's image, by name, loaded first.
    pub modules: Vec<String>,
    /// The guest script (default: [`DEFAULT_SCRIPT`]).
    pub script: Option<PathBuf>,
    pub boot: BootOptions,
}

/// What runs in the guest unless `--script` says otherwise. `$MODULES`, `$WITH` and `$PATCH`
/// name the modules (file names in `/mod` without `.ko`); the helpers are
/// [`klp_vm::initramfs::GUEST_LIB`]'s.
pub const DEFAULT_SCRIPT: &str = r#"status=0
failed() { status=$1; }
before=$(dmesg | wc -l)
for m in $MODULES; do
  insmod "/mod/$m.ko"; r=$?; echo "insmod $m rc=$r"; [ $r = 0 ] || failed $r
done
for m in $WITH $PATCH; do load "$m" || failed 1; done
section livepatch
lpstate
section unload
disable "$PATCH" || failed 1
unload "$PATCH" || failed 1
for m in $WITH; do
  # A replaced patch is disabled already; a stacked one is disabled here.
  if [ "$(cat "/sys/kernel/livepatch/$m/enabled" 2>/dev/null)" = 1 ]; then
    disable "$m" || failed 1
  fi
  unload "$m" || failed 1
done
section dmesg
dmesg | tail -n +$((before + 1))
exit $status
"#;

/// The script the guest runs: the variables naming the modules (`$PATCH`, `$WITH`,
/// `$MODULES`), then `script`.
pub fn guest_script(patch: &str, with: &[String], modules: &[String], script: &str) -> String {
    format!(
        "PATCH={patch}\nWITH=\"{}\"\nMODULES=\"{}\"\n{script}",
        with.join(" "),
        modules.join(" ")
    )
}

/// Finds (fetching on first use) or opens the kernel.
pub fn kernel(shell: &Shell, choice: &KernelChoice) -> Result<Kernel> {
    match choice {
        KernelChoice::Debian(spec) => {
            let cache = klp_vm::kernel_cache_dir().context(
                "no cache directory for kernels: set KLP_CACHE_DIR, XDG_CACHE_HOME or HOME",
            )?;
            if let Some(k) = klp_vm::kernels::cached(spec, &cache)? {
                return Ok(k);
            }
            tools::check_vm(klp_vm::FETCH_TOOLS)?;
            let progress = std::cell::RefCell::new(None);
            let kernel = klp_vm::kernels::ensure(spec, &cache, &|step| match step {
                Fetch::Release(release) => {
                    shell.status(
                        "Fetching",
                        format!(
                            "Debian kernel {release} (headers and image) into {}",
                            cache.display()
                        ),
                    );
                    *progress.borrow_mut() = Some(shell.progress("Fetching"));
                }
                step => {
                    if let Some(p) = progress.borrow().as_ref() {
                        p.set(match step {
                            Fetch::Downloading(pkgs) => format!("downloading {}", pkgs.join(" ")),
                            Fetch::Unpacking(deb) => format!("unpacking {deb}"),
                            _ => "decompressing the kernel image".to_string(),
                        });
                    }
                }
            });
            drop(progress);
            kernel
        }
        KernelChoice::Local {
            image,
            kdir,
            modules,
        } => Kernel::local(image, kdir, modules.as_deref()),
    }
}

/// The name a module has in the kernel (its `.modinfo`), whatever its file is called: the
/// guest loads it as `/mod/NAME.ko`, and sysfs and `rmmod` know it by that name.
fn module_name(ko: &Path) -> Result<String> {
    let report = crate::inspect::inspect(ko).with_context(|| format!("--with {}", ko.display()))?;
    let name = report
        .name
        .with_context(|| format!("{}: no module name in its .modinfo (--with)", ko.display()))?;
    crate::kbuild::check_module_name(&name)
        .map_err(|e| anyhow::anyhow!("{}: {e} (--with)", ko.display()))?;
    Ok(name)
}

/// Builds the patch for the kernel, boots it and runs the script; returns the script's
/// status. A kernel oops, panic or warning, a transition that never ends, or a guest past
/// its timeout is an error with the whole console log.
pub fn run(shell: &Shell, opts: &RunOptions) -> Result<i32> {
    tools::check_vm(klp_vm::BOOT_TOOLS)?;
    let kernel = kernel(shell, &opts.kernel)?;
    let built = build::build(shell, &opts.build.clone().for_kernel(&kernel))?;

    let mut names = vec![built.module.clone()];
    let mut files = vec![built.ko.clone()];
    let work = built
        .ko
        .parent()
        .context("the module is in a directory")?
        .join("run")
        .join(&kernel.release);
    let mut image_modules = Vec::new();
    for m in &opts.modules {
        crate::kbuild::check_module_name(&m.replace('-', "_"))
            .map_err(|e| anyhow::anyhow!("--module {m}: {e}"))?;
        files.push(kernel.image_module(m, &work)?);
        image_modules.push(m.replace('-', "_"));
    }
    let mut with = Vec::new();
    for ko in &opts.with {
        if !ko.is_file() {
            bail!("{}: no such module (--with)", ko.display());
        }
        let name = module_name(ko)?;
        // Under its module name, as the guest loads it.
        let copy = work.join(format!("{name}.ko"));
        std::fs::create_dir_all(&work)?;
        std::fs::copy(ko, &copy).with_context(|| format!("cannot copy {}", ko.display()))?;
        files.push(copy);
        with.push(name);
    }
    names.extend(image_modules.iter().cloned());
    names.extend(with.iter().cloned());
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            bail!("two modules named {n}: the guest loads modules by name (/mod/{n}.ko)");
        }
    }
    let script = match &opts.script {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the script {}", f.display()))?,
        None => DEFAULT_SCRIPT.to_string(),
    };
    let script = guest_script(&built.module, &with, &image_modules, &script);
    shell.status(
        "Booting",
        format!(
            "Linux {} under qemu (TCG, {} CPU{}) with {}",
            kernel.release,
            opts.boot.cpus,
            if opts.boot.cpus == 1 { "" } else { "s" },
            names.join(", ")
        ),
    );
    let files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let log = klp_vm::boot(&kernel, &files, &script, &work, opts.boot)?;
    let status = log
        .status()
        .context("the guest script printed no exit status")?;
    if shell.is_json() {
        for line in log.script_output() {
            shell.emit(&serde_json::json!({ "reason": "klp-guest", "line": line }));
        }
        shell.emit(&serde_json::json!({
            "reason": "klp-run",
            "kernel": kernel.release,
            "status": status,
            "seconds": log.elapsed.as_secs_f64(),
        }));
    } else {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for line in log.script_output() {
            writeln!(out, "{line}")?;
        }
        out.flush()?;
    }
    shell.status(
        "Finished",
        format!(
            "boot to power-off in {:.1}s, script exit status {status}",
            log.elapsed.as_secs_f64()
        ),
    );
    Ok(status)
}
