//! The kernel livepatch selftests' shapes (tools/testing/selftests/livepatch), in the
//! simulator with real patch crates: a target module loaded after and before the patch,
//! `pre_patch` returning -ENODEV, disable, and a reversed transition. Expected logs are
//! written from the rule and the fixtures' code.

use klp_runtime::bindings::SeqFile;
use klp_runtime::sim::{store, Kernel, SimError};

#[test]
fn target_module_loaded_after_the_patch() {
    let mut k = Kernel::new();
    k.insmod(&modobj::KLP_PATCH).unwrap();
    k.load_object("binfmt_misc").unwrap();
    k.unload_object("binfmt_misc").unwrap();
    k.disable("modobj").unwrap();
    assert_eq!(
        k.lines(),
        [
            "modobj: set 1 vmlinux pre_patch",
            "modobj: core set up on vmlinux",
            "'modobj': starting patching transition",
            "'modobj': patching complete",
            // binfmt_misc comes: its set sets up (klp_module_coming)...
            "modobj: set 2 binfmt_misc pre_patch",
            "modobj: binfmt set up on binfmt_misc",
            "modobj: set 2 binfmt_misc post_patch",
            "modobj: binfmt set live on binfmt_misc",
            // ...and goes (klp_module_going): torn down, its shadow type freed (Drop runs).
            "modobj: set 2 binfmt_misc pre_unpatch",
            "modobj: binfmt set leaving binfmt_misc",
            "modobj: set 2 binfmt_misc post_unpatch",
            "modobj: binfmt set down on binfmt_misc",
            "modobj: set 2 free shadow 0x200",
            "modobj: binfmt tracker dropped (live=true)",
            "'modobj': starting unpatching transition",
            // A leaving set's types are freed whether or not its object is loaded: none left.
            "modobj: set 2 free shadow 0x200",
            "modobj: set 1 vmlinux post_unpatch",
            "modobj: core set down on vmlinux",
            "'modobj': unpatching complete",
        ]
    );
}

#[test]
fn target_module_loaded_before_the_patch() {
    let mut k = Kernel::new();
    k.load_object("binfmt_misc").unwrap();
    k.insmod(&modobj::KLP_PATCH).unwrap();
    k.disable("modobj").unwrap();
    assert_eq!(
        k.lines(),
        [
            "modobj: set 1 vmlinux pre_patch",
            "modobj: core set up on vmlinux",
            "modobj: set 2 binfmt_misc pre_patch",
            "modobj: binfmt set up on binfmt_misc",
            "'modobj': starting patching transition",
            "modobj: set 2 binfmt_misc post_patch",
            "modobj: binfmt set live on binfmt_misc",
            "'modobj': patching complete",
            "modobj: set 2 binfmt_misc pre_unpatch",
            "modobj: binfmt set leaving binfmt_misc",
            "'modobj': starting unpatching transition",
            "modobj: set 2 binfmt_misc post_unpatch",
            "modobj: binfmt set down on binfmt_misc",
            "modobj: set 2 free shadow 0x200",
            "modobj: binfmt tracker dropped (live=true)",
            "modobj: set 1 vmlinux post_unpatch",
            "modobj: core set down on vmlinux",
            "'modobj': unpatching complete",
        ]
    );
}

#[test]
fn the_patched_module_function_reads_the_new_text() {
    let mut buf = [0u8; 64];
    let mut pos = 0i64;
    // SAFETY: ordinary memory stands in for the user buffer and file position.
    let read = |buf: &mut [u8], pos: &mut i64| unsafe {
        modobj::bm_status_read(std::ptr::null_mut(), buf.as_mut_ptr(), buf.len(), pos)
    };
    let n = read(&mut buf, &mut pos);
    assert_eq!(&buf[..n as usize], modobj::STATUS);
    assert_eq!(read(&mut buf, &mut pos), 0, "EOF");
}

#[test]
fn pre_patch_enodev_cancels_and_leaves_the_old_patch_as_it_was() {
    let mut k = Kernel::new();
    k.insmod(&p3::KLP_PATCH).unwrap();
    let mut m = SeqFile::new();
    // SAFETY: a host SeqFile stands in for the kernel's.
    unsafe { p3::cmdline_proc_show(&mut m, std::ptr::null_mut()) };
    assert_eq!(store::count(0x20), 1);
    k.clear_log();

    let err = k.insmod(&fail::KLP_PATCH).unwrap_err();
    assert_eq!(
        err,
        SimError::PrePatchFailed {
            patch: "fail".into(),
            set: 9,
            errno: 19
        }
    );
    assert_eq!(
        k.lines(),
        [
            // fail has sets 1, 2, 9; p3 has 1 and 2: they are kept, so only set 9 is new.
            "fail: set 9 vmlinux pre_patch",
            "fail: refusing vmlinux",
            "fail: set 9 vmlinux pre_patch failed: 19",
        ]
    );
    assert_eq!(k.enabled_patch(), Some("p3"));
    assert_eq!(k.patch_modules(), ["p3"], "the failed module is unloaded");
    assert_eq!(
        store::count(0x20),
        1,
        "the old patch's shadow variables are untouched"
    );
}

