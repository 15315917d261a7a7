//! The kernel object: rustc with the kernel's flags, `core` and `alloc` rebuilt and cached.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use cargo_metadata::{Message, Package};

use crate::status::Shell;
use crate::tools;

use super::*;

/// A short stable hash (FNV-1a) of some strings: of the codegen flags, so that objects built
/// with different flags (a 6.1 and a 6.12 kernel) keep separate cargo caches instead of
/// rebuilding `core` in turn; of a crate's key, to name its object.
pub(crate) fn short_hash(flags: &[String]) -> String {
    format!("{:08x}", fnv1a(flags.join(" ").as_bytes()) as u32)
}

/// FNV-1a over `bytes`: a stable name for content, not a defence against forgery.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The per-user cache the kernel objects are compiled in ([`klp_vm::cache_dir`]). Every patch
/// crate shares it, so `core` and `alloc`, rebuilt with a kernel's flags, are rebuilt once
/// per user, not per crate.
pub fn default_cache_dir() -> Option<PathBuf> {
    klp_vm::cache_dir()
}

/// What tells this crate's object apart in the shared cache: where its manifest is, and a
/// token kept in the crate's own target dir. A crate deleted and re-created at the same
/// place (with older file times, say from an archive) gets a new token, so cargo rebuilds it
/// rather than find the old crate's object fresh.
pub fn crate_key(target_dir: &Path, manifest: &Path) -> Result<String> {
    let file = target_dir.join("klp").join("cache-token");
    let token = match std::fs::read_to_string(&file) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let token = short_hash(&[format!("{now}-{}", std::process::id())]);
            std::fs::create_dir_all(file.parent().expect("a file in a directory"))?;
            std::fs::write(&file, &token)
                .with_context(|| format!("cannot write {}", file.display()))?;
            token
        }
    };
    Ok(format!("{}#{token}", manifest.display()))
}

/// Where the kernel object of a crate is compiled for a set of codegen flags (cargo's target
/// dir, shared by every crate built with those flags), and the file rustc writes it to (one
/// per crate: its name and its [`crate_key`], since two crates may share a name).
pub fn object_cache(
    cache_root: &Path,
    flags: &[String],
    release: bool,
    package: &str,
    key: &str,
) -> (PathBuf, PathBuf) {
    let cache = cache_root.join(format!("rustc-{}", short_hash(flags)));
    let profile = if release { "klp-release" } else { "klp" };
    let place = short_hash(&[key.to_string()]);
    let emitted = cache
        .join("objects")
        .join(format!("{profile}-{}-{place}.o", package.replace('-', "_")));
    (cache, emitted)
}

