//! The versioned example P1 [1], P2 [1], P3 [1,2], P4 [1,3] in the simulator: every ordered
//! replace pair, with the log written by hand from the rule (DEVELOPERS.md) and from what each
//! example's hooks print — not printed by the code under test.

use klp_runtime::abi::PatchHeader;
use klp_runtime::bindings::{set_current_task, SeqFile};
use klp_runtime::sim::{store, Kernel};

fn patch(n: usize) -> &'static PatchHeader {
    [
        &p1::KLP_PATCH,
        &p2::KLP_PATCH,
        &p3::KLP_PATCH,
        &p4::KLP_PATCH,
    ][n - 1]
}

/// What `insmod pN` logs when it replaces `pM`: (M, N, lines). As in the kernel, the
/// transition's completion is announced after its post callbacks.
fn expected() -> Vec<(usize, usize, Vec<&'static str>)> {
    // Set 1 is in every patch: a replace never runs it, and its shadow 0x10 carries over.
    // Set 2 (P3) has post_patch and
    // pre_unpatch and owns shadow 0x20; set 3 (P4) has all four hooks and owns 0x30.
    vec![
        (
            1,
            2,
            vec![
                "'p2': starting patching transition",
                "'p2': patching complete",
            ],
        ),
        (
            2,
            1,
            vec![
                "'p1': starting patching transition",
                "'p1': patching complete",
            ],
        ),
        (
            1,
            3,
            vec![
                "'p3': starting patching transition",
                "p3: set 2 vmlinux post_patch",
                "p3: counting reads per task on vmlinux",
                "'p3': patching complete",
            ],
        ),
        (
            2,
            3,
            vec![
                "'p3': starting patching transition",
                "p3: set 2 vmlinux post_patch",
                "p3: counting reads per task on vmlinux",
                "'p3': patching complete",
            ],
        ),
        (
            3,
            1,
            vec![
                "p3: set 2 vmlinux pre_unpatch",
                "'p1': starting patching transition",
                "p3: set 2 free shadow 0x20",
                "'p1': patching complete",
            ],
        ),
        (
            3,
            2,
            vec![
                "p3: set 2 vmlinux pre_unpatch",
                "'p2': starting patching transition",
                "p3: set 2 free shadow 0x20",
                "'p2': patching complete",
            ],
        ),
        (
            1,
            4,
            vec![
                "p4: set 3 vmlinux pre_patch",
                "p4: task stats ready on vmlinux",
                "'p4': starting patching transition",
                "p4: set 3 vmlinux post_patch",
                "'p4': patching complete",
            ],
        ),
        (
            2,
            4,
            vec![
                "p4: set 3 vmlinux pre_patch",
                "p4: task stats ready on vmlinux",
                "'p4': starting patching transition",
                "p4: set 3 vmlinux post_patch",
                "'p4': patching complete",
            ],
        ),
        (
            4,
            1,
            vec![
                "p4: set 3 vmlinux pre_unpatch",
                "'p1': starting patching transition",
                "p4: set 3 vmlinux post_unpatch",
                "p4: task stats retired on vmlinux",
                "p4: set 3 free shadow 0x30",
                "'p1': patching complete",
            ],
        ),
        (
            4,
            2,
            vec![
                "p4: set 3 vmlinux pre_unpatch",
                "'p2': starting patching transition",
                "p4: set 3 vmlinux post_unpatch",
                "p4: task stats retired on vmlinux",
                "p4: set 3 free shadow 0x30",
                "'p2': patching complete",
            ],
        ),
        (
            3,
            4,
            vec![
                "p4: set 3 vmlinux pre_patch",
                "p4: task stats ready on vmlinux",
                "p3: set 2 vmlinux pre_unpatch",
                "'p4': starting patching transition",
                "p3: set 2 free shadow 0x20",
                "p4: set 3 vmlinux post_patch",
                "'p4': patching complete",
            ],
        ),
        (
            4,
            3,
            vec![
                "p4: set 3 vmlinux pre_unpatch",
                "'p3': starting patching transition",
                "p4: set 3 vmlinux post_unpatch",
                "p4: task stats retired on vmlinux",
                "p4: set 3 free shadow 0x30",
                "p3: set 2 vmlinux post_patch",
                "p3: counting reads per task on vmlinux",
                "'p3': patching complete",
            ],
        ),
    ]
}

