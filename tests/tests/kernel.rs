//! Real-kernel scenarios: modules built by `cargo klp build`, loaded into unmodified Debian
//! kernels (Debian 11's 5.10, Debian 12's 6.1 and 6.12, Debian 13's 6.12) booted under qemu,
//! checked through dmesg and /sys/kernel/livepatch.
//!
//! Expected callback steps come from `cargo klp inspect --against` reading the built `.ko`
//! files (the planner); the planner's own tests (versioned_matrix.rs) come from hand-written
//! expectations, so the two checks meet in the middle. The simulator must print the same
//! steps as the kernel.

use std::path::{Path, PathBuf};

use klp_harness::{GuestLog, Kernel, Series};
use klp_runtime::abi::PatchHeader;
use klp_runtime::sim::Kernel as Sim;

/// One test per kernel series for each scenario: Debian 11's 5.10, Debian 12's 6.1 and 6.12,
/// Debian 13's 6.12.
macro_rules! on_every_kernel {
    ($($name:ident),* $(,)?) => {
        mod v5_10 { $( #[test] fn $name() { super::$name(super::Target::Debian(klp_harness::Series::V5_10)) } )* }
        mod v6_1 { $( #[test] fn $name() { super::$name(super::Target::Debian(klp_harness::Series::V6_1)) } )* }
        mod v6_12 { $( #[test] fn $name() { super::$name(super::Target::Debian(klp_harness::Series::V6_12)) } )* }
        mod v6_12_debian13 {
            $( #[test] fn $name() { super::$name(super::Target::Debian(klp_harness::Series::V6_12Debian13)) } )*
        }
    };
}

/// The scenarios that also run on the kernel with the livepatch-core series (`kernel/`),
/// whose core runs the callback sets from the tables the modules hand it: the same
/// expectations, the same simulator.
macro_rules! on_the_kernel_with_callback_sets {
    ($($name:ident),* $(,)?) => {
        mod v6_12_sets { $( #[test] fn $name() { super::$name(super::Target::Sets) } )* }
    };
}

/// Where a scenario runs: a stock Debian kernel, where each klp-rs module runs its callback
/// sets itself (its dispatcher), or the kernel with the series, whose core runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Debian(Series),
    Sets,
}

on_every_kernel!(
    cmdline_example_patches_unpatches_and_unloads,
    target_module_loaded_after_the_patch,
    target_module_loaded_before_the_patch,
    versioned_all_twelve_replace_pairs_match_the_planner_and_the_simulator,
    versioned_chain_ends_with_every_shadow_variable_freed,
    failing_pre_patch_leaves_the_old_patch_in_effect,
    replace_with_a_target_module_loaded_late,
    replace_with_a_target_module_loaded_early,
    module_carries_modinfo_and_endbr64_where_ibt_needs_it,
    a_broken_crate_fails_naming_every_problem_and_leaves_no_module,
    signed_module_carries_the_kernel_signature,
    a_reversed_replace_restores_the_old_patch,
    tables_of_a_newer_format_are_refused_before_anything_runs,
    a_stacking_patch_leaves_the_patch_below_alone,
    a_replace_that_changes_a_shared_shadow_layout_is_refused,
    a_replace_over_a_stack_is_refused_by_the_kernel,
    a_foreign_patch_with_our_state_id_is_refused_without_an_oops,
    two_cpus_freeing_two_shadow_types_never_mix_them,
    every_failed_allocation_is_a_clean_error,
    no_runtime_entry_point_reaches_the_panic_handler,
    a_target_module_loading_during_a_replace_transition,
    functions_the_kernel_cannot_patch_are_refused_before_linking,
    cmdline_string_reads_a_symbol_the_kernel_does_not_export,
    kernel_symbols_the_kernel_cannot_resolve_are_refused_before_linking,
    a_static_function_with_an_ambiguous_name_is_called_by_sympos,
    a_module_function_calls_a_static_function_of_its_module,
    task_struct_members_are_read_where_each_kernel_puts_them,
    prototypes_and_members_unlike_the_kernels_are_build_errors,
);

on_the_kernel_with_callback_sets!(
    cmdline_example_patches_unpatches_and_unloads,
    target_module_loaded_after_the_patch,
    target_module_loaded_before_the_patch,
    versioned_all_twelve_replace_pairs_match_the_planner_and_the_simulator,
    versioned_chain_ends_with_every_shadow_variable_freed,
    failing_pre_patch_leaves_the_old_patch_in_effect,
    replace_with_a_target_module_loaded_late,
    replace_with_a_target_module_loaded_early,
    a_reversed_replace_restores_the_old_patch,
    a_target_module_loading_during_a_replace_transition,
    mixed_replaces_are_refused_by_the_kernel,
);

#[path = "kernel/symbols.rs"]
mod symbols;
use symbols::*;

/// Whether the kernel's `.config` has `CONFIG_<option>=y`.
fn config_has(k: &Kernel, option: &str) -> bool {
    let config = std::fs::read_to_string(k.kdir.join(".config")).unwrap();
    config.lines().any(|l| l == format!("CONFIG_{option}=y"))
}

fn kernel(target: Target) -> Kernel {
    match target {
        Target::Debian(series) => klp_harness::kernel(series),
        Target::Sets => klp_harness::patched_kernel().map(|p| p.kernel),
    }
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Step lines as both paths can show them. Where the kernel runs the sets, the module logs
/// each hook the kernel calls (the same line the dispatcher logs), but the kernel frees a
/// leaving set's shadow types itself: the dispatcher's `set N free shadow` and
/// `shadow 0x..: N freed` lines have no counterpart there, and the types' `Drop` output is
/// what shows the frees (hook_messages keeps it).
fn comparable<S: AsRef<str>>(target: Target, lines: &[S]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l.as_ref().to_string())
        .filter(|l| {
            target != Target::Sets
                || !(l.contains(" free shadow 0x")
                    || (l.contains(": shadow 0x") && l.ends_with(" freed")))
        })
        .collect()
}

fn build(package: &str, k: &Kernel) -> PathBuf {
    klp_harness::build_patch(package, k).unwrap_or_else(|e| panic!("{e:#}"))
}

fn boot(k: &Kernel, modules: &[&Path], script: &str) -> GuestLog {
    klp_harness::boot(k, modules, script).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Kernel log lines of a section printed with `dmesg -c`, without timestamps.
fn kernel_lines(log: &GuestLog, section: &str) -> Vec<String> {
    log.section(section)
        .iter()
        .filter_map(|l| l.split_once("] ").map(|(_, r)| r.to_string()))
        .filter(|l| !l.contains("taint"))
        .collect()
}

/// Our dispatcher's step lines (`p3: set 2 vmlinux pre_unpatch`, `p3: set 2 free shadow
/// 0x20`) and the kernel's transition lines, whoever printed them.
/// Whether `text` is one of the runtime's step lines (`p3: set 2 vmlinux pre_unpatch`,
/// `p3: set 2 free shadow 0x20`).
fn is_step(text: &str) -> bool {
    let Some((_, rest)) = text.split_once(": set ") else {
        return false;
    };
    let words: Vec<&str> = rest.split(' ').collect();
    words.first().is_some_and(|n| n.parse::<u32>().is_ok())
        && match words[1..] {
            [_object, hook] => {
                ["pre_patch", "post_patch", "pre_unpatch", "post_unpatch"].contains(&hook)
            }
            ["free", "shadow", id] => id.starts_with("0x"),
            _ => false,
        }
}

/// What the patches' own code printed (their hooks, their types' `Drop`), without the module
/// prefix: every line of a `klp_*` module that the runtime did not print itself (its step
/// lines, its `shadow 0x..: N freed` counts, its `klp-rs:` notes).
fn hook_messages(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| {
            let (source, text) = l.split_once(": ")?;
            let runtime = is_step(text)
                || text.starts_with("klp-rs: ")
                || (text.contains(": shadow 0x") && text.ends_with(" freed"));
            (source.starts_with("klp_") && !runtime).then(|| text.to_string())
        })
        .collect()
}

fn steps_and_transitions(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| {
            let (source, text) = l.split_once(": ")?;
            if source == "livepatch" && (text.contains("transition") || text.contains("complete")) {
                return Some(text.to_string());
            }
            (source.starts_with("klp_") && is_step(text)).then(|| text.to_string())
        })
        .collect()
}

fn read_ko(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn cmdline_example_patches_unpatches_and_unloads(target: Target) {
    let k = kernel(target);
    let ko = build("cmdline", &k);
    let log = boot(
        &k,
        &[&ko],
        "section before; cat /proc/cmdline; lpstate\n\
         section load; load klp_cmdline\n\
         section patched; cat /proc/cmdline; lpstate\n\
         section disable; disable klp_cmdline\n\
         section disabled; cat /proc/cmdline; lpstate\n\
         section rmmod; rmmod klp_cmdline; echo \"rmmod rc=$?\"; ls /sys/kernel/livepatch | wc -l\n",
    );
    let original = "console=ttyS0 panic=-1 oops=panic quiet";
    assert_eq!(log.section("before"), [original]);
    assert_eq!(log.section("load"), ["insmod klp_cmdline rc=0"]);
    assert_eq!(
        log.section("patched"),
        [
            "this has been live patched by Rust",
            "patch klp_cmdline enabled=1 transition=0"
        ]
    );
    assert_eq!(log.section("disable"), ["disable klp_cmdline rc=0"]);
    assert_eq!(
        log.section("disabled"),
        [original],
        "the original is back and the patch is gone from sysfs"
    );
    assert_eq!(log.section("rmmod"), ["rmmod rc=0", "0"]);
}

/// binfmt_misc's `status` file, which klp_modobj patches.
const BINFMT_STATUS: &str =
    "mount -t binfmt_misc none /proc/sys/fs/binfmt_misc 2>/dev/null; cat /proc/sys/fs/binfmt_misc/status";

fn target_module_loaded_after_the_patch(target: Target) {
    let k = kernel(target);
    let ko = build("modobj", &k);
    let binfmt = klp_harness::image_module(&k, "binfmt_misc").unwrap();
    let log = boot(
        &k,
        &[&ko, &binfmt],
        &format!(
            "load klp_modobj\n\
             section patch; dmesg -c\n\
             insmod /mod/binfmt_misc.ko; echo \"insmod binfmt_misc rc=$?\"\n\
             section status; {BINFMT_STATUS}\n\
             section coming; dmesg -c\n\
             umount /proc/sys/fs/binfmt_misc; rmmod binfmt_misc\n\
             section going; dmesg -c\n\
             disable klp_modobj\n"
        ),
    );
    assert_eq!(log.section("status"), ["patched by klp_modobj"]);
    let ours = |s| -> Vec<String> {
        kernel_lines(&log, s)
            .into_iter()
            .filter_map(|l| l.strip_prefix("klp_modobj: ").map(str::to_string))
            .collect()
    };
    // The set on binfmt_misc runs nothing until binfmt_misc loads.
    assert_eq!(
        comparable(target, &ours("patch")),
        comparable(
            target,
            &[
                "modobj: set 1 vmlinux pre_patch",
                "modobj: core set up on vmlinux"
            ]
        )
    );
    assert_eq!(
        comparable(target, &ours("coming")),
        comparable(
            target,
            &[
                "modobj: set 2 binfmt_misc pre_patch",
                "modobj: binfmt set up on binfmt_misc",
                "modobj: set 2 binfmt_misc post_patch",
                "modobj: binfmt set live on binfmt_misc"
            ]
        )
    );
    assert_eq!(
        comparable(target, &ours("going")),
        comparable(
            target,
            &[
                "modobj: set 2 binfmt_misc pre_unpatch",
                "modobj: binfmt set leaving binfmt_misc",
                "modobj: set 2 binfmt_misc post_unpatch",
                "modobj: binfmt set down on binfmt_misc",
                "modobj: set 2 free shadow 0x200",
                "modobj: binfmt tracker dropped (live=true)",
                "modobj: shadow 0x200: 1 freed"
            ]
        )
    );
}

fn target_module_loaded_before_the_patch(target: Target) {
    let k = kernel(target);
    let ko = build("modobj", &k);
    let binfmt = klp_harness::image_module(&k, "binfmt_misc").unwrap();
    let log = boot(
        &k,
        &[&ko, &binfmt],
        &format!(
            "insmod /mod/binfmt_misc.ko\n\
             section before; {BINFMT_STATUS}\n\
             section load; load klp_modobj\n\
             section patched; {BINFMT_STATUS}\n\
             section disable; disable klp_modobj\n\
             section disabled; {BINFMT_STATUS}\n\
             section log; dmesg -c\n"
        ),
    );
    assert_eq!(log.section("before"), ["enabled"]);
    assert_eq!(log.section("patched"), ["patched by klp_modobj"]);
    assert_eq!(log.section("disabled"), ["enabled"]);
    let sim_lines = {
        let mut sim = Sim::new();
        sim.load_object("binfmt_misc").unwrap();
        sim.insmod(&modobj::KLP_PATCH).unwrap();
        sim.disable("modobj").unwrap();
        sim.step_lines()
    };
    let kernel_steps: Vec<String> = steps_and_transitions(&kernel_lines(&log, "log"))
        .into_iter()
        .filter(|l| l.contains(": set "))
        .collect();
    assert_eq!(
        comparable(target, &kernel_steps),
        comparable(target, &sim_lines),
        "the simulator and the kernel ran different steps"
    );
    // From the rule: set 2 sets up with the patch (binfmt_misc is there), tears down with it,
    // its shadow variable dropped after its post_unpatch; set 1 likewise around it.
    assert_eq!(
        modobj_effects(&kernel_lines(&log, "log"), "klp_modobj")
            .into_iter()
            .filter(|l| l.starts_with("klp_modobj: "))
            .collect::<Vec<_>>(),
        [
            "klp_modobj: modobj: core set up on vmlinux",
            "klp_modobj: modobj: binfmt set up on binfmt_misc",
            "klp_modobj: modobj: binfmt set live on binfmt_misc",
            "klp_modobj: modobj: binfmt set leaving binfmt_misc",
            "klp_modobj: modobj: binfmt set down on binfmt_misc",
            "klp_modobj: modobj: binfmt tracker dropped (live=true)",
            "klp_modobj: modobj: core set down on vmlinux",
        ]
    );
}

const VERSIONED: [(&str, &str); 4] = [
    ("p1", "klp_v1"),
    ("p2", "klp_v2"),
    ("p3", "klp_v3"),
    ("p4", "klp_v4"),
];

fn versioned_modules(k: &Kernel) -> Vec<PathBuf> {
    VERSIONED.iter().map(|(p, _)| build(p, k)).collect()
}

fn header(crate_name: &str) -> &'static PatchHeader {
    match crate_name {
        "p1" => &p1::KLP_PATCH,
        "p2" => &p2::KLP_PATCH,
        "p3" => &p3::KLP_PATCH,
        "p4" => &p4::KLP_PATCH,
        other => panic!("{other}"),
    }
}

/// What `cargo klp inspect NEW --against OLD` predicts, from the files, as the kernel log
/// shows it: the transition starts at its marker and is announced complete after the post
/// callbacks.
fn predicted(old: &Path, new: &Path, new_module: &str) -> Vec<String> {
    let plan = cargo_klp::inspect::against(new, old).unwrap();
    assert_eq!(plan.refused, None);
    let mut lines: Vec<String> = plan
        .steps
        .into_iter()
        .map(|s| {
            if s == "transition" {
                format!("'{new_module}': starting patching transition")
            } else {
                s
            }
        })
        .collect();
    lines.push(format!("'{new_module}': patching complete"));
    lines
}

fn versioned_all_twelve_replace_pairs_match_the_planner_and_the_simulator(target: Target) {
    let k = kernel(target);
    let kos = versioned_modules(&k);
    let refs: Vec<&Path> = kos.iter().map(PathBuf::as_path).collect();
    let mut script = String::new();
    let mut pairs = Vec::new();
    for (a, (_, ma)) in VERSIONED.iter().enumerate() {
        for (b, (_, mb)) in VERSIONED.iter().enumerate().filter(|(b, _)| *b != a) {
            script += &format!(
                "load {ma}; cat /proc/cmdline >/dev/null; cat /proc/cmdline >/dev/null; dmesg -c >/dev/null\n\
                 load {mb}\n\
                 section pair-{a}-{b}; dmesg -c\n\
                 section cleanup-{a}-{b}; rmmod {ma}; disable {mb}; rmmod {mb}; lpstate; dmesg -c >/dev/null\n"
            );
            pairs.push((a, b));
        }
    }
    let log = boot(&k, &refs, &script);
    assert_eq!(pairs.len(), 12);
    for (a, b) in pairs {
        let got = steps_and_transitions(&kernel_lines(&log, &format!("pair-{a}-{b}")));
        let want = predicted(&kos[a], &kos[b], VERSIONED[b].1);
        assert_eq!(
            comparable(target, &got),
            comparable(target, &want),
            "{} -> {} on {}",
            VERSIONED[a].1,
            VERSIONED[b].1,
            k.release
        );
        // Simulator parity: the same pair in the simulator prints the same steps.
        let mut sim = Sim::new();
        sim.insmod(header(VERSIONED[a].0)).unwrap();
        sim.clear_log();
        sim.insmod(header(VERSIONED[b].0)).unwrap();
        let kernel_steps: Vec<&String> = got.iter().filter(|l| l.contains(": set ")).collect();
        assert_eq!(
            comparable(target, &kernel_steps),
            comparable(target, &sim.step_lines()),
            "simulator vs kernel, pair {a}->{b}"
        );
        // What the hooks themselves printed, in the kernel and in the simulator, whose own
        // log versioned_matrix.rs checks against expectations written by hand.
        assert_eq!(
            hook_messages(&kernel_lines(&log, &format!("pair-{a}-{b}"))),
            sim.messages(),
            "the hooks' own output, pair {a}->{b}"
        );
        assert!(
            log.section(&format!("cleanup-{a}-{b}"))
                .iter()
                .all(|l| !l.starts_with("patch ")),
            "left loaded"
        );
    }
}

fn versioned_chain_ends_with_every_shadow_variable_freed(target: Target) {
    let k = kernel(target);
    let kos = versioned_modules(&k);
    let refs: Vec<&Path> = kos.iter().map(PathBuf::as_path).collect();
    // P1 -> P3 -> P4 -> P2 -> P1 -> disable, reading /proc/cmdline (creating per-task
    // shadow variables) at each step: twice in one task (a shell's `read` builtin), once in
    // another (`cat`).
    let chain = [0usize, 2, 3, 1, 0];
    let mut script = String::new();
    let mut prev: Option<&str> = None;
    for (i, &p) in chain.iter().enumerate() {
        let m = VERSIONED[p].1;
        if i == chain.len() - 1 {
            // P1 was loaded at the start and replaced since: reload it.
            script += "rmmod klp_v1\n";
        }
        script += &format!("section load-{i}; load {m}\n");
        if let Some(prev) = prev {
            if prev != "klp_v1" {
                script += &format!("rmmod {prev}\n");
            }
        }
        // Under P3, the script's own shell reads too: its counter is checked once P3 comes
        // back at the end.
        let own = if p == 2 {
            "read l </proc/cmdline; "
        } else {
            ""
        };
        script += &format!(
            "section read-{i}; {own}sh -c 'read l </proc/cmdline; read l </proc/cmdline; echo \"$l\"'; cat /proc/cmdline\n"
        );
        prev = Some(m);
    }
    script += "disable klp_v1\nsection end; lpstate\nsection log; dmesg -c\n\
               section reload; load klp_v3; read l </proc/cmdline; echo \"$l\"; disable klp_v3\n";
    let log = boot(&k, &refs, &script);
    // The shell's counter from P3's first time went with set 2 when P4 replaced P3: it counts
    // afresh (a counter that leaked would say reads=2). This is the free, seen on both paths.
    assert_eq!(
        log.section("reload").get(1).map(String::as_str),
        Some("klp versioned p3 banner=true reads=1"),
        "{:?}",
        log.section("reload")
    );
    assert_eq!(
        log.section("read-1"),
        [
            "klp versioned p3 banner=true reads=2",
            "klp versioned p3 banner=true reads=1"
        ],
        "per-task counters in P3"
    );
    assert_eq!(
        log.section("read-2")[..2],
        [
            "klp versioned p4 banner=true reads=2 bytes=32",
            "klp versioned p4 banner=true reads=1 bytes=16"
        ],
        "P4 counts afresh in its own records"
    );
    assert_eq!(log.section("end"), Vec::<String>::new(), "no patch left");
    let freed: Vec<String> = kernel_lines(&log, "log")
        .into_iter()
        .filter_map(|l| l.split_once(": ").map(|(_, t)| t.to_string()))
        .filter(|t| t.contains(": shadow 0x"))
        .collect();
    // Each task's counter is freed with its set: P3's three (0x20: the shell's, sh's, cat's)
    // when P4 replaces it, P4's two (0x30) when P2 replaces it, and the banner (0x10, set 1)
    // at the final disable. Where the kernel runs the sets it frees them itself, and says
    // nothing of how many: the reload above shows the free there.
    let want = [
        "p3: shadow 0x20: 3 freed",
        "p4: shadow 0x30: 2 freed",
        "p1: shadow 0x10: 1 freed",
    ];
    assert_eq!(freed, comparable(target, &want));
}

fn failing_pre_patch_leaves_the_old_patch_in_effect(target: Target) {
    let k = kernel(target);
    let p3 = build("p3", &k);
    let fail = build("fail", &k);
    let log = boot(
        &k,
        &[&p3, &fail],
        // `read` is a builtin: the script's own shell reads, so its counter can be followed.
        "load klp_v3; read l </proc/cmdline; dmesg -c >/dev/null\n\
         section insmod; insmod /mod/klp_fail.ko; echo \"rc=$?\"\n\
         waitlp\n\
         section after; read l </proc/cmdline; echo \"$l\"; lpstate\n\
         section log; dmesg -c\n",
    );
    assert_ne!(
        log.section("insmod").last().map(String::as_str),
        Some("rc=0"),
        "insmod must fail"
    );
    assert_eq!(
        log.section("after"),
        [
            "klp versioned p3 banner=true reads=2",
            "patch klp_v3 enabled=1 transition=0"
        ],
        "P3 stays enabled and in effect, its counter intact"
    );
    let lines = kernel_lines(&log, "log");
    // busybox's insmod retries a failed finit_module with init_module: compare one attempt.
    let first: Vec<String> = lines
        .iter()
        .take_while(|l| !l.contains("failed to enable patch"))
        .filter_map(|l| l.strip_prefix("klp_fail: ").map(str::to_string))
        .collect();
    let mut sim = Sim::new();
    sim.insmod(&p3::KLP_PATCH).unwrap();
    sim.clear_log();
    sim.insmod(&fail::KLP_PATCH).unwrap_err();
    // The kernel's own lines (the cancel's "unpatching complete") are livepatch's, not
    // klp_fail's.
    let sim_lines: Vec<String> = sim
        .lines()
        .into_iter()
        .filter(|l| !l.starts_with('\''))
        .collect();
    assert_eq!(
        comparable(target, &first),
        comparable(target, &sim_lines),
        "kernel vs simulator"
    );
    // The kernel says which object (and, where it runs the sets, which set) failed.
    let failed = match target {
        Target::Sets => "pre-patch callback failed for callback set 9 on object 'vmlinux'",
        Target::Debian(_) => "pre-patch callback failed for object 'vmlinux'",
    };
    assert!(lines.iter().any(|l| l.contains(failed)), "{lines:?}");
}

/// What modobj's own code printed (its hooks and the `Drop` of its shadow type), with the
/// kernel's transition lines for `patch`: effects, not the runtime's step lines.
fn modobj_effects(lines: &[String], patch: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| {
            ["klp_modobj: modobj: binfmt ", "klp_modobj: modobj: core "]
                .iter()
                .any(|p| l.starts_with(p))
                || (l.starts_with(&format!("livepatch: '{patch}': "))
                    && (l.contains("transition") || l.contains("complete")))
        })
        .cloned()
        .collect()
}

fn replace_with_a_target_module_loaded_late(target: Target) {
    replace_drops_a_module_object(target, true)
}

fn replace_with_a_target_module_loaded_early(target: Target) {
    replace_drops_a_module_object(target, false)
}

/// modobj has set 1 on vmlinux and set 2 on binfmt_misc (owning shadow type 0x200); P2 has
/// set 1 only. The kernel gives the replace's nop object for binfmt_misc no callbacks and
/// discards it before the post callbacks (klp_complete_transition: klp_discard_nops, then
/// klp_post_patch_callback for each remaining object), yet binfmt_misc stays loaded the whole
/// time, so set 2 must be torn down completely: by the rule, its pre_unpatch before the
/// transition, its post_unpatch after it, then its shadow type freed, once each.
fn replace_drops_a_module_object(target: Target, binfmt_after_modobj: bool) {
    let k = kernel(target);
    let modobj = build("modobj", &k);
    let p2 = build("p2", &k);
    let binfmt = klp_harness::image_module(&k, "binfmt_misc").unwrap();
    let (first, second) = ("load klp_modobj", "insmod /mod/binfmt_misc.ko");
    let (first, second) = if binfmt_after_modobj {
        (first, second)
    } else {
        (second, first)
    };
    let log = boot(
        &k,
        &[&modobj, &p2, &binfmt],
        &format!(
            "{first}\n{second}\n\
             section patched; {BINFMT_STATUS}\n\
             section load; dmesg -c >/dev/null; load klp_v2\n\
             section replaced; cat /proc/sys/fs/binfmt_misc/status; lpstate; lsmod | grep -c binfmt_misc\n\
             section log; dmesg -c\n"
        ),
    );
    assert_eq!(log.section("patched"), ["patched by klp_modobj"]);
    assert_eq!(
        log.section("replaced"),
        ["enabled", "patch klp_v2 enabled=1 transition=0", "1"]
    );
    let lines = kernel_lines(&log, "log");
    assert_eq!(
        modobj_effects(&lines, "klp_v2"),
        [
            "klp_modobj: modobj: binfmt set leaving binfmt_misc",
            "livepatch: 'klp_v2': starting patching transition",
            "klp_modobj: modobj: binfmt set down on binfmt_misc",
            "klp_modobj: modobj: binfmt tracker dropped (live=true)",
            "livepatch: 'klp_v2': patching complete",
        ],
        "{lines:#?}"
    );
    let mut sim = Sim::new();
    if binfmt_after_modobj {
        sim.insmod(&modobj::KLP_PATCH).unwrap();
        sim.load_object("binfmt_misc").unwrap();
    } else {
        sim.load_object("binfmt_misc").unwrap();
        sim.insmod(&modobj::KLP_PATCH).unwrap();
    }
    sim.clear_log();
    sim.insmod(&p2::KLP_PATCH).unwrap();
    let kernel_steps: Vec<String> = steps_and_transitions(&lines)
        .into_iter()
        .filter(|l| l.contains(": set "))
        .collect();
    assert_eq!(
        comparable(target, &kernel_steps),
        comparable(target, &sim.step_lines())
    );
}

fn module_carries_modinfo_and_endbr64_where_ibt_needs_it(target: Target) {
    let k = kernel(target);
    let ko = build("p4", &k);
    let data = read_ko(&ko);
    let file = object::File::parse(&*data).unwrap();
    use object::{Object, ObjectSection};
    let modinfo = file.section_by_name(".modinfo").unwrap().data().unwrap();
    let fields: Vec<&str> = modinfo
        .split(|b| *b == 0)
        .filter_map(|f| std::str::from_utf8(f).ok())
        .collect();
    for want in [
        "livepatch=Y",
        "license=GPL",
        "name=klp_v4",
        "description=Rust live patch: versioned example, patch 4 of 4",
    ] {
        assert!(fields.contains(&want), "{want} not in {fields:?}");
    }
    assert!(
        fields
            .iter()
            .any(|f| f.starts_with(&format!("vermagic={} ", k.release))),
        "{fields:?}"
    );
    // The C init is compiled by the kernel's own compiler, the one its release ships (in a
    // root of that release when this machine runs another): the `.comment` gcc leaves names
    // the Debian gcc major version CONFIG_CC_VERSION_TEXT names.
    let config = std::fs::read_to_string(k.kdir.join(".config")).unwrap();
    let cc = config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_CC_VERSION_TEXT="))
        .unwrap();
    let major = cc
        .split("(Debian ")
        .nth(1)
        .unwrap()
        .split('.')
        .next()
        .unwrap();
    let comment = file.section_by_name(".comment").unwrap().data().unwrap();
    let comment = String::from_utf8_lossy(comment);
    assert!(
        comment.contains(&format!("GCC: (Debian {major}.")),
        "the kernel's compiler is {cc}; the module's .comment says {comment:?}"
    );
    if !config_has(&k, "X86_KERNEL_IBT") {
        return;
    }
    // IBT: every function the tables point to must begin with endbr64. Disassemble with
    // objdump (independent of cargo klp's own check).
    let patch = cargo_klp::elf::read_patch(&file).unwrap().unwrap();
    let mut targets: Vec<&str> = patch.funcs.iter().filter_map(|f| f.new_func).collect();
    targets.extend(
        patch
            .sets
            .iter()
            .flat_map(|s| s.hooks.iter().flatten().copied()),
    );
    targets.extend(
        patch
            .shadows
            .iter()
            .flat_map(|t| [t.ctor, t.dtor])
            .flatten(),
    );
    assert!(targets.len() >= 7, "{targets:?}");
    let out = std::process::Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(&ko)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for t in targets {
        let header = format!("<{t}>:");
        let mut lines = text.lines().skip_while(|l| !l.ends_with(&header)).skip(1);
        let first = lines
            .next()
            .unwrap_or_else(|| panic!("{t} not found in the disassembly"));
        assert!(
            first.contains("endbr64"),
            "{t} starts with `{first}`, not endbr64"
        );
    }
}

fn a_broken_crate_fails_naming_every_problem_and_leaves_no_module(target: Target) {
    let k = kernel(target);
    let out = klp_harness::target_dir()
        .join("klp")
        .join(format!("broken-{}", k.release));
    let _ = std::fs::remove_dir_all(&out);
    let opts = cargo_klp::build::BuildOptions {
        manifest_path: Some(klp_harness::workspace().join("Cargo.toml")),
        package: Some("broken".into()),
        kdir: Some(k.kdir.clone()),
        out: Some(out.clone()),
        ..Default::default()
    };
    let err = cargo_klp::build::build(&cargo_klp::status::Shell::new(false), &opts).unwrap_err();
    let msg = format!("{err:#}");
    let file = "tests/fixtures/broken/src/lib.rs";
    for want in [
        "kernel symbol `ext4_sync_fs` of module ext4: the patch has no #[klp_func] or \
         #[klp_callbacks] for ext4, so the livepatch core would never resolve it"
            .to_string(),
        format!("callback set id 4 is declared twice: at broken::first ({file}:10) and at broken::second ({file}:15)"),
        "owned by callback set 7, which this patch does not declare".to_string(),
        "vmlinux:cmdline_proc_show (sympos 0) is patched twice".to_string(),
        "section klp_rs_sets_brokendep: crate `brokendep` declares #[klp_func], #[klp_callbacks] \
         or #[klp_shadow] items, which the module would not carry"
            .to_string(),
    ] {
        assert!(msg.contains(&want), "`{want}` not in:\n{msg}");
    }
    // KSYM_NAME_LEN of the kernel's own headers: 128 on 5.10, 512 from 5.19.
    let kallsyms = std::fs::read_dir(k.kdir.parent().unwrap())
        .unwrap()
        .filter_map(|e| {
            std::fs::read_to_string(e.ok()?.path().join("include/linux/kallsyms.h")).ok()
        })
        .next()
        .unwrap();
    let ksym_name_len: usize = kallsyms
        .lines()
        .find_map(|l| l.strip_prefix("#define KSYM_NAME_LEN"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let long = "klp_rs_a_function_name_longer_than_the_127_characters_linux_5_10_keeps_in_\
                kallsyms_and_reads_in_klp_init_func_or_klp_resolve_symbols";
    let refused = format!("kernel symbol `{long}` is {} characters long", long.len());
    assert_eq!(
        msg.contains(&refused),
        long.len() >= ksym_name_len,
        "KSYM_NAME_LEN {ksym_name_len}:\n{msg}"
    );
    assert!(
        !out.join("klp_broken.ko").exists(),
        "a refused build must leave no module behind"
    );
}

/// Expected from the livepatch core's rules (`klp_find_object_symbol`, ftrace's list) and
/// the kernels' sources: `exc_nmi` is `noinstr`, `c_start` is static in several files,
/// there is one `cmdline_proc_show`, binfmt_misc and ext4 (loaded with what it depends on)
/// have no such functions, 8250 is built in (modules.builtin), module names use `_`.
/// Builds the workspace's `package` for `k`, which must fail: the error's text, and whether a
/// module was left in the output directory.
fn refused_build(k: &Kernel, package: &str) -> (String, bool) {
    let out = klp_harness::target_dir()
        .join("klp")
        .join(format!("{package}-{}", k.release));
    let _ = std::fs::remove_dir_all(&out);
    let opts = cargo_klp::build::BuildOptions {
        manifest_path: Some(klp_harness::workspace().join("Cargo.toml")),
        package: Some(package.into()),
        out: Some(out.clone()),
        ..Default::default()
    }
    .for_kernel(k);
    let err = cargo_klp::build::build(&cargo_klp::status::Shell::new(false), &opts).unwrap_err();
    let left = std::fs::read_dir(&out)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().extension().is_some_and(|x| x == "ko"));
    (format!("{err:#}"), left)
}

fn functions_the_kernel_cannot_patch_are_refused_before_linking(target: Target) {
    let k = kernel(target);
    let (msg, left) = refused_build(&k, "badfuncs");
    let r = &k.release;
    for want in [
        format!("`klp_rs_no_such_function` in vmlinux: {r} has no such function"),
        format!("`exc_nmi` in vmlinux: {r} cannot patch it: ftrace has no call site"),
        "`c_start` in vmlinux: ".to_string(),
        "symbols of this name, and the kernel refuses an ambiguous one; say which with `sympos = N`"
            .to_string(),
        format!("`cmdline_proc_show` in vmlinux: sympos = 2 but {r} has only 1 symbol(s)"),
        format!("`bm_no_such_function` in binfmt_misc: {r} has no such function"),
        format!("`ext4_no_such_function` in ext4: {r} has no such function"),
        format!("module 8250 is built into {r}'s vmlinux: use object = \"vmlinux\""),
        "#[klp_func] `snd_card_dummy_pcm` in snd-dummy: the kernel names modules with `_` \
         (`snd_dummy`)"
            .to_string(),
    ] {
        assert!(msg.contains(&want), "`{want}` not in:\n{msg}");
    }
    assert_eq!(msg.matches("\n  - ").count(), 8, "{msg}");
    assert!(!left, "a refused build must leave no module behind");
}

fn signed_module_carries_the_kernel_signature(target: Target) {
    let k = kernel(target);
    let dir = klp_harness::target_dir()
        .join("klp")
        .join(format!("signing-{}", k.release));
    std::fs::create_dir_all(&dir).unwrap();
    let (key, cert) = (dir.join("signing_key.pem"), dir.join("signing_key.x509"));
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "1", "-batch", "-x509",
        ])
        .args(["-subj", "/CN=klp-rs test/", "-outform", "DER", "-out"])
        .arg(&cert)
        .arg("-keyout")
        .arg(&key)
        .output()
        .expect("openssl");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let opts = cargo_klp::build::BuildOptions {
        manifest_path: Some(klp_harness::workspace().join("Cargo.toml")),
        package: Some("cmdline".into()),
        kdir: Some(k.kdir.clone()),
        out: Some(dir.clone()),
        sign: Some((key, cert)),
        ..Default::default()
    };
    let built = cargo_klp::build::build(&cargo_klp::status::Shell::new(false), &opts).unwrap();
    let data = read_ko(&built.ko);
    assert!(
        data.ends_with(b"~Module signature appended~\n"),
        "no module signature at the end of the .ko"
    );
    let unsigned = read_ko(&build("cmdline", &k));
    assert!(
        !unsigned.ends_with(b"~Module signature appended~\n"),
        "unsigned by default"
    );
}

fn a_reversed_replace_restores_the_old_patch(target: Target) {
    // klp_busy's worker sleeps inside busymod_work_func, which klp_busyp patches: the
    // transition of klp_busyp replacing klp_v3 cannot finish, and is reversed.
    let k = kernel(target);
    let busy =
        klp_harness::build_c_fixture("busy", "klp_busy", &k).unwrap_or_else(|e| panic!("{e:#}"));
    let p3 = build("p3", &k);
    let busyp = build("busy", &k);
    let log = boot(
        &k,
        &[&busy, &p3, &busyp],
        "insmod /mod/klp_busy.ko\n\
         load klp_v3; read l </proc/cmdline; dmesg -c >/dev/null\n\
         insmod /mod/klp_busyp.ko; echo \"insmod rc=$?\"\n\
         section pending; lpstate\n\
         section reverse; echo 0 > /sys/kernel/livepatch/klp_busyp/enabled; echo \"rc=$?\"; waitlp\n\
         section after; lpstate; read l </proc/cmdline; echo \"$l\"\n\
         section log; dmesg -c\n\
         echo 0 > /sys/module/klp_busy/parameters/block\n",
    );
    assert!(
        log.section("pending")
            .contains(&"patch klp_busyp enabled=1 transition=1".to_string()),
        "the transition must still be pending: {:?}",
        log.section("pending")
    );
    assert_eq!(log.section("reverse"), ["rc=0"]);
    let after = log.section("after");
    assert!(
        after.contains(&"patch klp_v3 enabled=1 transition=0".to_string()),
        "{after:?}"
    );
    assert_eq!(
        after.last().map(String::as_str),
        Some("klp versioned p3 banner=true reads=2"),
        "P3 in effect, state kept"
    );
    let kernel_steps: Vec<String> = steps_and_transitions(&kernel_lines(&log, "log"))
        .into_iter()
        .filter(|l| !l.starts_with('\''))
        .collect();
    let mut sim = Sim::new();
    sim.load_object("klp_busy").unwrap();
    sim.insmod(&p3::KLP_PATCH).unwrap();
    sim.clear_log();
    sim.insmod_pending(&busy::KLP_PATCH).unwrap();
    sim.reverse_transition().unwrap();
    let kernel_steps = comparable(target, &kernel_steps);
    assert_eq!(
        kernel_steps,
        comparable(target, &sim.step_lines()),
        "kernel vs simulator"
    );
    // The hooks' own output: busy's set 6 set up; at the reversal P3's set 2 gets its
    // post_patch back (its text, from p3's source), then busy's set 6 is undone.
    assert_eq!(
        hook_messages(&kernel_lines(&log, "log")),
        [
            "busy: set 6 up on vmlinux",
            "p3: counting reads per task on vmlinux",
            "busy: set 6 down on vmlinux"
        ]
    );
    // Hand-written from the rule: busy-only sets 6 and 7 set up and are undone in reverse;
    // P3-only set 2 ran pre_unpatch and gets post_patch back.
    assert_eq!(
        kernel_steps,
        comparable(
            target,
            &[
                "busy: set 6 vmlinux pre_patch",
                "busy: set 7 klp_busy pre_patch",
                "p3: set 2 vmlinux pre_unpatch",
                "p3: set 2 vmlinux post_patch",
                "busy: set 7 klp_busy post_unpatch",
                "busy: set 6 vmlinux post_unpatch",
            ]
        )
    );
}

fn tables_of_a_newer_format_are_refused_before_anything_runs(target: Target) {
    // P1 built as a future klp-rs would build it (table format 2), then P3 of today's
    // format 1 tries to replace it: P3 cannot read P1's tables, so it must refuse, run
    // nothing, and leave P1 in effect.
    let k = kernel(target);
    let next = klp_harness::build_patch_with("p1", &k, &["--cfg", "klp_rs_next_format"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let p3 = build("p3", &k);
    let log = boot(
        &k,
        &[&next, &p3],
        "load klp_v1; dmesg -c >/dev/null\n\
         section insmod; insmod /mod/klp_v3.ko; echo \"rc=$?\"; waitlp\n\
         section after; lpstate; cat /proc/cmdline\n\
         section log; dmesg -c\n",
    );
    assert_ne!(
        log.section("insmod").last().map(String::as_str),
        Some("rc=0"),
        "the replace must fail"
    );
    assert_eq!(
        log.section("after"),
        [
            "patch klp_v1 enabled=1 transition=0",
            "klp versioned p1 banner=true"
        ]
    );
    let lines = kernel_lines(&log, "log");
    let ours: Vec<&String> = lines.iter().filter(|l| l.starts_with("klp_v3: ")).collect();
    assert!(!ours.is_empty(), "{lines:?}");
    assert!(
        ours.iter().all(|l| l.starts_with(
            "klp_v3: klp-rs: p3 cannot replace p1: table format version 3 is newer than this reader understands (up to 2)"
        )),
        "no step may run, and the refusal names both patches and formats: {ours:?}"
    );
}

fn a_stacking_patch_leaves_the_patch_below_alone(target: Target) {
    let k = kernel(target);
    let p3 = build("p3", &k);
    let stack = build("stack", &k);
    let log = boot(
        &k,
        &[&p3, &stack],
        "load klp_v3; dmesg -c >/dev/null\n\
         section load; load klp_stack\n\
         section both; lpstate; cat /proc/cmdline; cat /proc/version\n\
         section disable; disable klp_stack\n\
         section after; lpstate; cat /proc/version | cut -c1-6\n\
         section log; dmesg -c\n",
    );
    assert_eq!(
        log.section("both"),
        [
            "patch klp_stack enabled=1 transition=0",
            "patch klp_v3 enabled=1 transition=0",
            "klp versioned p3 banner=true reads=1",
            "stacked on top"
        ]
    );
    assert_eq!(
        log.section("after"),
        ["patch klp_v3 enabled=1 transition=0", "Linux"],
        "version_proc_show is back"
    );
    let steps: Vec<String> = steps_and_transitions(&kernel_lines(&log, "log"))
        .into_iter()
        .filter(|l| !l.starts_with('\''))
        .collect();
    // Only the stacked patch's own set runs; P3, below it, is not torn down.
    assert_eq!(
        steps,
        [
            "stack: set 9 vmlinux post_patch",
            "stack: set 9 vmlinux pre_unpatch"
        ]
    );
}

fn a_target_module_loading_during_a_replace_transition(target: Target) {
    // klp_busyp replaces klp_modobj; its transition waits on klp_busy's worker. binfmt_misc
    // loads meanwhile: modobj (still enabled) sets up its set 2 on it, and busy must run its
    // part of the replace for it: its own set 8 up, modobj's set 2 down.
    let k = kernel(target);
    let busy =
        klp_harness::build_c_fixture("busy", "klp_busy", &k).unwrap_or_else(|e| panic!("{e:#}"));
    let modobj = build("modobj", &k);
    let busyp = build("busy", &k);
    let binfmt = klp_harness::image_module(&k, "binfmt_misc").unwrap();
    let log = boot(
        &k,
        &[&busy, &modobj, &busyp, &binfmt],
        &format!(
            "insmod /mod/klp_busy.ko\n\
             load klp_modobj; dmesg -c >/dev/null\n\
             insmod /mod/klp_busyp.ko\n\
             section pending; lpstate\n\
             insmod /mod/binfmt_misc.ko; echo \"insmod binfmt_misc rc=$?\"\n\
             echo 0 > /sys/module/klp_busy/parameters/block; waitlp\n\
             section after; lpstate; {BINFMT_STATUS}\n\
             section log; dmesg -c\n"
        ),
    );
    assert!(log
        .section("pending")
        .contains(&"patch klp_busyp enabled=1 transition=1".to_string()));
    assert_eq!(
        log.section("after"),
        ["patch klp_busyp enabled=1 transition=0", "enabled"]
    );
    let kernel_steps: Vec<String> = steps_and_transitions(&kernel_lines(&log, "log"))
        .into_iter()
        .filter(|l| !l.starts_with('\''))
        .collect();
    let mut sim = Sim::new();
    sim.load_object("klp_busy").unwrap();
    sim.insmod(&modobj::KLP_PATCH).unwrap();
    sim.clear_log();
    sim.insmod_pending(&busy::KLP_PATCH).unwrap();
    sim.load_object("binfmt_misc").unwrap();
    sim.complete_transition().unwrap();
    let kernel_steps = comparable(target, &kernel_steps);
    assert_eq!(
        kernel_steps,
        comparable(target, &sim.step_lines()),
        "kernel vs simulator"
    );
    // Hand-written from the rule (set 1 is in both and runs nothing):
    assert_eq!(
        kernel_steps,
        comparable(
            target,
            &[
                // busy replaces modobj; binfmt_misc is not loaded yet.
                "busy: set 6 vmlinux pre_patch",
                "busy: set 7 klp_busy pre_patch",
                // binfmt_misc loads: modobj, still enabled, sets up its set 2 on it...
                "modobj: set 2 binfmt_misc pre_patch",
                "modobj: set 2 binfmt_misc post_patch",
                // ...and busy runs its part of the replace for binfmt_misc.
                "busy: set 8 binfmt_misc pre_patch",
                "modobj: set 2 binfmt_misc pre_unpatch",
                // The transition completes: modobj's set 2 leaves (post_unpatch, then its shadow
                // type freed) before busy's sets finish setting up, ascending (set 6 has no
                // post_patch), whichever module each is on.
                "modobj: set 2 binfmt_misc post_unpatch",
                "modobj: set 2 free shadow 0x200",
                "busy: set 7 klp_busy post_patch",
                "busy: set 8 binfmt_misc post_patch",
            ]
        )
    );
    // What modobj's own code did: set up on binfmt_misc as it came, torn down completely by
    // the replace, its shadow variable dropped after its post_unpatch, never before.
    let lines = kernel_lines(&log, "log");
    assert_eq!(
        modobj_effects(&lines, "klp_busyp")
            .into_iter()
            .filter(|l| l.starts_with("klp_modobj: "))
            .collect::<Vec<_>>(),
        [
            "klp_modobj: modobj: binfmt set up on binfmt_misc",
            "klp_modobj: modobj: binfmt set live on binfmt_misc",
            "klp_modobj: modobj: binfmt set leaving binfmt_misc",
            "klp_modobj: modobj: binfmt set down on binfmt_misc",
            "klp_modobj: modobj: binfmt tracker dropped (live=true)",
        ],
        "{lines:#?}"
    );
}

/// Loads `new` over the enabled `old` and expects the load to fail before anything of ours
/// ran, `old` staying enabled; returns the kernel log of the attempt.
fn refused_over(k: &Kernel, modules: &[&Path], setup: &str, old: &str, new: &str) -> Vec<String> {
    let log = boot(
        k,
        modules,
        &format!(
            "{setup}; dmesg -c >/dev/null\n\
             section insmod; insmod /mod/{new}.ko; echo \"rc=$?\"\n\
             waitlp\n\
             section after; lpstate\n\
             section log; dmesg -c\n"
        ),
    );
    assert_ne!(
        log.section("insmod").last().map(String::as_str),
        Some("rc=0"),
        "{new} must be refused"
    );
    assert!(
        log.section("after")
            .contains(&format!("patch {old} enabled=1 transition=0")),
        "{old} stays enabled: {:?}",
        log.section("after")
    );
    kernel_lines(&log, "log")
}

fn a_replace_that_changes_a_shared_shadow_layout_is_refused(target: Target) {
    // P1's Banner (shadow 0x10) is one bool: 1 byte, align 1. relayout keeps id 0x10 with a
    // bool and a u64: 16 bytes, align 8. Its own set 1 pre_patch must not run.
    let k = kernel(target);
    let p1 = build("p1", &k);
    let relayout = build("relayout", &k);
    let lines = refused_over(
        &k,
        &[&p1, &relayout],
        "load klp_v1",
        "klp_v1",
        "klp_relayout",
    );
    assert!(
        lines.iter().any(|l| l
            == "klp_relayout: klp-rs: relayout cannot replace p1: shadow 0x10 is `Banner` (1 \
                byte, align 1) in the outgoing patch and `Banner` (16 bytes, align 8) in the \
                incoming one, and its variables would pass from one layout to the other; give \
                the new layout a new shadow id"),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("relayout: set 1 up")),
        "nothing of relayout ran: {lines:#?}"
    );
}

fn a_replace_over_a_stack_is_refused_by_the_kernel(target: Target) {
    // A stacking patch registers the stacking state, which replacing patches lack: the
    // kernel refuses P4 (klp_is_patch_compatible) rather than let it replace P3 and the stack
    // while seeing only the stack's tables (klp_get_prev_state returns the topmost).
    let k = kernel(target);
    let p3 = build("p3", &k);
    let stack = build("stack", &k);
    let p4 = build("p4", &k);
    let lines = refused_over(
        &k,
        &[&p3, &stack, &p4],
        "load klp_v3; load klp_stack",
        "klp_stack",
        "klp_v4",
    );
    assert!(
        lines.iter().any(|l| l.contains(
            "Livepatch patch (klp_v4) is not compatible with the already installed livepatches"
        )),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("klp_v4: ")),
        "nothing of P4 ran: {lines:#?}"
    );
}

/// On a kernel whose core runs callback sets, a module that runs its sets itself (built as
/// for a stock kernel) and one that hands them to the kernel cannot replace each other,
/// either way: each would leave the other's sets to no one. They register different states,
/// so the kernel refuses (klp_is_patch_compatible) before anything runs, the enabled patch
/// stays, and a module of the second kind says why.
fn mixed_replaces_are_refused_by_the_kernel(target: Target) {
    let k = kernel(target);
    let dispatching =
        |p: &str| klp_harness::build_patch_dispatching(p, &k).unwrap_or_else(|e| panic!("{e:#}"));
    let refused =
        "Livepatch patch (klp_v4) is not compatible with the already installed livepatches";
    let (p3, p4) = (dispatching("p3"), build("p4", &k));
    let lines = refused_over(&k, &[&p3, &p4], "load klp_v3", "klp_v3", "klp_v4");
    assert!(lines.iter().any(|l| l.contains(refused)), "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("klp_v4: klp-rs: if a klp-rs patch built for a stock kernel")),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains(": set ")),
        "nothing ran: {lines:#?}"
    );
    let (p3, p4) = (build("p3", &k), dispatching("p4"));
    let lines = refused_over(&k, &[&p3, &p4], "load klp_v3", "klp_v3", "klp_v4");
    assert!(lines.iter().any(|l| l.contains(refused)), "{lines:#?}");
    assert!(
        !lines.iter().any(|l| l.contains(": set ")),
        "nothing ran: {lines:#?}"
    );
    // Stacking is no replace, and the kernel lets it through: the stacking module refuses in
    // vmlinux's pre_patch, after the kernel ran its sets' pre_patch, which it undoes.
    let (p3, stack) = (dispatching("p3"), build("stack", &k));
    let lines = refused_over(&k, &[&p3, &stack], "load klp_v3", "klp_v3", "klp_stack");
    assert!(
        lines.iter().any(|l| l.starts_with(
            "klp_stack: klp-rs: stack cannot stack on an enabled klp-rs patch built for a stock kernel"
        )),
        "{lines:#?}"
    );
}

fn a_foreign_patch_with_our_state_id_is_refused_without_an_oops(target: Target) {
    // klp_bogus registers our state id with data that are not klp-rs tables. P1 replacing it
    // reads that state: it must refuse (the boot fails on any oops), and klp_bogus stays.
    let k = kernel(target);
    let bogus =
        klp_harness::build_c_fixture("bogus", "klp_bogus", &k).unwrap_or_else(|e| panic!("{e:#}"));
    let p1 = build("p1", &k);
    let lines = refused_over(&k, &[&bogus, &p1], "load klp_bogus", "klp_bogus", "klp_v1");
    assert!(
        lines.iter().any(|l| l.starts_with(
            "klp_v1: klp-rs: p1 cannot take over from the patch below: its klp-rs state does \
             not point to klp-rs tables"
        )),
        "{lines:#?}"
    );
    // Our magic, then a null name: the tables are refused, and the message names no patch
    // rather than follow the pointer.
    let lines = refused_over(
        &k,
        &[&bogus, &p1],
        "insmod /mod/klp_bogus.ko variant=1; waitlp",
        "klp_bogus",
        "klp_v1",
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("klp_v1: klp-rs: p1 cannot replace the patch below: ")),
        "{lines:#?}"
    );
}

fn two_cpus_freeing_two_shadow_types_never_mix_them(target: Target) {
    // Patched code on two CPUs at once attaches and frees all variables of two shadow types
    // (Left through /proc/cmdline, Right through /proc/version). Each type's Drop checks the
    // mark its constructor left; one type's data run through the other's destructor shows.
    // `read` is a shell builtin: no fork per read, so the loops spend their time in the patch.
    let k = kernel(target);
    let ko = build("shadowrace", &k);
    let rounds = 1500;
    let log = klp_harness::boot_on(
        &k,
        &[&ko],
        &format!(
            "load klp_shadowrace; dmesg -c >/dev/null\n\
             section race; grep -c ^processor /proc/cpuinfo\n\
             (i=0; while [ $i -lt {rounds} ]; do read l </proc/cmdline; i=$((i+1)); done) &\n\
             j=0; while [ $j -lt {rounds} ]; do read l </proc/version; j=$((j+1)); done; wait\n\
             disable klp_shadowrace\n\
             section log; dmesg -c\n"
        ),
        2,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(log.section("race").first().map(String::as_str), Some("2"));
    let lines = kernel_lines(&log, "log");
    assert!(
        !lines.iter().any(|l| l.contains("dropped with mark")),
        "{lines:#?}"
    );
    // Every read runs the patched show at least once, and each run drops what it attached.
    let report = lines
        .iter()
        .filter_map(|l| l.strip_prefix("klp_shadowrace: shadowrace: "))
        .find(|r| r.contains(" dropped, "))
        .unwrap_or_else(|| panic!("no report: {lines:#?}"));
    let (dropped, wrong) = report
        .split_once(" dropped, ")
        .map(|(d, w)| (d.parse::<u64>().unwrap(), w.to_string()))
        .unwrap();
    assert!(dropped >= 2 * rounds, "{report}");
    assert_eq!(wrong, "0 with the wrong type");
}

fn every_failed_allocation_is_a_clean_error(target: Target) {
    // A test build of P3 whose runtime fails its Nth allocation (module parameter fail_alloc)
    // replaces P4, for N = 1, 2, ... until the load succeeds. Every allocation the runtime
    // makes in a callback that can fail must fail the load cleanly, P4 staying in effect; the
    // callbacks that cannot report a failure (post_patch, the disable's) must not allocate at
    // all: the first N that gets past the enable leaves the countdown at the next allocation,
    // wherever it is, and the disable is run with fail_alloc=1. Any allocation failure that
    // reached Rust's allocation-error path would panic the kernel and fail the boot.
    let k = kernel(target);
    let p4 = build("p4", &k);
    let p3 = klp_harness::build_patch_alloc_faults("p3", &k).unwrap_or_else(|e| panic!("{e:#}"));
    let log = boot(
        &k,
        &[&p4, &p3],
        "load klp_v4; dmesg -c >/dev/null\n\
         section attempts\n\
         n=1\n\
         while [ $n -lt 100 ]; do\n\
           if insmod /mod/klp_v3.ko fail_alloc=$n 2>/dev/null; then echo \"loaded at $n\"; break; fi\n\
           read l </proc/cmdline; echo \"failed at $n: $l\"\n\
           n=$((n+1))\n\
         done\n\
         waitlp\n\
         section loaded; lpstate; read l </proc/cmdline; echo \"$l\"\n\
         section disable; echo 1 > /sys/module/klp_v3/parameters/fail_alloc; disable klp_v3\n\
         section after; lpstate\n\
         section log; dmesg -c\n",
    );
    let attempts = log.section("attempts");
    let failed: Vec<&String> = attempts
        .iter()
        .filter(|l| l.starts_with("failed at "))
        .collect();
    assert!(
        !failed.is_empty(),
        "the runtime allocates while enabling: {attempts:?}"
    );
    for l in &failed {
        assert!(
            l.contains(": klp versioned p4 banner=true"),
            "P4 stays in effect after a failed load: {l}"
        );
    }
    assert_eq!(
        attempts.last().map(String::as_str),
        Some(format!("loaded at {}", failed.len() + 1).as_str()),
        "{attempts:?}"
    );
    let loaded = log.section("loaded");
    assert!(
        loaded.contains(&"patch klp_v3 enabled=1 transition=0".to_string()),
        "{loaded:?}"
    );
    assert_eq!(
        loaded.last().map(String::as_str),
        Some("klp versioned p3 banner=true reads=1"),
        "P3 in effect, the banner carried over"
    );
    assert_eq!(
        log.section("after"),
        Vec::<String>::new(),
        "the disable completed"
    );
    let lines = kernel_lines(&log, "log");
    assert!(!lines.iter().any(|l| l.contains("panic")), "{lines:#?}");
    // Nothing the runtime allocated outlives a failed load: module exit does not run after
    // a failed init, so the init itself must let the dispatcher go.
    let live: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("allocations live after the failed init"))
        .collect();
    // busybox's insmod tries finit_module, then init_module: a report per try.
    assert!(live.len() >= failed.len(), "{lines:#?}");
    for l in live {
        assert!(l.contains(": 0 allocations live"), "leaked: {l}");
    }
}

/// A path, as function names, from a runtime entry point of `ko` to the panic handler, if
/// there is one. Functions live in sections of their own (function sections), so a call is a
/// relocation from the caller's section to the callee's symbol or section. The runtime's entry
/// points are what the kernel and the C init call: the dispatcher, the release at exit, the
/// format query, and the shadow constructors and destructors. Hooks and patched functions are
/// the patch author's code, reached through the tables, not by calls.
fn path_to_panic_handler(ko: &Path) -> Option<Vec<String>> {
    use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SectionIndex};
    use std::collections::{HashMap, VecDeque};
    let data = read_ko(ko);
    let file = object::File::parse(&*data).unwrap();
    let mut name_of: HashMap<SectionIndex, String> = HashMap::new();
    for sym in file.symbols() {
        if let (Some(i), Ok(name)) = (sym.section_index(), sym.name()) {
            // 6.12's function padding puts a `__pfx_` symbol before each function.
            if sym.kind() == object::SymbolKind::Text
                && !name.is_empty()
                && !name.starts_with("__pfx_")
            {
                name_of.entry(i).or_insert_with(|| name.to_string());
            }
        }
    }
    let mut calls: HashMap<SectionIndex, Vec<SectionIndex>> = HashMap::new();
    for sec in file.sections() {
        for (_, rel) in sec.relocations() {
            let RelocationTarget::Symbol(si) = rel.target() else {
                continue;
            };
            if let Some(t) = file
                .symbol_by_index(si)
                .ok()
                .and_then(|s| s.section_index())
            {
                calls.entry(sec.index()).or_default().push(t);
            }
        }
    }
    let named = |pred: &dyn Fn(&str) -> bool| -> Vec<SectionIndex> {
        name_of
            .iter()
            .filter(|(_, n)| pred(n))
            .map(|(i, _)| *i)
            .collect()
    };
    let handler = named(&|n| n.contains("rust_begin_unwind"));
    let entries = named(&|n| {
        ["klp_rs_dispatch", "klp_rs_release", "klp_rs_format_version"].contains(&n)
            || n.contains("11klp_runtime6shadow4ctor")
            || n.contains("11klp_runtime6shadow4dtor")
    });
    assert!(
        entries.len() >= 3,
        "the runtime's entry points are not in {}",
        ko.display()
    );
    let mut from: HashMap<SectionIndex, SectionIndex> = HashMap::new();
    let mut queue: VecDeque<SectionIndex> = entries.iter().copied().collect();
    while let Some(s) = queue.pop_front() {
        if handler.contains(&s) {
            let mut path = vec![s];
            while let Some(p) = from.get(path.last().unwrap()) {
                path.push(*p);
            }
            path.reverse();
            let show = |i: &SectionIndex| name_of.get(i).cloned().unwrap_or(format!("{i:?}"));
            return Some(path.iter().map(show).collect());
        }
        for t in calls.get(&s).into_iter().flatten() {
            if !entries.contains(t) && !from.contains_key(t) {
                from.insert(*t, s);
                queue.push_back(*t);
            }
        }
    }
    None
}

fn no_runtime_entry_point_reaches_the_panic_handler(target: Target) {
    // In the kernel a Rust panic is a kernel panic. Checked on the built modules, whose
    // runtime LLVM has optimized with the patch's code: no call path leads from what the
    // kernel calls in the runtime to the panic handler.
    let k = kernel(target);
    for package in ["p3", "modobj", "shadowrace"] {
        let ko = build(package, &k);
        if let Some(path) = path_to_panic_handler(&ko) {
            panic!("{}: {}", ko.display(), path.join("\n  -> "));
        }
    }
}
