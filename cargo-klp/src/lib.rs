//! `cargo klp`: builds Rust livepatch modules for stock kernels (`build`) and reads them
//! (`inspect`). A library with a thin `main`, so that tests and the VM harness drive the same
//! code as the command line.

pub mod build;
pub mod elf;
pub mod kbuild;
pub mod kconfig;
pub mod status;

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
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Build with the release profile's optimizations.
    #[arg(long)]
    pub release: bool,
    /// The kernel build tree (default: $KDIR, else /lib/modules/$(uname -r)/build).
    #[arg(long, value_name = "DIR")]
    pub kdir: Option<PathBuf>,
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
}

fn run(cli: Cargo) -> anyhow::Result<()> {
    let Cargo::Klp(cmd) = cli;
    match cmd {
        Klp::Build(a) => {
            let shell = status::Shell::new(a.verbose);
            let opts = build::BuildOptions {
                manifest_path: a.manifest_path,
                package: a.package,
                release: a.release,
                kdir: a.kdir,
                out: a.out,
                sign: a.sign.map(|v| (v[0].clone(), v[1].clone())),
            };
            build::build(&shell, &opts)?;
            Ok(())
        }
    }
}

/// The command line's entry point.
pub fn main() -> ExitCode {
    match run(Cargo::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
