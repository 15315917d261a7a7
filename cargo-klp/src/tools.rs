//! What a module build runs besides cargo: the programs Kbuild's module path calls for this
//! kernel tree and the shared libraries of the tree's own host tools, each with the Debian
//! package that provides it and the reason it is needed. `cargo klp build` checks them before
//! it starts; `cargo xtask setup` installs the packages of the missing ones. Pure derivation
//! from the tree ([`required`]) and a thin check against PATH and the library directories.

use std::ffi::OsStr;
use std::fmt;
use std::path::Path;

use klp_vm::toolchain::Toolchain;

use crate::kconfig::KernelConfig;

/// One thing the build needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// A program looked up in PATH.
    Program {
        name: String,
        package: String,
        why: String,
    },
    /// A shared library (`DT_NEEDED`) of one of the tree's host programs.
    Library {
        soname: String,
        package: String,
        /// The program that needs it, relative to the tree.
        user: String,
    },
}

impl Need {
    pub fn package(&self) -> &str {
        match self {
            Need::Program { package, .. } | Need::Library { package, .. } => package,
        }
    }
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Need::Program { name, package, why } => {
                write!(f, "{name} not found: {why}; apt-get install {package}")
            }
            Need::Library {
                soname,
                package,
                user,
            } => write!(
                f,
                "{soname} not found: the kernel tree's {user} needs it; apt-get install {package}"
            ),
        }
    }
}

/// The Debian package of a program or library name; `None` when we do not know it.
fn program_package(name: &str) -> String {
    // `x86_64-linux-gnu-gcc-12` is in `gcc-12`, as `gcc-12` itself is.
    let base = name.strip_prefix("x86_64-linux-gnu-").unwrap_or(name);
    if let Some(v) = base.strip_prefix("gcc-") {
        return format!("gcc-{v}");
    }
    if base == "gcc" || base == "cc" {
        return "gcc".into();
    }
    if let Some(v) = base.strip_prefix("clang-") {
        return format!("clang-{v}");
    }
    match base {
        "ld" | "objcopy" if name.starts_with("x86_64-linux-gnu-") => {
            "binutils-x86-64-linux-gnu".into()
        }
        "ld" | "objcopy" | "objdump" | "readelf" => "binutils".into(),
        "pahole" => "dwarves".into(),
        "make" => "make".into(),
        other => other.into(),
    }
}

fn library_package(soname: &str) -> String {
    match soname {
        "libelf.so.1" => "libelf1",
        "libcrypto.so.3" | "libssl.so.3" => "libssl3",
        "libz.so.1" => "zlib1g",
        "libzstd.so.1" => "libzstd1",
        "libc.so.6" | "libm.so.6" | "libpthread.so.0" | "libdl.so.2" => "libc6",
        // Unknown: `apt-file search` names it; say the soname so the user can.
        other => return format!("(the package holding {other})"),
    }
    .into()
}

/// The compiler the kernel was built with, as Kbuild will run it: the first word of
/// `CONFIG_CC_VERSION_TEXT` (Debian's headers set `CC` to the same name in
/// `.kernelvariables`).
pub fn kernel_compiler(config: &KernelConfig) -> Option<&str> {
    config.get("CC_VERSION_TEXT")?.split_whitespace().next()
}

/// Everything a build for the tree at `kdir` with `config` runs (with `sign`: the signing
/// tool too), in the order a user would install them.
pub fn required(kdir: &Path, config: &KernelConfig, sign: bool) -> Vec<Need> {
    let program = |name: &str, why: String| Need::Program {
        name: name.into(),
        package: program_package(name),
        why,
    };
    let mut needs = vec![program("make", "Kbuild links the module".into())];
    let cc = kernel_compiler(config).unwrap_or("gcc");
    let why_cc = match config.get("CC_VERSION_TEXT") {
        Some(text) => format!(
            "the kernel was built with it (CONFIG_CC_VERSION_TEXT=\"{text}\") and Kbuild compiles the C init with it"
        ),
        None => "Kbuild compiles the C init with it".into(),
    };
    needs.push(program(cc, why_cc));
    // Kbuild's LD and OBJCOPY carry the same CROSS_COMPILE prefix as CC.
    let prefix = if cc.starts_with("x86_64-linux-gnu-") {
        "x86_64-linux-gnu-"
    } else {
        ""
    };
    needs.push(program(
        &format!("{prefix}ld"),
        "Kbuild links the module with it".into(),
    ));
    // Kbuild adds BTF to a module only when the tree ships vmlinux as the base (6.12's
    // headers do, 6.1's do not: scripts/Makefile.modfinal skips it then).
    let btf = config.enabled("DEBUG_INFO_BTF_MODULES") && kdir.join("vmlinux").exists();
    if btf {
        needs.push(program(
            "pahole",
            "CONFIG_DEBUG_INFO_BTF_MODULES=y needs it (Kbuild adds BTF to every module)".into(),
        ));
    }
    let mut tools = vec![
        "scripts/basic/fixdep",
        "scripts/mod/modpost",
        "tools/objtool/objtool",
    ];
    if btf {
        tools.push("tools/bpf/resolve_btfids/resolve_btfids");
    }
    if sign {
        tools.push("scripts/sign-file");
    }
    for tool in tools {
        for soname in needed_libraries(&kdir.join(tool)) {
            let need = Need::Library {
                package: library_package(&soname),
                soname,
                user: tool.into(),
            };
            if !needs.contains(&need) {
                needs.push(need);
            }
        }
    }
    needs
}

