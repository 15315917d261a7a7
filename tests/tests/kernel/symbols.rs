//! Kernel symbols the kernel does not export, reached through livepatch relocations
//! (`cargo_klp::klp_rela`): resolved by the livepatch core in a real kernel, or refused by
//! the build before anything is linked.

use klp_harness::Series;

use super::{boot, build, kernel, refused_build, Target};

/// kpatch's `cmdline-string`: the patched `/proc/cmdline` reads the kernel's own
/// `saved_command_line`, which no kernel exports. Expected: the line the kernel was booted
/// with (the harness's command line), then the suffix the example's source adds.
pub fn cmdline_string_reads_a_symbol_the_kernel_does_not_export(target: Target) {
    let k = kernel(target);
    let ko = build("cmdline-string", &k);
    let report = cargo_klp::inspect::inspect(&ko).unwrap();
    let relocations: Vec<_> = report
        .klp_relocations
        .iter()
        .map(|r| {
            (
                r.applied_with.as_str(),
                r.object.as_deref(),
                r.symbol.as_str(),
                r.sympos,
                r.function
                    .as_deref()
                    .and_then(|f| f.split_once('+'))
                    .map(|f| f.0),
            )
        })
        .collect();
    assert_eq!(
        relocations,
        [(
            "vmlinux",
            Some("vmlinux"),
            "saved_command_line",
            Some(0),
            Some("cmdline_string::cmdline_proc_show")
        )],
        "one read of the symbol, in the one function"
    );
    let log = boot(
        &k,
        &[&ko],
        "section before; cat /proc/cmdline\n\
         section load; load klp_cmdline_string\n\
         section patched; cat /proc/cmdline; lpstate\n\
         section disable; disable klp_cmdline_string\n\
         section disabled; cat /proc/cmdline\n\
         section rmmod; rmmod klp_cmdline_string; echo \"rmmod rc=$?\"\n",
    );
    let original = "console=ttyS0 panic=-1 oops=panic quiet";
    assert_eq!(log.section("before"), [original]);
    assert_eq!(log.section("load"), ["insmod klp_cmdline_string rc=0"]);
    assert_eq!(
        log.section("patched"),
        [
            format!("{original} klp_rs=1").as_str(),
            "patch klp_cmdline_string enabled=1 transition=0"
        ]
    );
    assert_eq!(log.section("disable"), ["disable klp_cmdline_string rc=0"]);
    assert_eq!(log.section("disabled"), [original]);
    assert_eq!(log.section("rmmod"), ["rmmod rc=0"]);
}

/// Expected from `klp_find_object_symbol`'s rule (every kallsyms entry of the name in the
/// object counts; `sympos = 0` needs exactly one) and the kernels' sources: no kernel has
/// `klp_rs_no_such_symbol` or binfmt_misc's `bm_no_such_symbol`, and `c_start` is static in
/// three files of both kernels (arch/x86/kernel/cpu/proc.c, fs/proc/consoles.c,
/// crypto/proc.c: seq_file `start` functions); under IBT (the kernel's .config) the address
/// of a static function may not be taken.
pub fn kernel_symbols_the_kernel_cannot_resolve_are_refused_before_linking(target: Target) {
    let k = kernel(target);
    let (msg, left) = refused_build(&k, "badsyms");
    let r = &k.release;
    for want in [
        format!("`klp_rs_no_such_symbol` of vmlinux (used by the patch, not exported): {r} has no symbol of this name in vmlinux"),
        format!("`bm_no_such_symbol` of binfmt_misc (used by the patch, not exported): {r} has no symbol of this name in binfmt_misc"),
        format!("`c_start` of vmlinux (used by the patch, not exported): {r} has 3 symbols of this name and the kernel refuses an ambiguous one; say which in kallsyms order with `#[klp_extern(sympos = N)]`"),
        "Candidates: sympos = 1 (function, kallsyms type `t`), sympos = 2 (function, kallsyms type `t`), sympos = 3 (function, kallsyms type `t`)".to_string(),
        format!("`c_start` of vmlinux (used by the patch, not exported): sympos = 9 but {r} has only 3 symbol(s) of this name"),
    ] {
        assert!(msg.contains(&want), "`{want}` not in:\n{msg}");
    }
    // The kernel's config says whether it seals the endbr64 of functions whose address it
    // never takes (CONFIG_X86_KERNEL_IBT).
    let ibt = super::config_has(&k, "X86_KERNEL_IBT");
    let taken = format!(
        "`c_start` of vmlinux (used by the patch, not exported): the patch takes the address of \
         this function (it does more than call it), and {r} enforces IBT"
    );
    assert_eq!(msg.contains(&taken), ibt, "IBT: {ibt}\n{msg}");
    assert_eq!(msg.matches("\n  - ").count(), 4 + usize::from(ibt), "{msg}");
    assert!(!left, "a refused build must leave no module behind");
}

