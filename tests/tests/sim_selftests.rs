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
            // klp_cancel_transition completes the transition the other way.
            "'fail': unpatching complete",
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
            "'fail': unpatching complete",
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
            // The reversed transition completes: unpatching, for p4.
            "'p4': unpatching complete",
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

/// The case of the issue "The runtime keeps its promise": modobj (set 1 on vmlinux, set 2
/// on binfmt_misc owning shadow type 0x200) replaced by P2 (set 1 only) while binfmt_misc
/// stays loaded. The replace's nop object for binfmt_misc is discarded before the post
/// callbacks (klp_complete_transition: klp_discard_nops first), so set 2's teardown must not
/// depend on it. By the rule: set 2's pre_unpatch before the transition, its post_unpatch
/// after, then its shadow type freed (Drop runs), each exactly once.
fn replace_drops_a_module_object(binfmt_first: bool) {
    let mut k = Kernel::new();
    if binfmt_first {
        k.load_object("binfmt_misc").unwrap();
        k.insmod(&modobj::KLP_PATCH).unwrap();
    } else {
        k.insmod(&modobj::KLP_PATCH).unwrap();
        k.load_object("binfmt_misc").unwrap();
    }
    assert_eq!(store::count(0x200), 1);
    k.clear_log();
    k.insmod(&p2::KLP_PATCH).unwrap();
    let binfmt: Vec<String> = k
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("modobj: binfmt") || l.starts_with("'p2'"))
        .collect();
    assert_eq!(
        binfmt,
        [
            "modobj: binfmt set leaving binfmt_misc",
            "'p2': starting patching transition",
            "modobj: binfmt set down on binfmt_misc",
            "modobj: binfmt tracker dropped (live=true)",
            "'p2': patching complete",
        ]
    );
    assert_eq!(store::count(0x200), 0);
    assert_eq!(k.enabled_patch(), Some("p2"));
    // Nothing stays pinned: binfmt_misc unloads, and only P2 (which has nothing there) is
    // asked.
    k.clear_log();
    k.unload_object("binfmt_misc").unwrap();
    assert_eq!(k.lines(), Vec::<String>::new());
    k.disable("p2").unwrap();
}

#[test]
fn a_replace_drops_a_module_object_loaded_before_the_patch() {
    replace_drops_a_module_object(true)
}

#[test]
fn a_replace_drops_a_module_object_loaded_after_the_patch() {
    replace_drops_a_module_object(false)
}

/// A module the runtime pinned for a transition cannot be unloaded until it ends (rmmod
/// fails with EBUSY: the runtime holds a reference); forced out (`rmmod -f`), what the
/// transition set up on it is torn down while it is still there, and nothing stays pinned.
#[test]
fn a_module_pinned_for_a_replace_stays_until_the_transition_ends_or_is_forced_out() {
    let mut k = Kernel::new();
    k.insmod(&modobj::KLP_PATCH).unwrap();
    k.load_object("binfmt_misc").unwrap();
    k.insmod_pending(&p2::KLP_PATCH).unwrap();
    assert_eq!(
        k.unload_object("binfmt_misc"),
        Err(SimError::ModuleInUse("binfmt_misc".into()))
    );
    k.clear_log();
    k.force_unload_object("binfmt_misc");
    // modobj is not the transition patch: klp_module_going gives it both unpatch
    // callbacks, and its set on binfmt_misc goes with the module (shadow type freed). Its
    // pre_unpatch had already run in P2's plan, so it runs a second time here: the known
    // limit of docs/kernel-runtime.md (the outgoing module cannot know the plan ran it).
    assert_eq!(
        k.messages(),
        [
            "modobj: binfmt set leaving binfmt_misc",
            "modobj: binfmt set down on binfmt_misc",
            "modobj: binfmt tracker dropped (live=true)",
        ]
    );
    k.clear_log();
    k.complete_transition().unwrap();
    // At the end, P2 has nothing left to run for set 2: it went with the module.
    assert!(
        k.messages().iter().all(|m| !m.contains("binfmt")),
        "{:?}",
        k.lines()
    );
    assert_eq!(store::count(0x200), 0);
    k.disable("p2").unwrap();
}

/// A target module whose init fails after klp_module_coming: the enabled patch's sets on it
/// set up, then tear down at klp_module_going, once each.
#[test]
fn a_target_module_whose_init_fails_is_set_up_and_torn_down_once() {
    let mut k = Kernel::new();
    k.insmod(&modobj::KLP_PATCH).unwrap();
    k.clear_log();
    k.load_object_failing_init("binfmt_misc").unwrap();
    assert_eq!(
        k.messages(),
        [
            "modobj: binfmt set up on binfmt_misc",
            "modobj: binfmt set live on binfmt_misc",
            "modobj: binfmt set leaving binfmt_misc",
            "modobj: binfmt set down on binfmt_misc",
            "modobj: binfmt tracker dropped (live=true)",
        ]
    );
    assert_eq!(store::count(0x200), 0);
    k.disable("modobj").unwrap();
}

/// A C patch keys its shadow variables by the bare id it chose; klp-rs ids live under
/// `abi::SHADOW_NAMESPACE`. modobj's type 0x200 and a C patch's variable of id 0x200 on the
/// same object stay apart: the replace that frees modobj's leaves the C patch's alone.
#[test]
fn a_c_patchs_shadow_variable_with_the_same_id_is_left_alone() {
    use core::ffi::{c_int, c_void};
    use klp_runtime::abi::Gfp;
    unsafe extern "C" fn c_ctor(_: *mut c_void, _: *mut c_void, _: *mut c_void) -> c_int {
        0
    }
    // modobj attaches its type to no particular object (a null pointer): so does the C patch.
    let obj = std::ptr::null::<c_void>();
    // SAFETY: a constructor that writes nothing, and no constructor data.
    let c = unsafe {
        store::alloc(
            obj,
            0x200,
            8,
            c_ctor,
            std::ptr::null_mut(),
            false,
            Gfp::Kernel,
        )
    };
    assert!(!c.is_null());
    let mut k = Kernel::new();
    k.insmod(&modobj::KLP_PATCH).unwrap();
    k.load_object("binfmt_misc").unwrap();
    assert_eq!((store::count(0x200), store::count_key(0x200)), (1, 1));
    k.insmod(&p2::KLP_PATCH).unwrap();
    assert_eq!(
        store::count(0x200),
        0,
        "modobj's variable went with its set"
    );
    assert_eq!(store::count_key(0x200), 1, "the C patch's stays");
    store::free_all_key(0x200, None);
    k.disable("p2").unwrap();
}

/// A target module that loads during a replace: the outgoing patch sets it up, the replace
/// restricted to it begins, and when the transition completes every outgoing set leaves
/// (descending id) before any incoming set finishes setting up (ascending), whichever module
/// each is on: the rule's order, which the kernel follows where its core runs the sets.
#[test]
fn a_module_loading_during_a_replace_completes_in_the_rules_order() {
    let mut k = Kernel::new();
    k.load_object("klp_busy").unwrap();
    k.insmod(&modobj::KLP_PATCH).unwrap();
    k.clear_log();
    k.insmod_pending(&busy::KLP_PATCH).unwrap();
    k.load_object("binfmt_misc").unwrap();
    k.clear_log();
    k.complete_transition().unwrap();
    assert_eq!(
        k.step_lines(),
        [
            "modobj: set 2 binfmt_misc post_unpatch",
            "modobj: set 2 free shadow 0x200",
            "busy: set 7 klp_busy post_patch",
            "busy: set 8 binfmt_misc post_patch",
        ]
    );
}