/// `DT_NEEDED` entries of an ELF executable; none if it is absent or unreadable (the tree
/// check reports a missing tool itself).
fn needed_libraries(path: &Path) -> Vec<String> {
    use object::read::elf::{Dyn, FileHeader, SectionHeader};
    use object::{elf, Endianness};
    let Ok(data) = std::fs::read(path) else {
        return Vec::new();
    };
    let Ok(header) = elf::FileHeader64::<Endianness>::parse(&*data) else {
        return Vec::new();
    };
    let Ok(endian) = header.endian() else {
        return Vec::new();
    };
    let Ok(sections) = header.sections(endian, &*data) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for section in sections.iter() {
        let Ok(Some((entries, strings_index))) = section.dynamic(endian, &*data) else {
            continue;
        };
        let Ok(strings) = sections.strings(endian, &*data, strings_index) else {
            continue;
        };
        for d in entries {
            if d.tag32(endian) == Some(elf::DT_NEEDED) {
                if let Ok(name) = d.string(endian, strings) {
                    out.push(String::from_utf8_lossy(name).into_owned());
                }
            }
        }
    }
    out
}

/// Where the dynamic loader looks on Debian x86_64.
const LIBRARY_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

fn in_path(name: &str, path: &OsStr, toolchain: &Toolchain) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path).any(|dir| {
        std::fs::metadata(toolchain.seen_as(&dir).join(name))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// The needs that `toolchain` does not meet, looking programs up in `path` (the value of
/// `PATH`).
pub fn missing(needs: &[Need], path: &OsStr, toolchain: &Toolchain) -> Vec<Need> {
    needs
        .iter()
        .filter(|n| match n {
            Need::Program { name, .. } => !in_path(name, path, toolchain),
            Need::Library { soname, .. } => !LIBRARY_DIRS
                .iter()
                .any(|d| toolchain.seen_as(Path::new(d)).join(soname).exists()),
        })
        .cloned()
        .collect()
}

/// The error `cargo klp` stops with: every missing tool on a line of its own.
#[derive(Debug, thiserror::Error)]
#[error("{} cargo klp needs {} missing on this machine:\n  {}\n(install them, or all at once: apt-get install {})",
    if .0.len() == 1 { "a tool" } else { "tools" },
    if .0.len() == 1 { "is" } else { "are" },
    .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "),
    packages(.0).join(" "))]
pub struct MissingTools(pub Vec<Need>);

/// The distinct packages of `needs`, in order.
pub fn packages(needs: &[Need]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in needs {
        if !out.iter().any(|p| p == n.package()) {
            out.push(n.package().to_string());
        }
    }
    out
}