/// A static vmlinux function whose name three files share, picked by `sympos = 1`: cpuinfo's
/// `c_start` (arch/x86/kernel/cpu/proc.c, linked before fs/proc/consoles.c and crypto/proc.c).
/// Expected from its source: position 0 is the first online CPU's data, and with one CPU
/// (the harness boots one) position 1 is past the last, NULL.
pub fn a_static_function_with_an_ambiguous_name_is_called_by_sympos(target: Target) {
    let k = kernel(target);
    let ko = build("statics", &k);
    let log = boot(
        &k,
        &[&ko],
        "section load; load klp_statics\n\
         section patched; cat /proc/version\n",
    );
    assert_eq!(log.section("load"), ["insmod klp_statics rc=0"]);
    // inspect --btf shows the kernel's prototypes of what it replaces and calls.
    let btf = klp_harness::btf::vmlinux_btf(&k, &klp_harness::target_dir()).unwrap();
    let mut report = cargo_klp::inspect::inspect(&ko).unwrap();
    cargo_klp::inspect::add_prototypes(&mut report, &klp_btf::load(&btf, None).unwrap());
    assert_eq!(
        report.kernel_prototypes.get("c_start").map(String::as_str),
        Some("void *c_start(struct seq_file *m, loff_t *pos)")
    );
    assert_eq!(
        report
            .kernel_prototypes
            .get("version_proc_show")
            .map(String::as_str),
        Some("int version_proc_show(struct seq_file *m, void *v)")
    );
    assert_eq!(
        log.section("patched"),
        ["cpuinfo c_start: 0 -> cpu 0, 1 -> none"]
    );
}

/// binfmt_misc's `status` read, patched, calls binfmt_misc's static `parse_command` through
/// a `.klp.rela.binfmt_misc.*` section, which the livepatch core applies whenever binfmt_misc
/// loads: before the patch and after it. Expected from fs/binfmt_misc.c: a count of 0 parses
/// to 0, 2 bytes from user address 0 fault (-EFAULT, -14), more than 3 are refused (-EINVAL,
/// -22). A reload after an unload works where the kernel clears the relocations on unload
/// (6.12: `klp_clear_object_relocs`); 6.1 refuses the reload, as the build warns.
pub fn a_module_function_calls_a_static_function_of_its_module(target: Target) {
    let k = kernel(target);
    let ko = build("modstatic", &k);
    let binfmt = klp_harness::image_module(&k, "binfmt_misc").unwrap();
    let status = "mount -t binfmt_misc none /proc/sys/fs/binfmt_misc && \
                  cat /proc/sys/fs/binfmt_misc/status; umount /proc/sys/fs/binfmt_misc";
    let log = boot(
        &k,
        &[&ko, &binfmt],
        &format!(
            "section early; insmod /mod/binfmt_misc.ko; load klp_modstatic; {status}\n\
             section unload; disable klp_modstatic; unload klp_modstatic; rmmod binfmt_misc; \
             echo \"rmmod rc=$?\"\n\
             section late; load klp_modstatic; insmod /mod/binfmt_misc.ko; {status}\n\
             section reload; rmmod binfmt_misc; insmod /mod/binfmt_misc.ko; \
             echo \"insmod rc=$?\"\n"
        ),
    );
    let expected = "parse_command: 0 -> 0, 2 -> -14, 4 -> -22";
    assert_eq!(
        log.section("early"),
        ["insmod klp_modstatic rc=0", expected]
    );
    assert_eq!(
        log.section("unload"),
        [
            "disable klp_modstatic rc=0",
            "rmmod klp_modstatic rc=0",
            "rmmod rc=0"
        ]
    );
    assert_eq!(log.section("late"), ["insmod klp_modstatic rc=0", expected]);
    let reload = log.section("reload");
    // 6.12 clears a going module's klp relocations (klp_clear_object_relocs); 5.10 and 6.1
    // do not, and x86's apply_relocate_add refuses to write over them.
    match target {
        Target::Debian(Series::V6_12 | Series::V6_12Debian13) | Target::Sets => {
            assert_eq!(reload, ["insmod rc=0"])
        }
        Target::Debian(Series::V6_1 | Series::V5_10) => {
            assert_eq!(
                reload.last().map(String::as_str),
                Some("insmod rc=8"),
                "{reload:?}"
            );
            assert!(
                log.serial.contains("existing value is nonzero"),
                "{target:?} refuses the reload in apply_relocate_add:\n{}",
                log.serial
            );
        }
    }
}

