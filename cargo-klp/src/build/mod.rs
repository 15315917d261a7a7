//! `cargo klp build`: the patch crate -> kernel object (rustc with the kernel's flags, `core`
//! rebuilt) -> objtool -> validation -> Kbuild link with the generic C init -> `.ko`.
//!
//! Work happens in a staging directory under the target dir; the `.ko` appears at its output
//! path only when every step has passed, by rename, so a failed build leaves nothing behind.

mod compile;
mod kernel_tree;
mod manifest;
mod validate;

pub(crate) use compile::short_hash;
pub use compile::{crate_key, default_cache_dir, kernel_rustc_command, object_cache};
pub use kernel_tree::KernelTree;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};

use crate::kbuild;
use crate::klp_rela;
use crate::status::Shell;

use compile::*;
use manifest::*;
use validate::*;

/// What `cargo klp build` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    pub manifest_path: Option<PathBuf>,
    pub package: Option<String>,
    pub release: bool,
    pub kdir: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub sign: Option<(PathBuf, PathBuf)>,
    /// Extra rustc flags for the kernel object (after the ones the kernel config implies).
    pub extra_rustflags: Vec<String>,
    /// A test build whose runtime allocations can be made to fail (`--alloc-faults`).
    pub alloc_faults: bool,
    /// Build a module that runs its callback sets itself even for a kernel whose core runs
    /// them (not offered on the command line: the suite uses it to show that the kernel
    /// refuses a replace between the two kinds).
    pub dispatch_sets: bool,
    /// Where kernel objects are compiled (default: [`default_cache_dir`], else the crate's
    /// target dir).
    pub cache_dir: Option<PathBuf>,
    /// The kernel the module is for, bootable: the functions the patch replaces are checked
    /// in it ([`crate::funcs`]) before the module is linked.
    pub target: Option<klp_vm::Kernel>,
    /// The target kernel's BTF (default: the target's image's, or the running kernel's
    /// when building for it).
    pub btf: Option<PathBuf>,
}

/// The variable that names the target kernel's BTF to the macros (klp-macros' `BTF_ENV`).
pub const BTF_ENV: &str = "KLP_RS_BTF";
/// The variable that names the modules' split BTF extracted so far (klp-macros'
/// `MODULES_ENV`): `DIR:name,name`.
pub const MODULES_ENV: &str = "KLP_RS_BTF_MODULES";

/// The target kernel's BTF, if known: given, the target image's (extracted once into the
/// cache), or the running kernel's when the tree is the running kernel's.
fn target_btf(opts: &BuildOptions, tree: &KernelTree, staging: &Path) -> Result<Option<PathBuf>> {
    let image = match &opts.target {
        Some(kernel) => Some(
            klp_vm::btf::vmlinux_btf(kernel, staging)
                .with_context(|| format!("cannot read Linux {}'s BTF", kernel.release))?,
        ),
        None => None,
    };
    let given = match (&opts.btf, &image) {
        (Some(btf), Some(image)) => {
            // Another kernel's layouts would make the patch read the wrong memory (built so,
            // current-task oopses on 6.12 with 6.1's task_struct).
            let same = std::fs::read(btf).ok() == std::fs::read(image).ok();
            if !same {
                bail!(
                    "--btf {} is not the BTF of the kernel being built for ({}'s image has \
                     another): drop --btf, or build for the kernel it describes",
                    btf.display(),
                    tree.release
                );
            }
            return Ok(Some(image.clone()));
        }
        (Some(btf), None) => btf.clone(),
        (None, Some(image)) => return Ok(Some(image.clone())),
        (None, None) => {
            let running = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            let sys = Path::new("/sys/kernel/btf/vmlinux");
            if running.trim() != tree.release || !sys.exists() {
                return Ok(None);
            }
            sys.to_path_buf()
        }
    };
    // Kept under a name made of its content, so that a file that changes under the same
    // path (a rebuilt kernel of the same release) makes cargo compile the crate again.
    let data = std::fs::read(&given).with_context(|| format!("--btf {}", given.display()))?;
    let hash = compile::fnv1a(&data);
    let dir = klp_vm::cache_dir()
        .unwrap_or_else(|| staging.to_path_buf())
        .join("btf")
        .join("by-content");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let kept = dir.join(format!("{hash:016x}-{}.btf", data.len()));
    if !kept.exists() {
        let tmp = kept.with_extension(format!("tmp-{}", std::process::id()));
        std::fs::write(&tmp, &data).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &kept).with_context(|| format!("cannot write {}", kept.display()))?;
    }
    Ok(Some(kept))
}