/// Checks the tree's needs against its toolchain (`PATH` from the environment).
pub fn check(
    kdir: &Path,
    config: &KernelConfig,
    sign: bool,
    toolchain: &Toolchain,
) -> Result<(), MissingTools> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing = missing(&required(kdir, config, sign), &path, toolchain);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MissingTools(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> KernelConfig {
        KernelConfig::parse(text)
    }

    #[test]
    fn the_compiler_and_its_package_come_from_the_config() {
        let c = config(
            r#"CONFIG_CC_VERSION_TEXT="x86_64-linux-gnu-gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0""#,
        );
        assert_eq!(kernel_compiler(&c), Some("x86_64-linux-gnu-gcc-12"));
        let needs = required(Path::new("/nonexistent"), &c, false);
        let names: Vec<String> = needs
            .iter()
            .map(|n| match n {
                Need::Program { name, package, .. } => format!("{name}={package}"),
                Need::Library { soname, .. } => soname.clone(),
            })
            .collect();
        assert_eq!(
            names,
            [
                "make=make",
                "x86_64-linux-gnu-gcc-12=gcc-12",
                "x86_64-linux-gnu-ld=binutils-x86-64-linux-gnu"
            ]
        );
        let c = config(r#"CONFIG_CC_VERSION_TEXT="gcc-14 (Debian 14.2.0-19) 14.2.0""#);
        assert_eq!(program_package(kernel_compiler(&c).unwrap()), "gcc-14");
    }

    #[test]
    fn pahole_is_needed_only_where_kbuild_runs_it() {
        let dir = std::env::temp_dir().join(format!("klp-tools-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = config("CONFIG_DEBUG_INFO_BTF_MODULES=y\n");
        let has_pahole = |d: &Path| {
            required(d, &c, false)
                .iter()
                .any(|n| matches!(n, Need::Program { name, .. } if name == "pahole"))
        };
        // No vmlinux in the tree: scripts/Makefile.modfinal skips BTF.
        assert!(!has_pahole(&dir));
        std::fs::write(dir.join("vmlinux"), b"").unwrap();
        assert!(has_pahole(&dir));
        let msg = MissingTools(missing(
            &required(&dir, &c, false),
            OsStr::new(""),
            &Toolchain::Host,
        ))
        .to_string();
        assert!(msg.contains(
            "pahole not found: CONFIG_DEBUG_INFO_BTF_MODULES=y needs it (Kbuild adds BTF to every module); apt-get install dwarves"
        ), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn known_libraries_name_their_package() {
        assert_eq!(library_package("libelf.so.1"), "libelf1");
        assert_eq!(library_package("libcrypto.so.3"), "libssl3");
        assert_eq!(
            library_package("libfoo.so.9"),
            "(the package holding libfoo.so.9)"
        );
    }
}

/// The rustc release the kernel build is proven on (the workspace's `rust-version`, which CI
/// runs): the build passes unstable flags through `RUSTC_BOOTSTRAP=1`, as the kernel does for
/// its own Rust, and another release may accept them with another meaning, or silently.
pub const VERIFIED_RUSTC: (u32, u32) = (1, 95);

/// The environment variable that lets a build go on with another rustc, with a warning.
pub const UNVERIFIED_RUSTC_ENV: &str = "KLP_UNVERIFIED_RUSTC";

/// `release: 1.95.0` of `rustc -vV`, as (major, minor, patch).
pub fn rustc_release(version_verbose: &str) -> Option<(u32, u32, u32)> {
    let release = version_verbose
        .lines()
        .find_map(|l| l.strip_prefix("release: "))?;
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().ok());
    Some((nums.next()??, nums.next()??, nums.next()??))
}

#[derive(Debug, thiserror::Error)]
#[error(
    "rustc {}.{}.{} is not the release klp-rs's kernel build is proven on ({}.{}): the build \
     passes unstable rustc flags (retpolines, return thunks, CET, build-std) through \
     RUSTC_BOOTSTRAP=1, and another release may read them differently or ignore them. \
     Install the proven one (`rustup toolchain install {}.{}`, then `rustup override set {}.{}` \
     in the patch crate), or set {}=1 to build anyway",
    .0.0, .0.1, .0.2, VERIFIED_RUSTC.0, VERIFIED_RUSTC.1, VERIFIED_RUSTC.0, VERIFIED_RUSTC.1,
    VERIFIED_RUSTC.0, VERIFIED_RUSTC.1, UNVERIFIED_RUSTC_ENV
)]
pub struct UnverifiedRustc(pub (u32, u32, u32));

/// Whether `release` is the proven rustc: `Ok` if so; otherwise the error, which the caller
/// turns into a warning when the user allowed it.
pub fn check_rustc(release: (u32, u32, u32)) -> Result<(), UnverifiedRustc> {
    if (release.0, release.1) == VERIFIED_RUSTC {
        Ok(())
    } else {
        Err(UnverifiedRustc(release))
    }
}

#[cfg(test)]
mod rustc_tests {
    use super::*;

    #[test]
    fn only_the_proven_release_passes() {
        let out = "rustc 1.95.0 (59807616e 2026-04-14)\nbinary: rustc\nrelease: 1.95.0\nLLVM version: 20.1.8\n";
        assert_eq!(rustc_release(out), Some((1, 95, 0)));
        assert!(check_rustc((1, 95, 3)).is_ok());
        let e = check_rustc((1, 96, 0)).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "rustc 1.96.0 is not the release klp-rs's kernel build is proven on (1.95)"
            ),
            "{e}"
        );
        assert!(e.contains("KLP_UNVERIFIED_RUSTC=1"), "{e}");
        assert_eq!(rustc_release("release: 1.97.0-nightly\n"), Some((1, 97, 0)));
    }
}

/// Checks the programs a [`klp_vm`] step runs (fetching a kernel, booting one), each missing
/// one named with its Debian package.
pub fn check_vm(tools: &[klp_vm::Tool]) -> Result<(), MissingTools> {
    let needs: Vec<Need> = tools
        .iter()
        .map(|t| Need::Program {
            name: t.program.into(),
            package: t.package.into(),
            why: t.why.into(),
        })
        .collect();
    let missing = missing(
        &needs,
        &std::env::var_os("PATH").unwrap_or_default(),
        &Toolchain::Host,
    );
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MissingTools(missing))
    }
}
