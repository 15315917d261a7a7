//! `cargo xtask`: the project's tasks.

use std::process::{Command, ExitCode};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use klp_harness::{Output, Series};

mod bench;

#[derive(Parser)]
#[command(about = "klp-rs project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine needs and fetch the newest kernel of each supported series.
    Setup,
    /// Build the cmdline example and live patch a real Debian kernel with it, in qemu.
    Demo {
        /// Kernel: 6.1, 6.12 (Debian 12's), debian11:5.10 or debian13:6.12.
        #[arg(long, default_value = "6.1")]
        kernel: String,
    },
    /// Set up, then run the whole test suite (simulator, macros, real kernels).
    Test,
    /// Time `cargo klp build` against a C module and the bare cargo + make; print ratios.
    Bench,
}

/// A series as `--kernel` names it: `6.1`, `debian13:6.12`, `debian11:5.10`.
fn series(s: &str) -> Result<Series> {
    let spec = if s.contains(':') {
        s.to_string()
    } else {
        format!("debian:{s}")
    };
    match spec.parse::<klp_harness::KernelSpec>()? {
        klp_harness::KernelSpec::Newest(series) => Ok(series),
        klp_harness::KernelSpec::Release(r) => {
            bail!("`{r}` is an exact ABI; the demo takes a series (6.1, debian13:6.12, ...)")
        }
    }
}

fn demo(series: Series) -> Result<()> {
    klp_harness::setup_host()?;
    let kernel = klp_harness::fetch_kernel(series)?;
    let ko = klp_harness::build_patch("cmdline", &kernel)?;
    eprintln!(
        "     Booting Debian {} under qemu (TCG) with {}",
        kernel.release,
        ko.display()
    );
    let log = klp_harness::boot(
        &kernel,
        &[&ko],
        "section before; cat /proc/cmdline\n\
         section load; load klp_cmdline\n\
         section patched; cat /proc/cmdline; lpstate\n\
         section disable; disable klp_cmdline\n\
         section disabled; cat /proc/cmdline\n\
         section rmmod; rmmod klp_cmdline; echo \"rmmod rc=$?\"\n\
         section dmesg; dmesg | grep -E 'livepatch|klp_cmdline' | grep -v taint\n",
    )?;
    println!(
        "\n/proc/cmdline before the patch:\n  {}",
        log.section("before").join("\n  ")
    );
    println!(
        "\n/proc/cmdline with klp_cmdline live:\n  {}",
        log.section("patched").join("\n  ")
    );
    println!(
        "\n/proc/cmdline after disabling it:\n  {}",
        log.section("disabled").join("\n  ")
    );
    println!("\nKernel log:\n  {}", log.section("dmesg").join("\n  "));
    println!(
        "\n(booted, patched, unpatched and powered off in {:.1}s)",
        log.elapsed.as_secs_f64()
    );
    let patched = log.section("patched").join("\n");
    if !patched.contains("this has been live patched by Rust") {
        bail!("the patch did not take effect:\n{}", log.serial);
    }
    Ok(())
}

fn test() -> Result<()> {
    klp_harness::setup_host()?;
    for s in Series::ALL {
        klp_harness::fetch_kernel(s)?;
    }
    klp_harness::fetch_patched_kernel()?;
    klp_harness::run(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())).args([
            "test",
            "--workspace",
            "--all-targets",
        ]),
        "the test suite",
        Output::Shown,
    )
    .map(drop)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.task {
        Task::Setup => klp_harness::setup_host().and_then(|()| {
            Series::ALL
                .iter()
                .try_for_each(|s| klp_harness::fetch_kernel(*s).map(drop))?;
            klp_harness::fetch_patched_kernel().map(drop)
        }),
        Task::Demo { kernel } => series(&kernel).and_then(demo),
        Task::Test => test(),
        Task::Bench => bench::bench(),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
