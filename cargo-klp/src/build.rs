//! `cargo klp build`: the patch crate -> kernel object (rustc with the kernel's flags, `core`
//! rebuilt) -> objtool -> validation -> Kbuild link with the generic C init -> `.ko`.
//!
//! Work happens in a staging directory under the target dir; the `.ko` appears at its output
//! path only when every step has passed, by rename, so a failed build leaves nothing behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use cargo_metadata::{Message, MetadataCommand, Package};

use crate::elf;
use crate::kbuild::{self, ModuleSettings};
use crate::kconfig::KernelConfig;
use crate::status::Shell;
use crate::tools;

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
}

/// The kernel build tree: `KDIR` with its `.config`, `Module.symvers` and objtool.
pub struct KernelTree {
    pub dir: PathBuf,
    pub config: KernelConfig,
    pub release: String,
}

impl KernelTree {
    pub fn open(kdir: Option<&Path>) -> Result<KernelTree> {
        let dir = match kdir {
            Some(d) => d.to_path_buf(),
            None => match std::env::var_os("KDIR") {
                Some(d) => PathBuf::from(d),
                None => {
                    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
                        .context("cannot read the running kernel's release; pass --kdir")?;
                    PathBuf::from(format!("/lib/modules/{}/build", release.trim()))
                }
            },
        };
        let need = |f: &str| {
            let p = dir.join(f);
            if p.exists() {
                Ok(p)
            } else {
                Err(anyhow!(
                    "{} is missing: {} is not a prepared kernel build tree; install the kernel's headers \
                     (Debian: linux-headers-<release>) or pass --kdir",
                    p.display(),
                    dir.display()
                ))
            }
        };
        let config = KernelConfig::parse(&std::fs::read_to_string(need(".config")?)?);
        need("Module.symvers")?;
        need("tools/objtool/objtool")?;
        if !config.enabled("LIVEPATCH") {
            bail!(
                "{}: the kernel is built without CONFIG_LIVEPATCH; it cannot load live patches",
                dir.display()
            );
        }
        // UTS_RELEASE is the name the module's vermagic carries (Debian's kernel.release file
        // holds the upstream version instead).
        let release = std::fs::read_to_string(dir.join("include/generated/utsrelease.h"))
            .ok()
            .and_then(|h| h.split('"').nth(1).map(str::to_string))
            .unwrap_or_else(|| {
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
        Ok(KernelTree {
            dir,
            config,
            release,
        })
    }

    /// Exported symbols: name -> (module, export type).
    fn exports(&self) -> Result<HashMap<String, (String, String)>> {
        let text = std::fs::read_to_string(self.dir.join("Module.symvers"))?;
        Ok(text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                Some((
                    f.get(1)?.to_string(),
                    (f.get(2)?.to_string(), f.get(3)?.to_string()),
                ))
            })
            .collect())
    }
}

fn settings(pkg: &Package) -> Result<ModuleSettings> {
    let meta = pkg.metadata.get("klp");
    let get = |k: &str| meta.and_then(|m| m.get(k));
    let string = |k: &str| -> Result<Option<String>> {
        match get(k) {
            None => Ok(None),
            Some(v) => v.as_str().map(|s| Some(s.to_string())).ok_or_else(|| {
                anyhow!(
                    "[package.metadata.klp] {k} in {} must be a string",
                    pkg.manifest_path
                )
            }),
        }
    };
    let name = string("name")?.unwrap_or_else(|| format!("klp_{}", pkg.name.replace('-', "_")));
    kbuild::check_module_name(&name)
        .map_err(|e| anyhow!("[package.metadata.klp] in {}: {e}", pkg.manifest_path))?;
    let replace = match get("replace") {
        None => true,
        Some(v) => v.as_bool().ok_or_else(|| {
            anyhow!(
                "[package.metadata.klp] replace in {} must be true or false",
                pkg.manifest_path
            )
        })?,
    };
    Ok(ModuleSettings {
        name,
        replace,
        description: string("description")?.or_else(|| pkg.description.clone()),
        license: string("license")?.unwrap_or_else(|| "GPL".into()),
        author: string("author")?.or_else(|| pkg.authors.first().cloned()),
        alloc_faults: false,
    })
}