/// Reads `/proc/cmdline` through the enabled patch, as task `task`.
fn read_cmdline(k: &Kernel, task: usize) -> String {
    set_current_task(task);
    let mut m = SeqFile::new();
    let show = match k.enabled_patch() {
        Some("p1") => p1::cmdline_proc_show,
        Some("p2") => p2::cmdline_proc_show,
        Some("p3") => p3::cmdline_proc_show,
        Some("p4") => p4::cmdline_proc_show,
        other => panic!("no versioned patch enabled: {other:?}"),
    };
    // SAFETY: a host SeqFile stands in for the kernel's.
    unsafe { show(&mut m, std::ptr::null_mut()) };
    m.text().to_string()
}

#[test]
fn all_twelve_ordered_replace_pairs() {
    let cases = expected();
    assert_eq!(cases.len(), 12);
    for (from, to, want) in cases {
        let mut k = Kernel::new();
        k.insmod(patch(from)).unwrap();
        // Give the outgoing patch's shadow types something to free.
        for task in [0x1000, 0x2000] {
            read_cmdline(&k, task);
        }
        k.clear_log();
        k.insmod(patch(to))
            .unwrap_or_else(|e| panic!("p{from} -> p{to}: {e}"));
        assert_eq!(k.lines(), want, "p{from} -> p{to}");
        assert_eq!(k.enabled_patch(), Some(["p1", "p2", "p3", "p4"][to - 1]));
        k.rmmod(&format!("p{from}")).unwrap();
        k.disable(&format!("p{to}")).unwrap();
        assert_eq!(
            store::total(),
            0,
            "p{from} -> p{to}: shadow variables left after disable"
        );
    }
}

#[test]
fn shadow_counters_follow_their_set_across_upgrade_and_downgrade() {
    let mut k = Kernel::new();
    k.insmod(&p3::KLP_PATCH).unwrap();
    assert_eq!(
        read_cmdline(&k, 0xa),
        "klp versioned p3 banner=true reads=1\n"
    );
    assert_eq!(
        read_cmdline(&k, 0xa),
        "klp versioned p3 banner=true reads=2\n"
    );
    assert_eq!(
        read_cmdline(&k, 0xb),
        "klp versioned p3 banner=true reads=1\n"
    );
    assert_eq!(store::count(0x20), 2);

    // Upgrade: set 2 leaves, its counters go; set 3 starts afresh.
    k.insmod(&p4::KLP_PATCH).unwrap();
    assert_eq!(store::count(0x20), 0);
    assert_eq!(
        read_cmdline(&k, 0xa),
        "klp versioned p4 banner=true reads=1 bytes=16\n"
    );
    assert_eq!(store::count(0x30), 1);

    // Downgrade to P1: set 3 leaves and its records are freed; set 1 stays up.
    k.rmmod("p3").unwrap();
    k.insmod(&p1::KLP_PATCH).unwrap();
    assert_eq!((store::count(0x20), store::count(0x30)), (0, 0));
    assert_eq!(store::count(0x10), 1, "set 1's state carries over");
    assert_eq!(read_cmdline(&k, 0xa), "klp versioned p1 banner=true\n");
}

#[test]
fn the_banner_is_off_while_a_patch_is_disabled_and_on_while_enabled() {
    let mut k = Kernel::new();
    k.insmod(&p2::KLP_PATCH).unwrap();
    assert!(p2::common::banner_on());
    k.disable("p2").unwrap();
    assert!(!p2::common::banner_on());
    assert_eq!(
        store::total(),
        0,
        "set 1's banner state must be freed with set 1"
    );
    assert_eq!(
        k.lines(),
        [
            "p2: set 1 vmlinux pre_patch",
            "p2: banner ready on vmlinux",
            "'p2': starting patching transition",
            "p2: set 1 vmlinux post_patch",
            "'p2': patching complete",
            "p2: set 1 vmlinux pre_unpatch",
            "'p2': starting unpatching transition",
            "p2: set 1 vmlinux post_unpatch",
            "p2: banner gone from vmlinux",
            "p2: set 1 free shadow 0x10",
            "'p2': unpatching complete",
        ]
    );
}