/// The cargo command that compiles a patch crate into one kernel object: `core` and `alloc`
/// rebuilt with the kernel's flags, fat LTO, one codegen unit.
pub fn kernel_rustc_command(
    manifest: &Path,
    package: &str,
    release: bool,
    flags: &[String],
    cache_root: &Path,
    key: &str,
) -> Command {
    let (profile, inherits, opt) = if release {
        ("klp-release", "release", "3")
    } else {
        ("klp", "dev", "2")
    };
    let (cache, emitted) = object_cache(cache_root, flags, release, package, key);
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

/// The compiled object, and whether `core` had to be compiled for it.
pub(super) struct Compiled {
    pub object: PathBuf,
    pub core_rebuilt: bool,
}

/// Compiles the crate into one object for the kernel, at `object`.
pub(super) fn compile(
    shell: &Shell,
    opts: &BuildOptions,
    pkg: &Package,
    cache_root: &Path,
    target_dir: &Path,
    tree: &KernelTree,
    object: &Path,
) -> Result<Compiled> {
    let btf = super::target_btf(opts, tree, object.parent().unwrap_or(target_dir))?;
    if btf.is_none() {
        shell.warn(format!(
            "no BTF for Linux {}: #[klp_func] and #[klp_extern] prototypes go unchecked and \
             #[kernel_struct] cannot be laid out; build with --kernel or --btf FILE",
            tree.release
        ));
    }
    let mut flags = tree.config.rustflags();
    flags.extend(opts.extra_rustflags.iter().cloned());
    let manifest = pkg.manifest_path.as_std_path();
    let key = crate_key(target_dir, manifest)?;
    let (cache, emitted) = object_cache(cache_root, &flags, opts.release, pkg.name.as_str(), &key);
    if let Some(dir) = emitted.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the build cache {}", dir.display()))?;
    }
    let mut cmd = kernel_rustc_command(
        manifest,
        pkg.name.as_str(),
        opts.release,
        &flags,
        cache_root,
        &key,
    );
    // The macros lay out kernel structs and check prototypes by it; without it they say
    // what is missing where they need it.
    match &btf {
        Some(btf) => cmd.env(super::BTF_ENV, btf),
        None => cmd.env_remove(super::BTF_ENV),
    };
    // The modules' split BTF extracted so far for this kernel (DIR:name,name), with those the
    // source names extracted first (build's second compile catches any it missed).
    match opts.target.as_ref().filter(|_| btf.is_some()) {
        Some(kernel) => {
            let work = object.parent().unwrap_or(target_dir);
            let have = klp_vm::btf::extracted_modules(kernel, work);
            for module in source_objects(pkg) {
                if !have.contains(&module) {
                    shell.status(
                        "Reading",
                        format!(
                            "{module}'s BTF from Linux {}'s image (once)",
                            kernel.release
                        ),
                    );
                    if let Err(e) = klp_vm::btf::module_btf(kernel, &module, work) {
                        shell.warn(format!(
                            "no BTF for module {module} ({e:#}): its #[klp_func] and \
                             #[klp_extern] prototypes go unchecked and its #[kernel_struct]s \
                             cannot be laid out"
                        ));
                    }
                }
            }
            let dir = klp_vm::btf::btf_dir(kernel, work)?;
            let names = klp_vm::btf::extracted_modules(kernel, work).join(",");
            cmd.env(super::MODULES_ENV, format!("{}:{names}", dir.display()))
        }
        None => cmd.env_remove(super::MODULES_ENV),
    };
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    shell.command(&cmd);
    let mut child = cmd.spawn().context("cannot run cargo")?;
    // Cargo's own progress goes through; its per-crate warning counts do not, since they
    // would count the expected warnings hidden below.
    let stderr = child.stderr.take().expect("piped");
    let progress = shell.progress("Building");
    progress.set(format!("{} for the kernel", pkg.name));
    let lines = progress.clone();
    let forwarder = std::thread::spawn(move || {
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
                lines.println(&line);
            }
        }
    });
    let reader = std::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut core_rebuilt = false;
    for msg in Message::parse_stream(reader) {
        if let Ok(Message::CompilerArtifact(a)) = &msg {
            core_rebuilt |= a.target.name == "core" && !a.fresh;
            if core_rebuilt {
                progress.set(format!(
                    "core and alloc with this kernel's flags, once per kernel config \
                     (compiled {})",
                    a.target.name
                ));
            }
        }
        if let Ok(Message::CompilerMessage(m)) = msg {
            // The same warning, when it comes as a diagnostic.
            if m.message.message.contains("unknown and unstable feature")
                && m.message.message.contains("harden-sls")
            {
                continue;
            }
            if let Some(r) = m.message.rendered {
                progress.println(r.trim_end_matches('\n'));
            }
        }
    }
    let status = child.wait()?;
    let _ = forwarder.join();
    drop(progress);
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
    std::fs::copy(&emitted, object)?;
    Ok(Compiled {
        object: object.to_path_buf(),
        core_rebuilt,
    })
}

/// The rustc cargo will run for the patch crate (its directory may pin a toolchain) must be
/// the release the kernel build is proven on, unless the user says otherwise.
pub(super) fn check_rustc(shell: &Shell, pkg: &Package) -> Result<()> {
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

pub(super) fn rust_src_installed() -> bool {
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

/// The modules the crate's source names as objects (`object = "name"` in its attributes),
/// read from the library's source directory. A quick look, not a parse: the build checks
/// the tables afterwards and compiles again for any module it missed.
fn source_objects(pkg: &Package) -> Vec<String> {
    let Some(root) = pkg
        .targets
        .iter()
        .find(|t| t.kind.iter().any(|k| k.to_string() == "lib"))
        .and_then(|t| t.src_path.parent().map(|p| p.as_std_path().to_path_buf()))
    else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            // Not through symbolic links (a cycle), nor into build output.
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() && entry.file_name() != "target" {
                dirs.push(path);
            } else if kind.is_file() && path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                found.extend(named_objects(&text));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// The `"name"` of each `object = "name"` in `text` outside `//` comments, but vmlinux.
fn named_objects(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|l| l.split_once("//").map_or(l, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n");
    let text = code.as_str();
    text.match_indices("object")
        .filter_map(|(at, word)| {
            let rest = text[at + word.len()..].trim_start().strip_prefix('=')?;
            let rest = rest.trim_start().strip_prefix('"')?;
            let name = &rest[..rest.find('"')?];
            let plain =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            (plain && name != klp_runtime::abi::VMLINUX).then(|| name.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn module_objects_are_read_off_the_attributes() {
        let src = r#"#[klp_func(name = "bm_status_read", object = "binfmt_misc")]
            #[klp_extern(object="ext4", sympos = 2)] #[klp_callbacks(id = 1, object = "vmlinux")]
            let object = 3; // object = "not-a-module""#;
        assert_eq!(super::named_objects(src), ["binfmt_misc", "ext4"]);
    }
}