fn find_package(opts: &BuildOptions) -> Result<(Package, PathBuf)> {
    let mut cmd = MetadataCommand::new();
    cmd.no_deps();
    if let Some(m) = &opts.manifest_path {
        cmd.manifest_path(m);
    }
    let meta = cmd.exec().context("cargo metadata failed")?;
    let target_dir = meta.target_directory.clone().into_std_path_buf();
    let pkg = match &opts.package {
        Some(p) => meta
            .packages
            .iter()
            .find(|k| k.name.as_str() == p.as_str())
            .cloned(),
        None => {
            let manifest = match &opts.manifest_path {
                Some(m) => std::fs::canonicalize(m)?,
                None => std::env::current_dir()?.join("Cargo.toml"),
            };
            meta.packages
                .iter()
                .find(|k| k.manifest_path.as_std_path() == manifest)
                .cloned()
        }
    };
    let pkg = pkg.ok_or_else(|| match &opts.package {
        Some(p) => anyhow!("no package `{p}` in this workspace"),
        None => {
            anyhow!("run cargo klp in a patch crate's directory, or pass -p or --manifest-path")
        }
    })?;
    Ok((pkg, target_dir))
}

fn run(shell: &Shell, cmd: &mut Command, what: &str) -> Result<String> {
    shell.command(cmd);
    let out = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
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

/// A short stable hash of the codegen flags: objects built with different flags (a 6.1 and
/// a 6.12 kernel) keep separate cargo caches instead of rebuilding `core` in turn.
fn flags_hash(flags: &[String]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in flags.join(" ").bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    format!("{:08x}", h as u32)
}

/// Where the kernel object of a crate is cached for a set of codegen flags, and the file
/// rustc writes it to.
pub fn object_cache(
    target_dir: &Path,
    flags: &[String],
    release: bool,
    package: &str,
) -> (PathBuf, PathBuf) {
    let cache = target_dir
        .join("klp")
        .join(format!("rustc-{}", flags_hash(flags)));
    let profile = if release { "klp-release" } else { "klp" };
    let emitted = cache.join(format!("{profile}-{}.o", package.replace('-', "_")));
    (cache, emitted)
}

/// The cargo command that compiles a patch crate into one kernel object: `core` and `alloc`
/// rebuilt with the kernel's flags, fat LTO, one codegen unit.
pub fn kernel_rustc_command(
    manifest: &Path,
    package: &str,
    release: bool,
    flags: &[String],
    target_dir: &Path,
) -> Command {
    let (profile, inherits, opt) = if release {
        ("klp-release", "release", "3")
    } else {
        ("klp", "dev", "2")
    };
    let (cache, emitted) = object_cache(target_dir, flags, release, package);
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.arg("rustc")
        .arg("--manifest-path")
        .arg(manifest)
        .args([
            "-p",
            package,
            "--lib",
            "--target",
            "x86_64-unknown-none",
            "-Zbuild-std=core,alloc",
        ])
        .args(["--crate-type", "staticlib", "--profile", profile])
        // One object with our code and the parts of core and alloc it uses.
        .args([
            "--config",
            &format!("profile.{profile}.inherits=\"{inherits}\""),
        ])
        .args(["--config", &format!("profile.{profile}.lto=\"fat\"")])
        .args(["--config", &format!("profile.{profile}.codegen-units=1")])
        .args(["--config", &format!("profile.{profile}.panic=\"abort\"")])
        // A panic in the kernel is a kernel panic: no overflow checks or debug assertions
        // (the code says where it wraps or saturates), as for a release build.
        .args([
            "--config",
            &format!("profile.{profile}.overflow-checks=false"),
        ])
        .args([
            "--config",
            &format!("profile.{profile}.debug-assertions=false"),
        ])
        .args(["--config", &format!("profile.{profile}.opt-level={opt}")])
        .args(["--config", &format!("profile.{profile}.debug=false")])
        .args(["--config", &format!("profile.{profile}.incremental=false")])
        .arg("--target-dir")
        .arg(&cache)
        .arg("--message-format=json-render-diagnostics")
        .arg("--")
        // rustc writes the object only when cargo rebuilds the crate, so it lives beside
        // cargo's cache (where a fresh build finds it) and is copied into the staging dir.
        .arg(format!("--emit=obj={}", emitted.display()))
        // The kernel builds its own Rust this way; build-std and the -Z flags need it.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        .env_remove("RUSTFLAGS");
    cmd
}

/// Compiles the crate into one object for the kernel.
fn compile(
    shell: &Shell,
    opts: &BuildOptions,
    pkg: &Package,
    target_dir: &Path,
    tree: &KernelTree,
    staging: &Path,
) -> Result<PathBuf> {
    let mut flags = tree.config.rustflags();
    flags.extend(opts.extra_rustflags.iter().cloned());
    let (cache, emitted) = object_cache(target_dir, &flags, opts.release, pkg.name.as_str());
    let mut cmd = kernel_rustc_command(
        pkg.manifest_path.as_std_path(),
        pkg.name.as_str(),
        opts.release,
        &flags,
        target_dir,
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    shell.command(&cmd);
    let mut child = cmd.spawn().context("cannot run cargo")?;
    // Cargo's own progress goes through; its per-crate warning counts do not, since they
    // would count the expected warnings hidden below.
    let stderr = child.stderr.take().expect("piped");
    let progress = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut skipping = false;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            // rustc has no stable name for the SLS hardening features the kernel's config
            // asks for, and says so for every crate; they take effect all the same.
            if line.starts_with("warning: unknown and unstable feature")
                && line.contains("harden-sls")
            {
                skipping = true;
            }
            if skipping {
                skipping = !line.is_empty();
                continue;
            }
            if !(line.starts_with("warning: `") && line.contains(" generated ")) {
                eprintln!("{line}");
            }
        }
    });
    let reader = std::io::BufReader::new(child.stdout.take().expect("piped"));
    for msg in Message::parse_stream(reader) {
        if let Ok(Message::CompilerMessage(m)) = msg {
            // The same warning, when it comes as a diagnostic.
            if m.message.message.contains("unknown and unstable feature")
                && m.message.message.contains("harden-sls")
            {
                continue;
            }
            if let Some(r) = m.message.rendered {
                eprint!("{r}");
            }
        }
    }
    let status = child.wait()?;
    let _ = progress.join();
    if !status.success() {
        let hint = if !rust_src_installed() {
            "\nhint: the kernel build rebuilds core; install its sources with `rustup component add rust-src` \
             and the target with `rustup target add x86_64-unknown-none`"
        } else {
            ""
        };
        bail!("compiling {} for the kernel failed{hint}", pkg.name);
    }
    if !emitted.exists() {
        bail!(
            "cargo considered {} up to date but {} is gone; remove {} and build again",
            pkg.name,
            emitted.display(),
            cache.display()
        );
    }
    let object = staging.join(format!("{}.rust.o", pkg.name.replace('-', "_")));
    std::fs::copy(&emitted, &object)?;
    Ok(object)
}

