//! `cargo xtask bench`: how long `cargo klp build` takes against the baselines a kernel
//! engineer knows, in one run on the same machine: a hand-written C livepatch module under
//! Kbuild, and the bare `cargo rustc` + `make` that `cargo klp build` wraps. Prints figures
//! and ratios; it is a benchmark, not a test, and fails only if a build fails.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use klp_harness::{fetch_kernel, target_dir, workspace, Output, Series};

const C_MODULE: &str = r#"// The classic livepatch sample, by hand: what klp-rs's cmdline example does.
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static int livepatch_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", "MESSAGE");
	return 0;
}

static struct klp_func funcs[] = { { .old_name = "cmdline_proc_show", .new_func = livepatch_cmdline_proc_show }, {} };
static struct klp_object objs[] = { { .funcs = funcs }, {} };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, .replace = true };

static int __init livepatch_init(void)
{
	return klp_enable_patch(&patch);
}

static void __exit livepatch_exit(void)
{
}

module_init(livepatch_init);
module_exit(livepatch_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
"#;

fn timed(what: &str, f: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let t = Instant::now();
    f().with_context(|| what.to_string())?;
    Ok(t.elapsed())
}

fn run(cmd: &mut Command) -> Result<()> {
    let what = format!("{cmd:?}");
    klp_harness::run(cmd, &what, Output::Captured).map(drop)
}

/// The cmdline example as a crate of its own, outside the workspace, as a user has it.
fn patch_crate(dir: &Path, message: &str) -> Result<()> {
    std::fs::create_dir_all(dir.join("src"))?;
    let runtime = workspace().join("klp-runtime");
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"cmdline\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n\n\
             [dependencies]\nklp-runtime = {{ path = \"{}\" }}\n\n[package.metadata.klp]\nname = \"klp_bench_rs\"\n",
            runtime.display()
        ),
    )?;
    let src = std::fs::read_to_string(workspace().join("examples/cmdline/src/lib.rs"))?;
    std::fs::write(
        dir.join("src/lib.rs"),
        src.replace("this has been live patched by Rust", message),
    )?;
    Ok(())
}

fn c_module(dir: &Path, message: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("Kbuild"), "obj-m := klp_bench_c.o\n")?;
    std::fs::write(
        dir.join("klp_bench_c.c"),
        C_MODULE.replace("MESSAGE", message),
    )?;
    Ok(())
}

pub fn bench() -> Result<()> {
    build_bench()?;
    run_bench()?;
    inspect_bench()
}

/// `cargo klp inspect --json` over every module of the 6.1 image, against what a user runs
/// for the same facts, batched as anyone who cares about speed runs it: `readelf -SW` and
/// `modinfo` over all the files through `xargs` (a few processes). Warm cache; each side's
/// median of seven runs, alternating.
fn inspect_bench() -> Result<()> {
    let kernel = fetch_kernel(Series::V6_1)?;
    let files = klp_harness::image_modules(&kernel)?;
    // Warm the page cache.
    for f in &files {
        std::fs::read(f)?;
    }
    run(Command::new("cargo")
        .args(["build", "--quiet", "--release", "-p", "cargo-klp"])
        .current_dir(workspace()))?;
    let exe = target_dir().join("release/cargo-klp");
    let list = target_dir().join("klp-bench").join("image-modules.txt");
    std::fs::create_dir_all(list.parent().expect("a file in a directory"))?;
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    std::fs::write(&list, names.join("\n") + "\n")?;
    let batched = |tool: &str| format!("xargs -a {} {tool} >/dev/null", list.display());
    let script = format!("{} && {}", batched("readelf -SW"), batched("modinfo"));
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        ours.push(timed("cargo klp inspect --json", || {
            run(Command::new(&exe)
                .args(["klp", "inspect", "--json"])
                .args(&files)
                .stdout(std::process::Stdio::null()))
        })?);
        theirs.push(timed("readelf -SW + modinfo (xargs)", || {
            run(Command::new("sh").args(["-c", &script]))
        })?);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    let (ours, theirs) = (median(&mut ours), median(&mut theirs));
    let r = ours / theirs;
    println!(
        "\ncargo klp inspect vs batched readelf + modinfo, {} modules of Debian {} (warm cache, median of 7)",
        files.len(),
        kernel.release
    );
    println!("  cargo klp inspect --json (one process, all cores)  {ours:>7.3}s");
    println!("  xargs readelf -SW; xargs modinfo                   {theirs:>7.3}s");
    println!("  ratio = {r:.3}x (target <= 0.1x) {}", verdict(r <= 0.1));
    Ok(())
}