impl BuildOptions {
    /// Builds for `kernel`: its build tree, and the functions the patch replaces checked in
    /// it.
    pub fn for_kernel(self, kernel: &klp_vm::Kernel) -> BuildOptions {
        BuildOptions {
            kdir: Some(kernel.kdir.clone()),
            target: Some(kernel.clone()),
            ..self
        }
    }
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Built {
    pub ko: PathBuf,
    pub module: String,
    /// The Rust object as it went into Kbuild.
    pub rust_object: PathBuf,
    /// The Kbuild directory the module was linked in.
    pub kbuild_dir: PathBuf,
    /// Whether `core` was compiled for this build (not found in the cache).
    pub core_rebuilt: bool,
}

fn run(shell: &Shell, cmd: &mut Command, what: &str) -> Result<String> {
    shell.command(cmd);
    let out = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    finished(shell, out, what)
}

/// A finished command's output and error text, shown with `-v`; an error with the text if
/// it failed.
fn finished(shell: &Shell, out: std::process::Output, what: &str) -> Result<String> {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if shell.verbose && !text.trim().is_empty() {
        eprintln!("{}", text.trim_end());
    }
    if !out.status.success() {
        bail!("{what} failed ({}):\n{}", out.status, text.trim_end());
    }
    Ok(text)
}

/// Checks the functions the patch replaces and the symbols it uses in the booted target
/// kernel.
fn check_in_kernel(
    shell: &Shell,
    kernel: &klp_vm::Kernel,
    needs: &Needs,
    staging: &Path,
) -> Result<()> {
    let verdict =
        crate::funcs::check_in_kernel(shell, kernel, &needs.wanted(), &staging.join("vm"))?;
    for w in &verdict.warnings {
        shell.warn(w);
    }
    if verdict.problems.is_empty() {
        Ok(())
    } else {
        bail!(
            "the patch needs what Linux {} does not have:\n  - {}",
            kernel.release,
            verdict.problems.join("\n  - ")
        )
    }
}

/// Extracts the split BTF of the module objects the patch has (its tables' and its livepatch
/// symbols') that the compile lacked; whether it extracted any. One that cannot be read is a
/// warning: what needs it goes unchecked.
fn extract_module_btf(
    shell: &Shell,
    kernel: &klp_vm::Kernel,
    needs: &Needs,
    staging: &Path,
) -> bool {
    let have = klp_vm::btf::extracted_modules(kernel, staging);
    let mut extracted = false;
    for module in needs.module_objects() {
        if have.contains(&module) {
            continue;
        }
        shell.status(
            "Reading",
            format!(
                "{module}'s BTF from Linux {}'s image (once), then compiling again",
                kernel.release
            ),
        );
        match klp_vm::btf::module_btf(kernel, &module, staging) {
            Ok(_) => extracted = true,
            Err(e) => shell.warn(format!(
                "no BTF for module {module} ({e:#}): its #[klp_func] and #[klp_extern] \
                 prototypes go unchecked and its #[kernel_struct]s cannot be laid out"
            )),
        }
    }
    extracted
}

/// Writes `text` unless the file already holds it, so make sees no change.
fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if std::fs::read(path).ok().as_deref() != Some(text.as_bytes()) {
        std::fs::write(path, text)?;
    }
    Ok(())
}

