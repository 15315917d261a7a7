//! The target kernel's `.config`, and what it implies for compiling and checking Rust code
//! the way the kernel's own Makefiles do for C and Rust (arch/x86/Makefile,
//! scripts/Makefile.lib). Pure functions over the parsed config.

use std::collections::BTreeMap;

/// `CONFIG_*` options set to a value (`# ... is not set` lines are absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelConfig {
    options: BTreeMap<String, String>,
}

impl KernelConfig {
    pub fn parse(text: &str) -> KernelConfig {
        let options = text
            .lines()
            .filter_map(|l| l.strip_prefix("CONFIG_"))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        KernelConfig { options }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.options.get(name).map(String::as_str)
    }

    /// `=y` (built in).
    pub fn enabled(&self, name: &str) -> bool {
        self.get(name) == Some("y")
    }

    /// Any of the spellings an option has had across kernel versions
    /// (6.1 `RETPOLINE`, 6.9+ `MITIGATION_RETPOLINE`).
    fn any(&self, names: &[&str]) -> bool {
        names.iter().any(|n| self.enabled(n))
    }

    fn retpoline(&self) -> bool {
        self.any(&["RETPOLINE", "MITIGATION_RETPOLINE"])
    }

    fn rethunk(&self) -> bool {
        self.any(&["RETHUNK", "MITIGATION_RETHUNK"])
    }

    fn sls(&self) -> bool {
        self.any(&["SLS", "MITIGATION_SLS"])
    }

    pub fn ibt(&self) -> bool {
        self.enabled("X86_KERNEL_IBT")
    }

    /// Kbuild runs objtool on the linked module object rather than on each object
    /// (`delay-objtool`): then it also covers ours, and we must not add ORC data twice.
    pub fn objtool_on_link(&self) -> bool {
        self.enabled("LTO_CLANG") || self.ibt()
    }

    /// rustc flags for code that runs in this kernel, beyond what the `x86_64-unknown-none`
    /// target already implies (kernel code model, no red zone, soft float).
    pub fn rustflags(&self) -> Vec<String> {
        let mut f: Vec<String> = [
            "-Crelocation-model=static",
            "-Ccode-model=kernel",
            "-Cno-redzone=yes",
            "-Cpanic=abort",
            // No GOT-indirect libcalls: the module loader has no GOT.
            "-Crelro-level=off",
            "-Cforce-unwind-tables=no",
        ]
        .map(String::from)
        .to_vec();
        if self.retpoline() || self.ibt() {
            // Jump tables are indirect jumps: retpolined, or NOTRACK-prefixed under IBT.
            f.push("-Cjump-tables=no".into());
        }
        if self.retpoline() {
            f.push("-Zretpoline-external-thunk".into());
        }
        if self.rethunk() {
            f.push("-Zfunction-return=thunk-extern".into());
        }
        if self.sls() {
            f.push("-Ctarget-feature=+harden-sls-ret,+harden-sls-ijmp".into());
        }
        if self.ibt() {
            // Functions the kernel calls through a pointer need `endbr64`.
            f.push("-Zcf-protection=branch".into());
        }
        if self.enabled("CALL_PADDING") {
            if let Some(n) = self.get("FUNCTION_PADDING_BYTES") {
                f.push(format!("-Zpatchable-function-entry={n},{n}"));
            }
        }
        f
    }

    /// objtool's arguments for one object of a module, as scripts/Makefile.lib builds them.
    pub fn objtool_args(&self) -> Vec<String> {
        if !self.enabled("OBJTOOL") && self.enabled("STACK_VALIDATION") {
            return self.objtool_args_before_5_19();
        }
        let mut a = Vec::new();
        let mut flag = |on: bool, arg: &str| {
            if on {
                a.push(arg.to_string());
            }
        };
        flag(self.enabled("HAVE_JUMP_LABEL_HACK"), "--hacks=jump_label");
        flag(self.enabled("HAVE_NOINSTR_HACK"), "--hacks=noinstr");
        flag(
            self.enabled("MITIGATION_CALL_DEPTH_TRACKING"),
            "--hacks=skylake",
        );
        flag(self.ibt(), "--ibt");
        flag(self.enabled("FINEIBT"), "--cfi");
        flag(self.enabled("FTRACE_MCOUNT_USE_OBJTOOL"), "--mcount");
        flag(
            self.enabled("FTRACE_MCOUNT_USE_OBJTOOL") && self.enabled("HAVE_OBJTOOL_NOP_MCOUNT"),
            "--mnop",
        );
        flag(self.enabled("UNWINDER_ORC"), "--orc");
        flag(self.retpoline(), "--retpoline");
        flag(self.rethunk(), "--rethunk");
        flag(self.sls(), "--sls");
        flag(self.enabled("STACK_VALIDATION"), "--stackval");
        flag(self.enabled("HAVE_STATIC_CALL_INLINE"), "--static-call");
        flag(self.enabled("HAVE_UACCESS_VALIDATION"), "--uaccess");
        flag(
            self.enabled("GCOV_KERNEL") || self.enabled("KCOV"),
            "--no-unreachable",
        );
        if self.enabled("PREFIX_SYMBOLS") {
            if let Some(n) = self.get("FUNCTION_PADDING_BYTES") {
                a.push(format!("--prefix={n}"));
            }
        }
        if self.objtool_on_link() {
            a.push("--link".into());
        }
        a.push("--module".into());
        a
    }