/// The reader's own task_struct members, each where this kernel puts it (the offsets of
/// `pid` differ between 6.1 and 6.12). Expected: the shell prints its pid and its parent's,
/// then execs `cat`, which reads the patched file as that same pid with comm `cat`.
pub fn task_struct_members_are_read_where_each_kernel_puts_them(target: Target) {
    let k = kernel(target);
    let ko = build("current-task", &k);
    let log = boot(
        &k,
        &[&ko],
        "section load; load klp_current_task\n\
         section read; sh -c 'echo \"$$ $PPID\"; exec cat /proc/loadavg'\n",
    );
    assert_eq!(log.section("load"), ["insmod klp_current_task rc=0"]);
    let read = log.section("read");
    let [ids, line] = read.as_slice() else {
        panic!("two lines expected: {read:?}")
    };
    let (pid, ppid) = ids.split_once(' ').expect("pid and parent's pid");
    assert_eq!(*line, format!("pid {pid} tgid {pid} comm cat ppid {ppid}"));
}

/// Expected from the kernels' sources: fs/proc/cmdline.c and fs/proc/version.c declare
/// `static int ..._proc_show(struct seq_file *m, void *v)`, arch/x86/kernel/cpu/proc.c
/// `static void *c_start(struct seq_file *m, loff_t *pos)`; include/linux/sched.h gives
/// task_struct `pid_t pid, tgid` and `unsigned in_execve:1`; fs/binfmt_misc.c
/// `static ssize_t bm_status_read(struct file *file, char __user *buf, size_t nbytes,
/// loff_t *ppos)`.
pub fn prototypes_and_members_unlike_the_kernels_are_build_errors(target: Target) {
    let k = kernel(target);
    let out = klp_harness::target_dir()
        .join("klp")
        .join(format!("badproto-{}", k.release));
    let _ = std::fs::remove_dir_all(&out);
    let exe = klp_harness::cargo_klp_binary().unwrap_or_else(|e| panic!("{e:#}"));
    let run = std::process::Command::new(exe)
        .args(["klp", "build", "-p", "badproto", "--manifest-path"])
        .arg(klp_harness::workspace().join("Cargo.toml"))
        .arg("--kernel")
        .arg(format!("debian:{}", k.release))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    for want in [
        "#[klp_func] `cmdline_proc_show` does not match the target kernel's prototype:\n\
         \x20        kernel: int cmdline_proc_show(struct seq_file *m, void *v)\n\
         \x20        patch:  fn one_parameter(_m: *mut c_void) -> c_int\n\
         \x20        the kernel's takes 2 parameter(s), the patch's 1",
        "kernel: int version_proc_show(struct seq_file *m, void *v)",
        "parameter 2 `v`: the kernel's `void *` is a pointer",
        "#[klp_extern] fn `c_start` does not match the target kernel's prototype:\n\
         \x20        kernel: void *c_start(struct seq_file *m, loff_t *pos)",
        "the return type: the kernel's `void *` is a pointer",
        "`task_struct` has no member `pidd` in the target kernel: did you mean `pid`?",
        "`task_struct.pid` cannot be declared `*const u8`: the kernel's `pid_t` is a 4-byte \
         signed integer",
        "member `in_execve` is a bitfield in the target kernel",
        "`task_struct.tgid` cannot be declared `i64`: the kernel's `pid_t` is a 4-byte signed \
         integer",
    ] {
        assert!(stderr.contains(want), "`{want}` not in:\n{stderr}");
    }
    // binfmt_misc's own function, checked in the module's split BTF; modules have BTF only
    // from 5.11 (CONFIG_DEBUG_INFO_BTF_MODULES), which the build says instead.
    let module_check = if super::config_has(&k, "DEBUG_INFO_BTF_MODULES") {
        "#[klp_func] `bm_status_read` does not match the target kernel's prototype:\n\
         \x20        kernel: ssize_t bm_status_read(struct file *file, char *buf, size_t nbytes, \
         loff_t *ppos)"
    } else {
        "warning: no BTF for module binfmt_misc"
    };
    assert!(
        stderr.contains(module_check),
        "`{module_check}` not in:\n{stderr}"
    );
    assert!(
        !out.join("klp_badproto.ko").exists(),
        "no module left behind"
    );
}