/// Builds the patch crate into a `.ko`.
pub fn build(shell: &Shell, opts: &BuildOptions) -> Result<Built> {
    let started = Instant::now();
    let (pkg, target_dir) = find_package(opts)?;
    let mut settings = settings(&pkg)?;
    settings.alloc_faults = opts.alloc_faults;
    if opts.alloc_faults {
        shell.warn(format!(
            "{} is a test build: its runtime's allocations fail on demand (module parameter \
             fail_alloc); never load it anywhere but a test machine",
            settings.name
        ));
    }
    if !settings.replace {
        shell.warn(format!(
            "{} stacks (replace = false): while it is enabled the kernel refuses every replacing \
             klp-rs patch, which could not tear it down; it may not share callback set or shadow \
             ids with the patch below it (docs/kernel-runtime.md)",
            settings.name
        ));
    }
    let tree = KernelTree::open(opts.kdir.as_deref())?;
    settings.native_sets = tree.has_callback_sets() && !opts.dispatch_sets;
    if settings.native_sets {
        shell.status(
            "Native",
            format!(
                "callback sets: the livepatch core of Linux {} runs them, from the tables {} \
                 hands it",
                tree.release, settings.name
            ),
        );
    }
    // Before anything is compiled: a tool missing halfway would leave a half-done build and
    // an error from deep inside Kbuild.
    tree.prepare_toolchain(
        &|what| shell.status("Bootstrapping", what),
        &target_dir,
        opts.sign.is_some(),
    )?;
    check_rustc(shell, &pkg)?;
    let crate_name = pkg
        .targets
        .iter()
        .find(|t| t.kind.iter().any(|k| k.to_string() == "lib"))
        .map(|t| t.name.replace('-', "_"))
        .ok_or_else(|| {
            anyhow!(
                "{} has no library target; a patch crate is a library",
                pkg.name
            )
        })?;
    // Kept between builds so that Kbuild, like make for a C module, redoes only what changed.
    let staging = target_dir
        .join("klp")
        .join("build")
        .join(format!("{}-{}", settings.name, tree.release));
    std::fs::create_dir_all(&staging)?;

    shell.status(
        "Compiling",
        format!("{} v{} for kernel {}", pkg.name, pkg.version, tree.release),
    );
    let cache_root = opts
        .cache_dir
        .clone()
        .or_else(default_cache_dir)
        .unwrap_or_else(|| target_dir.join("klp"));
    // The Kbuild directory is written first, so that the C init compiles while rustc runs:
    // it does not depend on the Rust object, and on a crate's first build it is half of
    // Kbuild's time.
    let kb = staging.join("kbuild");
    std::fs::create_dir_all(&kb)?;
    write_if_changed(&kb.join("Kbuild"), &kbuild::kbuild_file(&settings.name))?;
    write_if_changed(&kb.join("klp_rs_init.c"), klp_runtime::abi::c::INIT_C)?;
    write_if_changed(&kb.join("klp_rs_abi.h"), klp_runtime::abi::c::ABI_H)?;
    write_if_changed(
        &kb.join("klp_rs_modinfo.h"),
        &kbuild::modinfo_header(&settings),
    )?;
    write_if_changed(&kb.join("klp_rs.lds"), &kbuild::link_script(&crate_name))?;
    // Kbuild starts now and compiles the C init while rustc runs (on a crate's first build
    // that is half of Kbuild's time). The Rust object's rule (kbuild::kbuild_file) waits while
    // `rust.pending` exists, then goes on only if `rust.ready` says "ok". rustc's object is
    // checked under another name and renamed to RUST_OBJ only once objtool and validation
    // have passed, so make can never take an unchecked or half-written object; the object
    // and the verdict of a previous build go first.
    let stem = pkg.name.replace('-', "_");
    let object = staging.join(format!("{stem}.rust.o"));
    let unchecked = staging.join(format!("{stem}.rust.unchecked.o"));
    let ready = staging.join("rust.ready");
    let pending = staging.join("rust.pending");
    for stale in [&object, &ready] {
        match std::fs::remove_file(stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove {}", stale.display()))
            }
            _ => {}
        }
    }
    std::fs::write(&pending, "").with_context(|| format!("cannot write {}", pending.display()))?;
    let mut make = tree.toolchain.command("make");
    make.arg("-C")
        .arg(&tree.dir)
        .arg(format!("M={}", kb.display()))
        .arg(format!("RUST_OBJ={}", object.display()))
        .arg(format!("KLP_RS_PENDING={}", pending.display()))
        .arg(format!("KLP_RS_READY={}", ready.display()))
        .arg(format!("KLP_RS_PID={}", std::process::id()))
        .arg("-j2")
        .arg(if shell.verbose { "V=1" } else { "-s" })
        .arg("modules");
    shell.command(&make);
    let mut kbuild = match make.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
        Ok(k) => k,
        Err(e) => {
            let _ = std::fs::remove_file(&pending);
            return Err(e).context("cannot run make (Kbuild)");
        }
    };
    let compile_now = || {
        compile(
            shell,
            opts,
            &pkg,
            &cache_root,
            &target_dir,
            &tree,
            &unchecked,
        )
    };
    let checked = compile_now().and_then(|mut compiled| {
        let check = |compiled: &Compiled| {
            shell.status(
                "Checking",
                format!(
                    "{} (objtool, relocations, symbols, tables)",
                    compiled.object.display()
                ),
            );
            objtool(shell, &tree, &compiled.object, &staging)?;
            validate(
                shell,
                &compiled.object,
                &tree,
                &settings.license,
                &crate_name,
            )
        };
        let mut needs = check(&compiled)?;
        // A module object's types and prototypes are in its split BTF, which the compile
        // had only if an earlier build extracted it: extract it and compile again.
        if let Some(kernel) = &opts.target {
            if extract_module_btf(shell, kernel, &needs, &staging) {
                compiled = compile_now()?;
                needs = check(&compiled)?;
            }
        }
        match &opts.target {
            Some(kernel) => check_in_kernel(shell, kernel, &needs, &staging)?,
            None if !needs.livepatch_symbols.is_empty() => shell.warn(format!(
                "the kernel symbols the patch uses without an export ({}) were not checked \
                 against a booted kernel: build with --kernel to learn before insmod whether \
                 they exist and are unambiguous there",
                needs
                    .livepatch_symbols
                    .values()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            None => {}
        }
        if !needs.livepatch_symbols.is_empty() {
            klp_rela::prepare_object(&compiled.object, &needs.livepatch_symbols)?;
        }
        let mut modules: Vec<&str> = needs
            .livepatch_symbols
            .values()
            .map(|s| s.object.as_str())
            .filter(|o| *o != klp_runtime::abi::VMLINUX)
            .collect();
        modules.sort_unstable();
        modules.dedup();
        if !modules.is_empty() && tree.clears_module_relocations() == Some(false) {
            shell.warn(format!(
                "Linux {} does not clear a module's livepatch relocations when the module is \
                 unloaded (later kernels clear them: clear_relocate_add): once {} has been \
                 unloaded while this patch is enabled, the kernel refuses to load it again \
                 (\"existing value is nonzero\") until the patch is disabled",
                tree.release,
                modules.join(", ")
            ));
        }
        // klp_module_coming applies the relocations before the callbacks; when the patch
        // refuses the module, its error path does not clear this patch's.
        let vetoing: Vec<&str> = modules
            .iter()
            .copied()
            .filter(|m| needs.vetoing_objects.iter().any(|o| o == m))
            .collect();
        if !vetoing.is_empty() {
            shell.warn(format!(
                "when this patch's pre_patch refuses {} as it loads, the kernel leaves the \
                 patch's livepatch relocations for it written, and refuses every later load of \
                 it until the patch is disabled",
                vetoing.join(", ")
            ));
        }
        std::fs::rename(&compiled.object, &object)
            .with_context(|| format!("cannot rename to {}", object.display()))?;
        std::fs::write(&ready, "ok")
            .with_context(|| format!("cannot write {}", ready.display()))?;
        Ok(Compiled {
            object: object.clone(),
            ..compiled
        })
    });
    // Kbuild goes on when `pending` goes; without "ok" its rule fails and make stops. Should
    // the file not go away, make is killed rather than waited for forever.
    if std::fs::remove_file(&pending).is_err() {
        let _ = kbuild.kill();
    }
    let kbuild = kbuild.wait_with_output().context("make (Kbuild)")?;
    let Compiled {
        object,
        core_rebuilt,
    } = checked?;
    shell.status(
        "Linking",
        format!("{}.ko (Kbuild, {})", settings.name, tree.dir.display()),
    );
    let out = finished(shell, kbuild, "Kbuild (make modules)")?;
    if let Some(w) = out
        .lines()
        .find(|l| l.contains("objtool") && l.contains("warning"))
    {
        bail!("objtool warned while Kbuild linked the module:\n{w}");
    }
    // Kbuild's output stays as Kbuild left it (make may not relink it next time); the
    // module is finished on a copy.
    let built = staging.join(format!("{}.ko", settings.name));
    std::fs::copy(kb.join(format!("{}.ko", settings.name)), &built)
        .with_context(|| format!("cannot write {}", built.display()))?;
    let relocated = klp_rela::convert_module(&built)?;
    if !relocated.is_empty() {
        shell.status(
            "Relocating",
            format!(
                "{} reference(s) to unexported kernel symbols into {} klp relocation section(s)",
                relocated.iter().map(|c| c.relocations).sum::<usize>(),
                relocated.len()
            ),
        );
    }

    if let Some((key, cert)) = &opts.sign {
        shell.status(
            "Signing",
            format!("{}.ko with {}", settings.name, cert.display()),
        );
        let mut sign = tree.toolchain.command(tree.dir.join("scripts/sign-file"));
        sign.arg("sha256").arg(key).arg(cert).arg(&built);
        run(shell, &mut sign, "scripts/sign-file")?;
    }

    let out_dir = opts.out.clone().unwrap_or_else(|| target_dir.join("klp"));
    std::fs::create_dir_all(&out_dir)?;
    let ko = out_dir.join(format!("{}.ko", settings.name));
    let tmp = out_dir.join(format!(".{}.ko.tmp", settings.name));
    std::fs::copy(&built, &tmp)?;
    std::fs::rename(&tmp, &ko)?;
    shell.status(
        "Finished",
        format!(
            "{} in {:.1}s",
            ko.display(),
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(Built {
        ko,
        module: settings.name,
        rust_object: object,
        kbuild_dir: kb,
        core_rebuilt,
    })
}
