//! `cargo klp`: builds Rust livepatch modules for stock kernels (`build`) and reads them
//! (`inspect`). A library with a thin `main`, so that tests and the VM harness drive the same
//! code as the command line.

pub mod build;
pub mod elf;
pub mod funcs;
pub mod inspect;
pub mod kbuild;
pub mod kconfig;
pub mod klp_rela;
pub mod new;
pub mod run;
pub mod status;
pub mod tools;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Cargo invokes `cargo-klp klp ...`.
#[derive(Parser, Debug)]
#[command(bin_name = "cargo", version, about)]
pub enum Cargo {
    #[command(subcommand)]
    Klp(Klp),
}

#[derive(Subcommand, Debug)]
#[command(about = "Build and inspect Rust livepatch modules")]
pub enum Klp {
    /// Build the patch crate into a livepatch module (target/klp/<name>.ko).
    Build(BuildArgs),
    /// Show what is in kernel modules (.ko, .ko.xz, .ko.zst), or what a replace will run.
    Inspect(InspectArgs),
    /// Start a patch crate that builds and passes its own host test as it is.
    New(NewArgs),
    /// Build the patch for a kernel and boot that kernel under qemu with it; run a script in
    /// the guest (default: load, show /sys/kernel/livepatch, disable, unload, kernel log).
    Run(RunArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub build: BuildArgs,
    /// A local kernel image to boot (vmlinux or bzImage) instead of a Debian kernel; --kdir
    /// names its build tree.
    #[arg(
        long,
        value_name = "FILE",
        requires = "kdir",
        conflicts_with = "kernel"
    )]
    pub image: Option<PathBuf>,
    /// The local kernel's modules (default: /lib/modules/<release>).
    #[arg(long, value_name = "DIR", requires = "image")]
    pub modules_dir: Option<PathBuf>,
    /// A module to load before the patch, e.g. the previous version it replaces (repeatable,
    /// loaded in order; `$WITH` in the script).
    #[arg(long, value_name = "FILE.ko")]
    pub with: Vec<PathBuf>,
    /// A module of the kernel's image, by name, loaded first (repeatable; `$MODULES`).
    #[arg(long, value_name = "NAME")]
    pub module: Vec<String>,
    /// The guest script (busybox sh; `$PATCH` is the patch's module name, helpers `load`,
    /// `disable`, `lpstate`, `section`, `waitlp`; modules are in /mod). Default: load,
    /// /sys/kernel/livepatch, disable, unload, kernel log.
    #[arg(long, value_name = "FILE")]
    pub script: Option<PathBuf>,
    /// Seconds from boot to power-off before the VM is killed and the run fails.
    #[arg(long, value_name = "SECS", default_value_t = 180)]
    pub timeout: u64,
    /// Virtual CPUs.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub cpus: u32,
}