    /// objtool before 5.19 (`CONFIG_STACK_VALIDATION` without `CONFIG_OBJTOOL`) takes a
    /// subcommand and fewer options: as 5.10's scripts/Makefile.build gives them.
    fn objtool_args_before_5_19(&self) -> Vec<String> {
        let mut a: Vec<String> = if self.enabled("UNWINDER_ORC") {
            vec!["orc".into(), "generate".into()]
        } else {
            vec!["check".into()]
        };
        a.push("--module".into());
        let mut flag = |on: bool, arg: &str| {
            if on {
                a.push(arg.to_string());
            }
        };
        flag(!self.enabled("FRAME_POINTER"), "--no-fp");
        flag(self.enabled("GCOV_KERNEL"), "--no-unreachable");
        flag(self.retpoline(), "--retpoline");
        flag(self.rethunk(), "--rethunk");
        flag(self.enabled("X86_SMAP"), "--uaccess");
        flag(self.sls(), "--sls");
        a
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn objtool_before_5_19_gets_its_subcommand_and_options() {
        let c = super::KernelConfig::parse(
            "CONFIG_STACK_VALIDATION=y\nCONFIG_UNWINDER_ORC=y\nCONFIG_RETPOLINE=y\n\
             CONFIG_RETHUNK=y\nCONFIG_X86_SMAP=y\n",
        );
        assert_eq!(
            c.objtool_args(),
            [
                "orc",
                "generate",
                "--module",
                "--no-fp",
                "--retpoline",
                "--rethunk",
                "--uaccess"
            ]
        );
    }

    use super::*;

    // Excerpts of Debian's 6.1 and 6.12 amd64 configs.
    const DEBIAN_6_1: &str = "CONFIG_RETPOLINE=y\nCONFIG_RETHUNK=y\nCONFIG_SLS=y\nCONFIG_UNWINDER_ORC=y\n\
        CONFIG_HAVE_JUMP_LABEL_HACK=y\nCONFIG_HAVE_NOINSTR_HACK=y\nCONFIG_HAVE_STATIC_CALL_INLINE=y\n\
        CONFIG_HAVE_UACCESS_VALIDATION=y\n# CONFIG_X86_KERNEL_IBT is not set\nCONFIG_LOCALVERSION=\"\"\n";
    const DEBIAN_6_12: &str = "CONFIG_MITIGATION_RETPOLINE=y\nCONFIG_MITIGATION_RETHUNK=y\n\
        CONFIG_MITIGATION_SLS=y\nCONFIG_X86_KERNEL_IBT=y\nCONFIG_CALL_PADDING=y\nCONFIG_PREFIX_SYMBOLS=y\n\
        CONFIG_FUNCTION_PADDING_BYTES=16\nCONFIG_MITIGATION_CALL_DEPTH_TRACKING=y\nCONFIG_UNWINDER_ORC=y\n\
        CONFIG_HAVE_JUMP_LABEL_HACK=y\nCONFIG_HAVE_NOINSTR_HACK=y\nCONFIG_HAVE_STATIC_CALL_INLINE=y\n\
        CONFIG_HAVE_UACCESS_VALIDATION=y\nCONFIG_HAVE_OBJTOOL_NOP_MCOUNT=y\n";

    #[test]
    fn debian_6_1_gets_retpoline_rethunk_sls_but_no_ibt() {
        let c = KernelConfig::parse(DEBIAN_6_1);
        let f = c.rustflags();
        for want in [
            "-Zretpoline-external-thunk",
            "-Zfunction-return=thunk-extern",
            "-Cjump-tables=no",
        ] {
            assert!(f.contains(&want.to_string()), "{want} missing from {f:?}");
        }
        assert!(f.contains(&"-Ctarget-feature=+harden-sls-ret,+harden-sls-ijmp".to_string()));
        assert!(!f.iter().any(|x| x.contains("cf-protection")));
        assert!(!c.objtool_on_link());
        assert_eq!(
            c.objtool_args(),
            [
                "--hacks=jump_label",
                "--hacks=noinstr",
                "--orc",
                "--retpoline",
                "--rethunk",
                "--sls",
                "--static-call",
                "--uaccess",
                "--module"
            ]
        );
    }

    #[test]
    fn debian_6_12_adds_ibt_padding_and_delayed_objtool() {
        let c = KernelConfig::parse(DEBIAN_6_12);
        let f = c.rustflags();
        assert!(f.contains(&"-Zcf-protection=branch".to_string()));
        assert!(f.contains(&"-Zpatchable-function-entry=16,16".to_string()));
        assert!(c.objtool_on_link());
        let a = c.objtool_args();
        for want in [
            "--ibt",
            "--hacks=skylake",
            "--prefix=16",
            "--retpoline",
            "--rethunk",
            "--sls",
            "--orc",
            "--link",
        ] {
            assert!(a.contains(&want.to_string()), "{want} missing from {a:?}");
        }
        assert!(
            !a.contains(&"--mnop".to_string()),
            "--mnop only goes with --mcount"
        );
    }

    #[test]
    fn quoted_values_and_unset_options() {
        let c = KernelConfig::parse(DEBIAN_6_1);
        assert_eq!(c.get("LOCALVERSION"), Some(""));
        assert_eq!(c.get("X86_KERNEL_IBT"), None);
    }
}