/// The rustc cargo will run for the patch crate (its directory may pin a toolchain) must be
/// the release the kernel build is proven on, unless the user says otherwise.
fn check_rustc(shell: &Shell, pkg: &Package) -> Result<()> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let dir = pkg
        .manifest_path
        .parent()
        .map(|d| d.as_std_path().to_path_buf());
    let mut cmd = Command::new(&rustc);
    cmd.arg("-vV");
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd.output().context("cannot run rustc")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let release = tools::rustc_release(&text)
        .ok_or_else(|| anyhow!("cannot read rustc's release from `rustc -vV`:\n{text}"))?;
    match tools::check_rustc(release) {
        Ok(()) => Ok(()),
        Err(e) if std::env::var_os(tools::UNVERIFIED_RUSTC_ENV).is_some_and(|v| v == "1") => {
            shell.warn(e);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn rust_src_installed() -> bool {
    Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| {
            PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
                .join("lib/rustlib/src/rust/library")
        })
        .is_some_and(|p| p.exists())
}

/// Everything the module loader, modpost and the livepatch core would trip over, found
/// before linking, each with the fix.
fn validate(
    shell: &Shell,
    path: &Path,
    tree: &KernelTree,
    license: &str,
    crate_name: &str,
) -> Result<()> {
    let data = std::fs::read(path)?;
    let file = object::File::parse(&*data)
        .with_context(|| format!("{}: not an object file", path.display()))?;
    let mut problems = Vec::new();

    // Each crate's items land in sections named after it; the module carries the patch
    // crate's only (the link script), so another crate's would be silently dropped.
    for (sec, other) in elf::foreign_tables(&file, crate_name) {
        problems.push(format!(
            "{}: section {sec}: crate `{other}` declares #[klp_func], #[klp_callbacks] or \
             #[klp_shadow] items, which the module would not carry: only the patch crate's \
             (`{crate_name}`) become its tables; move them into the patch crate (a dependency \
             may hold the code they call)",
            path.display()
        ));
    }

    for (sec, offset, ty) in elf::bad_relocations(&file) {
        problems.push(format!(
            "{}: section {sec} offset {offset:#x}: relocation {} is not applied by the kernel's module loader \
             (it takes 64, PC32, PLT32, 32, 32S, PC64); a GOT relocation means code was built without \
             -Crelocation-model=static",
            path.display(),
            elf::relocation_name(ty)
        ));
    }
    for sec in elf::writable_executable(&file) {
        problems.push(format!(
            "{}: section {sec} is writable and executable; the kernel refuses W+X",
            path.display()
        ));
    }

    let exports = tree.exports()?;
    let gpl = license.contains("GPL");
    let mut missing = Vec::new();
    for sym in elf::undefined_symbols(&file) {
        let provided = klp_runtime::abi::INIT_PROVIDES.contains(&sym)
            || sym.starts_with("__start_klp_rs_")
            || sym.starts_with("__stop_klp_rs_");
        match exports.get(sym) {
            _ if provided => {}
            Some((_, kind)) if kind.ends_with("_GPL") && !gpl => problems.push(format!(
                "`{sym}` is exported GPL-only ({kind}) but the module's license is `{license}`; \
                 set license = \"GPL\" in [package.metadata.klp]"
            )),
            Some(_) => {}
            None => missing.push(sym),
        }
    }
    if !missing.is_empty() {
        problems.push(format!(
            "{} undefined symbol(s) not exported by {}: {}\n  (a `core`/`alloc` symbol means it was not \
             linked in; anything else must be a kernel export, or be reached through a function the kernel exports)",
            missing.len(),
            tree.dir.join("Module.symvers").display(),
            missing.join(", ")
        ));
    }

    match elf::read_patch(&file) {
        Ok(Some(patch)) => {
            for e in klp_runtime::check::check(&patch) {
                problems.push(e.to_string());
            }
            if patch.funcs.is_empty() && patch.sets.is_empty() {
                problems.push("the patch declares no #[klp_func] and no #[klp_callbacks]: nothing to do".into());
            }
            if tree.config.ibt() {
                problems.extend(missing_endbr(&file, &patch));
            }
        }
        Ok(None) => problems.push(format!(
            "{}: no patch header; add `klp_runtime::patch!();` at the root of the crate",
            path.display()
        )),
        // The crate uses a klp-runtime newer than this cargo-klp. The module is consistent
        // (its init checks its tables against its own runtime), but the checks here cannot
        // read them.
        Err(elf::TablesError::Read { source: klp_runtime::reader::ReadError::TooNew { found, supported }, .. }) => {
            shell.warn(format!(
                "the crate's tables are format {found}; this cargo-klp reads up to {supported}, so the \
                 cross-item checks were skipped: update cargo-klp"
            ))
        }
        Err(e) => problems.push(format!("{}: {e}", path.display())),
    }

    if problems.is_empty() {
        Ok(())
    } else {
        bail!(
            "the kernel object is not loadable as it is:\n  - {}",
            problems.join("\n  - ")
        )
    }
}

/// Functions the kernel or the runtime call through a pointer must start with `endbr64`
/// under IBT. qemu does not enforce IBT, so this is checked here, statically.
fn missing_endbr(
    file: &object::File<'_>,
    patch: &klp_runtime::reader::Patch<'_, &str>,
) -> Vec<String> {
    let mut referenced: Vec<&str> = patch.funcs.iter().filter_map(|f| f.new_func).collect();
    referenced.extend(
        patch
            .sets
            .iter()
            .flat_map(|s| s.hooks.iter().flatten().copied()),
    );
    referenced.extend(
        patch
            .shadows
            .iter()
            .flat_map(|t| [t.ctor, t.dtor])
            .flatten(),
    );
    referenced.sort_unstable();
    referenced.dedup();
    referenced
        .into_iter()
        .filter(|name| elf::function_prefix(file, name, 4) != Some(&elf::ENDBR64[..]))
        .map(|name| {
            format!("`{name}` is called through a pointer but does not start with endbr64 (IBT)")
        })
        .collect()
}

/// Runs objtool as Kbuild would; it must have nothing to say.
fn objtool(shell: &Shell, tree: &KernelTree, object: &Path, staging: &Path) -> Result<()> {
    // When Kbuild runs objtool on the linked module (IBT kernels), it adds the ORC data
    // there; here we only check, on a copy.
    let target = if tree.config.objtool_on_link() {
        let copy = staging.join("objtool-check.o");
        std::fs::copy(object, &copy)?;
        copy
    } else {
        object.to_path_buf()
    };
    let mut cmd = Command::new(tree.dir.join("tools/objtool/objtool"));
    // Debian's 6.12 objtool is a wrapper that picks the binary by SRCARCH, as Kbuild sets it.
    cmd.env("SRCARCH", "x86")
        .args(tree.config.objtool_args())
        .arg(&target);
    let out = run(shell, &mut cmd, "objtool")?;
    if !out.trim().is_empty() {
        bail!(
            "objtool reported problems in the Rust object:\n{}",
            out.trim_end()
        );
    }
    Ok(())
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
    // Before anything is compiled: a tool missing halfway would leave a half-done build and
    // an error from deep inside Kbuild.
    tools::check(&tree.dir, &tree.config, opts.sign.is_some())?;
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
    let object = compile(shell, opts, &pkg, &target_dir, &tree, &staging)?;

    shell.status(
        "Checking",
        format!(
            "{} (objtool, relocations, symbols, tables)",
            object.display()
        ),
    );
    objtool(shell, &tree, &object, &staging)?;
    validate(shell, &object, &tree, &settings.license, &crate_name)?;

    shell.status(
        "Linking",
        format!("{}.ko (Kbuild, {})", settings.name, tree.dir.display()),
    );
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
    let mut make = Command::new("make");
    make.arg("-C")
        .arg(&tree.dir)
        .arg(format!("M={}", kb.display()))
        .arg(format!("RUST_OBJ={}", object.display()));
    make.arg(if shell.verbose { "V=1" } else { "-s" })
        .arg("modules");
    let out = run(shell, &mut make, "Kbuild (make modules)")?;
    if let Some(w) = out
        .lines()
        .find(|l| l.contains("objtool") && l.contains("warning"))
    {
        bail!("objtool warned while Kbuild linked the module:\n{w}");
    }
    let built = kb.join(format!("{}.ko", settings.name));

    if let Some((key, cert)) = &opts.sign {
        shell.status(
            "Signing",
            format!("{}.ko with {}", settings.name, cert.display()),
        );
        let mut sign = Command::new(tree.dir.join("scripts/sign-file"));
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
    })
}