fn build_bench() -> Result<()> {
    let kernel = fetch_kernel(Series::V6_1)?;
    let work = target_dir().join("klp-bench");
    let (rs, c) = (work.join("cmdline"), work.join("c"));
    // The crate is a workspace of its own: its target dir is its own too.
    let rs_target = rs.join("target");
    // Cold: the first build rebuilds core and alloc for this kernel's flags.
    if rs_target.exists() {
        std::fs::remove_dir_all(&rs_target)?;
    }
    patch_crate(&rs, "bench 0")?;
    c_module(&c, "bench 0")?;
    let shell = cargo_klp::status::Shell::new(false);
    // The bench's own build cache, emptied above, so that the first build is cold.
    let cache_root = rs_target.join("klp");
    let opts = cargo_klp::build::BuildOptions {
        manifest_path: Some(rs.join("Cargo.toml")),
        kdir: Some(kernel.kdir.clone()),
        cache_dir: Some(cache_root.clone()),
        ..Default::default()
    };
    let klp =
        |opts: &cargo_klp::build::BuildOptions| cargo_klp::build::build(&shell, opts).map(drop);
    let make = |dir: &Path| {
        let mut m = Command::new("make");
        m.arg("-C")
            .arg(&kernel.kdir)
            .arg(format!("M={}", dir.display()))
            .arg("-s");
        m
    };

    // First build in this target dir: includes rebuilding core and alloc (once per kernel
    // config, like preparing the kernel tree itself).
    let first = timed("first cargo klp build", || klp(&opts))?;
    // A brand-new crate from `cargo klp new`: its first build finds core and alloc in the
    // shared cache.
    let second_dir = work.join("second");
    if second_dir.exists() {
        std::fs::remove_dir_all(&second_dir)?;
    }
    cargo_klp::new::new_crate(
        "second",
        &second_dir,
        &cargo_klp::new::Runtime::Path(workspace().join("klp-runtime")),
    )?;
    // The workspace's versions: nothing to resolve, no network.
    std::fs::copy(
        workspace().join("Cargo.lock"),
        second_dir.join("Cargo.lock"),
    )?;
    let second_opts = cargo_klp::build::BuildOptions {
        manifest_path: Some(second_dir.join("Cargo.toml")),
        ..opts.clone()
    };
    let second = timed("first build of a second crate", || klp(&second_opts))?;

    let flags = cargo_klp::kconfig::KernelConfig::parse(&std::fs::read_to_string(
        kernel.kdir.join(".config"),
    )?)
    .rustflags();
    // The key cargo klp gave the crate's object in the cache (the first build made it).
    let key = cargo_klp::build::crate_key(&rs_target, &rs.join("Cargo.toml"))?;
    let (cache, _) = cargo_klp::build::object_cache(&cache_root, &flags, false, "cmdline", &key);
    let clean_crate = || {
        run(Command::new("cargo")
            .args([
                "clean",
                "--quiet",
                "-p",
                "cmdline",
                "--target",
                "x86_64-unknown-none",
                "--profile",
                "klp",
            ])
            .args(["--config", "profile.klp.inherits=\"dev\""])
            .arg("--manifest-path")
            .arg(rs.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&cache))
    };
    clean_crate()?;
    // Like `make clean` for the C module: the Kbuild directory goes too.
    std::fs::remove_dir_all(rs_target.join("klp").join("build"))?;
    let klp_clean = timed("clean cargo klp build", || klp(&opts))?;

    patch_crate(&rs, "bench 1")?;
    let klp_incr = timed("incremental cargo klp build", || klp(&opts))?;

    // The bare steps cargo klp wraps, with the same flags, after the same one-line change.
    patch_crate(&rs, "bench 2")?;
    let built = cargo_klp::build::build(&shell, &opts)?;
    patch_crate(&rs, "bench 3")?;
    let obj = built.rust_object.clone();
    let bare_incr = timed("bare cargo rustc + make", || {
        let mut cmd = cargo_klp::build::kernel_rustc_command(
            &rs.join("Cargo.toml"),
            "cmdline",
            false,
            &flags,
            &cache_root,
            &key,
        );
        run(&mut cmd)?;
        let (_, emitted) =
            cargo_klp::build::object_cache(&cache_root, &flags, false, "cmdline", &key);
        std::fs::copy(emitted, &obj)?;
        run(make(&built.kbuild_dir)
            .arg(format!("RUST_OBJ={}", obj.display()))
            .arg("modules"))
    })?;

    run(make(&c).arg("clean"))?;
    let c_clean = timed("clean C module build", || run(make(&c).arg("modules")))?;
    c_module(&c, "bench 1")?;
    let c_incr = timed(
        "incremental C module build",
        || run(make(&c).arg("modules")),
    )?;

    let s = |d: Duration| format!("{:>6.2}s", d.as_secs_f64());
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "\ncargo klp build vs baselines, Debian {} (2 cores)",
        kernel.release
    );
    println!(
        "  first cargo klp build (core and alloc rebuilt)   {}",
        s(first)
    );
    println!(
        "  first build of a `cargo klp new` crate (cached)  {}  ({:.2}x the first)",
        s(second),
        ratio(second, first)
    );
    println!(
        "  cargo klp build, crate cleaned                   {}",
        s(klp_clean)
    );
    println!(
        "  cargo klp build, one-line change                 {}",
        s(klp_incr)
    );
    println!(
        "  bare cargo rustc + make, one-line change         {}",
        s(bare_incr)
    );
    println!(
        "  C module under Kbuild, clean                     {}",
        s(c_clean)
    );
    println!(
        "  C module under Kbuild, one-line change           {}",
        s(c_incr)
    );
    let inc = ratio(klp_incr, bare_incr);
    let clean = ratio(klp_clean, c_clean);
    println!(
        "  incremental: cargo klp / bare = {inc:.2}x (target <= 1.2x) {}",
        verdict(inc <= 1.2)
    );
    println!(
        "  clean: cargo klp / C module  = {clean:.2}x (target <= 2x)  {}",
        verdict(clean <= 2.0)
    );
    println!(
        "  incremental: cargo klp / C module = {:.2}x",
        ratio(klp_incr, c_incr)
    );
    let new = ratio(second, c_clean);
    println!(
        "  new crate's first build / C module clean = {new:.2}x (target <= 1.5x) {}",
        verdict(new <= 1.5)
    );
    Ok(())
}