#[derive(Args, Debug)]
pub struct NewArgs {
    /// The crate's name (lowercase letters, digits, `_`); the module is klp_NAME.
    pub name: String,
    /// Where to create it (default: ./NAME). Must not exist.
    #[arg(long, value_name = "DIR")]
    pub path: Option<PathBuf>,
    /// Depend on klp-runtime at this path (default: the runtime this cargo-klp was built
    /// from, if its sources are still there).
    #[arg(long, value_name = "DIR", conflicts_with = "runtime_version")]
    pub runtime_path: Option<PathBuf>,
    /// Depend on this version of klp-runtime from the registry.
    #[arg(long, value_name = "VERSION")]
    pub runtime_version: Option<String>,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Modules to read.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Show the plan for FILE replacing OLD (one FILE).
    #[arg(long, value_name = "OLD")]
    pub against: Option<PathBuf>,
    /// vmlinux's BTF (`/sys/kernel/btf/vmlinux`, or cargo klp's cache `btf/`): show the
    /// kernel's prototype of each vmlinux function the module replaces or calls.
    #[arg(long, value_name = "FILE")]
    pub btf: Option<PathBuf>,
    /// JSON (docs/inspect-json.md) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Build with the release profile's optimizations.
    #[arg(long)]
    pub release: bool,
    /// A Debian kernel to build for: debian:6.1 or debian:6.12 (the newest ABI apt offers)
    /// or an exact ABI (debian:6.1.0-56-amd64); fetched into the per-user cache on first use.
    #[arg(long, value_name = "SPEC", conflicts_with = "kdir")]
    pub kernel: Option<klp_vm::KernelSpec>,
    /// The kernel build tree (default: $KDIR, else /lib/modules/$(uname -r)/build).
    #[arg(long, value_name = "DIR")]
    pub kdir: Option<PathBuf>,
    /// The target kernel's BTF, for #[kernel_struct] layouts and prototype checks (default:
    /// the --kernel image's, or /sys/kernel/btf/vmlinux when building for the running
    /// kernel).
    #[arg(long, value_name = "FILE")]
    pub btf: Option<PathBuf>,
    /// Where to put the .ko (default: <target-dir>/klp).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Path to the patch crate's Cargo.toml.
    #[arg(long, value_name = "PATH")]
    pub manifest_path: Option<PathBuf>,
    /// The patch crate, in a workspace.
    #[arg(short, long, value_name = "SPEC")]
    pub package: Option<String>,
    /// Sign the module with the kernel's scripts/sign-file (needed under Secure Boot or
    /// module.sig_enforce=1).
    #[arg(long, num_args = 2, value_names = ["KEY", "CERT"])]
    pub sign: Option<Vec<PathBuf>>,
    /// Show each command as it runs.
    #[arg(short, long)]
    pub verbose: bool,
    /// Test build: the runtime's allocations fail on demand (`insmod M.ko fail_alloc=N` fails
    /// the Nth), to check that every failure is a clean error. Never ship such a module.
    #[arg(long)]
    pub alloc_faults: bool,
    /// `json`: one JSON object per step on stdout, then the artifact (`reason`: `klp-step`,
    /// `klp-warning`, `klp-artifact`), as `cargo build --message-format json` does.
    #[arg(long, value_name = "FMT", default_value = "human", value_parser = ["human", "json"])]
    pub message_format: String,
}