#[test]
fn pre_patch_enodev_from_scratch_unwinds_the_sets_already_set_up() {
    let mut k = Kernel::new();
    let err = k.insmod(&fail::KLP_PATCH).unwrap_err();
    assert_eq!(
        err,
        SimError::PrePatchFailed {
            patch: "fail".into(),
            set: 9,
            errno: 19
        }
    );
    assert_eq!(
        k.lines(),
        [
            "fail: set 1 vmlinux pre_patch",
            "fail: set 2 vmlinux pre_patch",
            "fail: set 9 vmlinux pre_patch",
            "fail: refusing vmlinux",
            "fail: set 9 vmlinux pre_patch failed: 19",
            // Reverse order; set 2's shadow variable, attached in its pre_patch, is freed.
            "fail: set 2 vmlinux post_unpatch",
            "fail: set 2 free shadow 0x90",
            "fail: set 1 vmlinux post_unpatch",
        ]
    );
    assert_eq!(store::total(), 0);
    assert_eq!(k.enabled_patch(), None);
}

#[test]
fn a_reversed_replace_restores_the_old_patch() {
    let mut k = Kernel::new();
    k.insmod(&p3::KLP_PATCH).unwrap();
    k.clear_log();
    k.insmod_pending(&p4::KLP_PATCH).unwrap();
    assert!(k.in_transition());
    k.reverse_transition().unwrap();
    assert_eq!(
        k.lines(),
        [
            "p4: set 3 vmlinux pre_patch",
            "p4: task stats ready on vmlinux",
            "p3: set 2 vmlinux pre_unpatch",
            "'p4': starting patching transition",
            "'p4': reversing transition",
            // Undo in reverse: the old-only set is patched again, the new-only set torn down.
            "p3: set 2 vmlinux post_patch",
            "p3: counting reads per task on vmlinux",
            "p4: set 3 vmlinux post_unpatch",
            "p4: task stats retired on vmlinux",
            "p4: set 3 free shadow 0x30",
        ]
    );
    assert_eq!(k.enabled_patch(), Some("p3"));
    k.rmmod("p4").unwrap();
}

#[test]
fn a_reversed_disable_keeps_the_patch() {
    let mut k = Kernel::new();
    k.insmod(&p4::KLP_PATCH).unwrap();
    k.clear_log();
    k.disable_pending("p4").unwrap();
    k.reverse_transition().unwrap();
    assert_eq!(
        k.step_lines(),
        [
            "p4: set 3 vmlinux pre_unpatch",
            "p4: set 1 vmlinux pre_unpatch",
            "p4: set 1 vmlinux post_patch",
            "p4: set 3 vmlinux post_patch",
        ]
    );
    assert_eq!(k.enabled_patch(), Some("p4"));
}

#[test]
fn an_enabled_patch_cannot_be_removed() {
    let mut k = Kernel::new();
    k.insmod(&p1::KLP_PATCH).unwrap();
    assert_eq!(k.rmmod("p1"), Err(SimError::Busy("p1".into())));
    k.insmod(&p2::KLP_PATCH).unwrap();
    k.rmmod("p1").unwrap();
    assert_eq!(
        k.insmod(&p2::KLP_PATCH),
        Err(SimError::AlreadyLoaded("p2".into()))
    );
}

/// Patched code says whether its allocation may sleep: in the simulator, code run as the
/// kernel runs code that may not sleep (`store::atomic`) gets the kernel's might_sleep report
/// for a sleeping allocation, and none for the `_atomic` variant.
#[test]
fn a_sleeping_shadow_allocation_in_atomic_context_is_reported() {
    let (a, b) = (0x1000usize as *const u8, 0x2000usize as *const u8);
    let _ = store::take_warnings();
    store::atomic(|| p4::TaskStats::get_or_alloc(a, Default::default).unwrap());
    let warnings = store::take_warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("BUG: sleeping function called from invalid context")),
        "{warnings:?}"
    );
    store::atomic(|| p4::TaskStats::get_or_alloc_atomic(b, Default::default).unwrap());
    p4::TaskStats::get_or_alloc(b, Default::default).unwrap();
    assert_eq!(store::take_warnings(), Vec::<String>::new());
    p4::TaskStats::free_all();
}
