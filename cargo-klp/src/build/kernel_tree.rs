//! The kernel tree a module is built against: its headers, `.config` and `Module.symvers`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use klp_vm::toolchain::Toolchain;

use crate::kconfig::KernelConfig;

/// The kernel build tree: `KDIR` with its `.config`, `Module.symvers` and objtool.
pub struct KernelTree {
    pub dir: PathBuf,
    pub config: KernelConfig,
    pub release: String,
    /// Where Kbuild and the tree's tools run: this machine, or a root of the Debian release
    /// that built the kernel ([`klp_vm::toolchain`]).
    pub toolchain: Toolchain,
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
        let release = klp_vm::kernels::tree_release(&dir);
        let cache = klp_vm::cache_dir().unwrap_or_else(|| std::env::temp_dir().join("klp-rs"));
        let toolchain = Toolchain::for_compiler(config.get("CC_VERSION_TEXT"), &cache);
        Ok(KernelTree {
            dir,
            config,
            release,
            toolchain,
        })
    }

    /// Makes the toolchain ready (a root bootstrapped if missing) and checks that it has
    /// everything the build runs and can see the paths it builds in.
    pub fn prepare_toolchain(
        &self,
        progress: &dyn Fn(&str),
        target_dir: &Path,
        sign: bool,
    ) -> Result<()> {
        self.toolchain.ensure(progress)?;
        let Toolchain::Root { debian, dir } = &self.toolchain else {
            return Ok(crate::tools::check(
                &self.dir,
                &self.config,
                sign,
                &self.toolchain,
            )?);
        };
        // In the root's mount namespace its /usr replaces this machine's: a path there is
        // another file, or none.
        for (what, path) in [
            ("kernel tree", self.dir.as_path()),
            ("target directory", target_dir),
        ] {
            let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
            if path.starts_with("/usr") {
                bail!(
                    "the {what} {} is under /usr, which Kbuild for Debian {}'s kernel sees \
                     replaced by the root at {}: move it elsewhere (a target directory: \
                     CARGO_TARGET_DIR)",
                    path.display(),
                    debian.number(),
                    dir.display()
                );
            }
        }
        crate::tools::check(&self.dir, &self.config, sign, &self.toolchain).with_context(|| {
            format!(
                "the Debian {} root at {} lacks what the build runs: install it there (chroot \
                 {} apt-get install ...), or remove the root to bootstrap it again",
                debian.number(),
                dir.display(),
                dir.display()
            )
        })
    }

    /// A header of the kernel's source: in the tree itself, or (Debian's headers) in the
    /// common tree its Makefile includes.
    fn source_file(&self, rel: &str) -> Option<String> {
        if let Ok(text) = std::fs::read_to_string(self.dir.join(rel)) {
            return Some(text);
        }
        let makefile = std::fs::read_to_string(self.dir.join("Makefile")).ok()?;
        let included = makefile.lines().find_map(|l| l.strip_prefix("include "))?;
        let here = "$(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)";
        let parent = self.dir.parent()?.to_str()?;
        let common = Path::new(&included.trim().replace(here, parent))
            .parent()?
            .to_path_buf();
        std::fs::read_to_string(common.join(rel)).ok()
    }

    /// Whether the livepatch core runs callback sets itself: the series in the repository's
    /// `kernel/` adds `struct klp_callback_set` to include/linux/livepatch.h. Such a kernel
    /// gets modules that hand their sets to it instead of dispatching them.
    pub fn has_callback_sets(&self) -> bool {
        self.source_file("include/linux/livepatch.h")
            .is_some_and(|h| h.contains("struct klp_callback_set {"))
    }

    /// Whether the livepatch core clears a module object's livepatch relocations when that
    /// module goes (`klp_clear_object_relocs` with `clear_relocate_add`; 6.12 has it, 6.1 not). Without
    /// it, x86's `apply_relocate_add` finds them still written when the module comes again
    /// and refuses it. `None` when the headers do not say.
    pub(super) fn clears_module_relocations(&self) -> Option<bool> {
        self.source_file("include/linux/moduleloader.h")
            .map(|h| h.contains("clear_relocate_add"))
    }

    /// The longest kernel symbol name the livepatch core takes, `KSYM_NAME_LEN - 1` from
    /// include/linux/kallsyms.h (127 on 5.10, 511 from 5.19): `klp_init_func` refuses a longer
    /// function name and `klp_resolve_symbols` reads no more of a livepatch symbol's.
    pub(super) fn max_symbol_name(&self) -> Option<usize> {
        let h = self.source_file("include/linux/kallsyms.h")?;
        h.lines()
            .find_map(|l| l.trim().strip_prefix("#define KSYM_NAME_LEN"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .and_then(|n| n.checked_sub(1))
    }

    /// Exported symbols: name -> (module, export type).
    pub(super) fn exports(&self) -> Result<HashMap<String, (String, String)>> {
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