fn run(cli: Cargo) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let Cargo::Klp(cmd) = cli;
    match cmd {
        Klp::Build(a) => {
            let shell = shell(&a);
            let (mut opts, spec) = build_options(a);
            if let Some(spec) = spec {
                // With the image at hand, the patched functions are checked in the kernel.
                let k = run::kernel(&shell, &run::KernelChoice::Debian(spec))?;
                opts = opts.for_kernel(&k);
            }
            let built = build::build(&shell, &opts)?;
            if shell.is_json() {
                shell.emit(&serde_json::json!({
                    "reason": "klp-artifact",
                    "module": built.module,
                    "ko": built.ko,
                    "core_rebuilt": built.core_rebuilt,
                }));
            }
            Ok(ExitCode::SUCCESS)
        }
        Klp::Run(a) => {
            let shell = shell(&a.build);
            let (build, spec) = build_options(a.build);
            let kernel = match (a.image, spec) {
                (Some(image), _) => run::KernelChoice::Local {
                    image,
                    kdir: build.kdir.clone().context("--image needs --kdir")?,
                    modules: a.modules_dir,
                },
                (None, Some(spec)) => run::KernelChoice::Debian(spec),
                (None, None) => anyhow::bail!(
                    "cargo klp run needs a kernel to boot: --kernel debian:6.1 (or debian:6.12, \
                     or an exact ABI), or --image FILE --kdir DIR for one you have"
                ),
            };
            let status = run::run(
                &shell,
                &run::RunOptions {
                    build,
                    kernel,
                    with: a.with,
                    modules: a.module,
                    script: a.script,
                    boot: klp_vm::BootOptions {
                        cpus: a.cpus,
                        timeout: std::time::Duration::from_secs(a.timeout),
                    },
                },
            )?;
            // The script's status, as a shell reports it: 0..=255.
            Ok(ExitCode::from(u8::try_from(status).unwrap_or(1)))
        }
        Klp::Inspect(a) => run_inspect(a).map(|()| ExitCode::SUCCESS),
        Klp::New(a) => {
            let runtime = match (a.runtime_path, a.runtime_version) {
                (Some(p), _) => new::Runtime::Path(
                    p.canonicalize()
                        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
                ),
                (None, Some(v)) => new::Runtime::Version(v),
                (None, None) => new::Runtime::default_for_this_build(),
            };
            let dir = a.path.unwrap_or_else(|| PathBuf::from(&a.name));
            let dir = new::new_crate(&a.name, &dir, &runtime)?;
            eprintln!(
                "     Created patch crate `{}` in {} (see its README.md: cargo test, cargo klp build)",
                a.name,
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn shell(a: &BuildArgs) -> status::Shell {
    if a.message_format == "json" {
        status::Shell::json(a.verbose)
    } else {
        status::Shell::new(a.verbose)
    }
}

/// The build's options, and the Debian kernel `--kernel` names (resolved by the caller).
fn build_options(a: BuildArgs) -> (build::BuildOptions, Option<klp_vm::KernelSpec>) {
    let opts = build::BuildOptions {
        manifest_path: a.manifest_path,
        package: a.package,
        release: a.release,
        kdir: a.kdir,
        out: a.out,
        sign: a.sign.map(|v| (v[0].clone(), v[1].clone())),
        // Like RUSTFLAGS, but for the kernel object only (space-separated).
        extra_rustflags: std::env::var("KLP_RUSTFLAGS")
            .map(|f| f.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        alloc_faults: a.alloc_faults,
        dispatch_sets: false,
        cache_dir: None,
        target: None,
        btf: a.btf,
    };
    (opts, a.kernel)
}

fn run_inspect(a: InspectArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if let Some(old) = &a.against {
        let [new] = a.files.as_slice() else {
            anyhow::bail!("--against takes one FILE (the incoming patch)")
        };
        let plan = inspect::against(new, old)?;
        if a.json {
            serde_json::to_writer_pretty(
                &mut out,
                &serde_json::json!({ "schema": inspect::SCHEMA, "plan": plan }),
            )?;
            writeln!(out)?;
        } else {
            write!(out, "{}", inspect::render_plan(&plan))?;
        }
        return Ok(());
    }
    let btf = a
        .btf
        .as_deref()
        .map(|p| klp_btf::load(p, None))
        .transpose()
        .map_err(|e| anyhow::anyhow!(e))?;
    let results = inspect::inspect_all(&a.files).into_iter().map(|r| {
        r.map(|mut report| {
            if let Some(btf) = &btf {
                inspect::add_prototypes(&mut report, btf);
            }
            report
        })
    });
    let mut failed = 0;
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(r) => reports.push(r),
            Err(e) => {
                failed += 1;
                errors.push(e.to_string());
            }
        }
    }
    if a.json {
        // Written straight from the reports (no intermediate JSON tree).
        #[derive(serde::Serialize)]
        struct Doc<'r> {
            schema: u32,
            modules: &'r [inspect::Report],
            errors: &'r [String],
        }
        let doc = Doc {
            schema: inspect::SCHEMA,
            modules: &reports,
            errors: &errors,
        };
        serde_json::to_writer(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        for r in &reports {
            write!(out, "{}", inspect::render(r))?;
        }
    }
    out.flush()?;
    for e in &errors {
        eprintln!("error: {e}");
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} file(s) could not be read", a.files.len());
    }
    Ok(())
}

/// The command line's entry point.
pub fn main() -> ExitCode {
    match run(Cargo::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