/// `cargo klp run`'s boot with the default script (load, sysfs, disable, unload, log)
/// against the floor: the same kernel and initramfs booted without the patch, the script
/// doing nothing. Boot to power-off, median of five each, alternating (TCG boots vary by
/// about half a second).
fn run_bench() -> Result<()> {
    let kernel = fetch_kernel(Series::V6_1)?;
    let ko = klp_harness::build_patch("cmdline", &kernel)?;
    let work = target_dir().join("klp-bench").join("vm");
    let script =
        cargo_klp::run::guest_script("klp_cmdline", &[], &[], cargo_klp::run::DEFAULT_SCRIPT);
    let boot = |modules: &[&Path], script: &str| {
        klp_vm::boot(
            &kernel,
            modules,
            script,
            &work,
            klp_vm::BootOptions::default(),
        )
        .map(|log| log.elapsed)
    };
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        ours.push(boot(&[&ko], &script)?);
        floor.push(boot(&[], "true")?);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    let (ours, floor) = (median(&mut ours), median(&mut floor));
    let r = ours / floor;
    println!(
        "\ncargo klp run vs a bare boot, Debian {} under qemu TCG (boot to power-off, median of 5)",
        kernel.release
    );
    println!("  default script with klp_cmdline (load, disable, unload)  {ours:>6.2}s");
    println!("  same kernel and initramfs, no patch, empty script       {floor:>6.2}s");
    println!("  ratio = {r:.2}x (target <= 1.2x) {}", verdict(r <= 1.2));
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}
