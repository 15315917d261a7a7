//! What no single macro can see is refused when the simulator loads the crate's tables,
//! naming both places.

use klp_runtime::check::CheckError;
use klp_runtime::sim::{Kernel, SimError};

#[test]
fn duplicate_sets_orphan_shadows_and_double_patches_are_refused_naming_both_places() {
    let err = Kernel::new().insmod(&broken::KLP_PATCH).unwrap_err();
    let SimError::Check { patch, errors } = &err else {
        panic!("{err}")
    };
    assert_eq!(patch, "broken");
    let file = "tests/fixtures/broken/src/lib.rs";
    assert_eq!(
        errors,
        &[
            CheckError::DuplicateSet {
                id: 4,
                first: format!("broken::first ({file}:10)"),
                second: format!("broken::second ({file}:15)"),
            },
            CheckError::UnknownOwner {
                shadow: 0x70,
                type_name: "u32".into(),
                owner: 7,
                origin: format!("broken::Orphan ({file}:21)"),
            },
            CheckError::DuplicateFunc {
                object: "vmlinux".into(),
                name: "cmdline_proc_show".into(),
                sympos: 0,
                first: format!("broken::one ({file}:32)"),
                second: format!("broken::two ({file}:42)"),
            },
        ]
    );
    let msg = err.to_string();
    assert!(msg.contains("callback set id 4 is declared twice"), "{msg}");
    assert!(msg.contains("declare `#[klp_callbacks(id = 7)]`"), "{msg}");
}

/// Shadow variables carry over a replace by id: the incoming code reads what the outgoing
/// code wrote. P1's `Banner` is one `bool` (1 byte, align 1); the relayout fixture keeps id
/// 0x10 with a `bool` and a `u64` (16 bytes, align 8).
#[test]
fn a_replace_that_changes_a_shared_shadow_layout_is_refused_before_anything_runs() {
    let mut k = Kernel::new();
    k.insmod(&p1::KLP_PATCH).unwrap();
    k.clear_log();
    let err = k.insmod(&relayout::KLP_PATCH).unwrap_err();
    // The dispatcher itself refuses, in relayout's pre_patch for vmlinux, with the line the
    // kernel module prints.
    let SimError::Refused { patch, errno, why } = &err else {
        panic!("not refused by the runtime: {err}");
    };
    assert_eq!((patch.as_str(), errno.get()), ("relayout", 22));
    assert_eq!(
        why,
        &[
            "klp-rs: relayout cannot replace p1: shadow 0x10 is `Banner` (1 byte, align 1) in the \
           outgoing patch and `Banner` (16 bytes, align 8) in the incoming one, and its \
           variables would pass from one layout to the other; give the new layout a new shadow \
           id"
        ]
    );
    assert!(k.step_lines().is_empty(), "nothing ran: {:?}", k.lines());
    assert!(k.messages().is_empty(), "nothing ran: {:?}", k.messages());
    assert_eq!(k.enabled_patch(), Some("p1"));
}

/// A patch that stacks must not share a set or a shadow id with the patch below it: P2 on
/// top of P1 would share set 1 and shadow 0x10.
#[test]
fn a_stacking_patch_may_not_share_sets_or_shadow_ids_with_the_patch_below() {
    use klp_runtime::check::{stack_conflicts, Conflict};
    use klp_runtime::reader::read_memory;
    // SAFETY: headers of crates linked into this test.
    let (p1, p2, stack) = unsafe {
        (
            read_memory(&p1::KLP_PATCH).unwrap(),
            read_memory(&p2::KLP_PATCH).unwrap(),
            read_memory(&stack::KLP_PATCH).unwrap(),
        )
    };
    assert_eq!(
        stack_conflicts(&p1, &p2).collect::<Vec<_>>(),
        [
            Conflict::StackedSet { id: 1 },
            Conflict::StackedShadow { id: 0x10 }
        ]
    );
    assert_eq!(stack_conflicts(&p1, &stack).count(), 0);
}

/// Format 1 handed shadow ids to the kernel bare; format 2 puts them in the klp-rs namespace.
/// A shadow id shared across that change would not carry its variables over: refused, naming
/// the id and the fix.
#[test]
fn a_replace_across_the_shadow_namespace_change_is_refused_for_shared_ids() {
    use klp_runtime::check::{replace_conflicts, Conflict};
    use klp_runtime::reader::read_memory;
    // SAFETY: headers of crates linked into this test.
    let (mut old, new) = unsafe {
        (
            read_memory(&p1::KLP_PATCH).unwrap(),
            read_memory(&p2::KLP_PATCH).unwrap(),
        )
    };
    assert_eq!(replace_conflicts(&old, &new).count(), 0);
    old.format_version = 1;
    let conflicts: Vec<_> = replace_conflicts(&old, &new).collect();
    assert_eq!(
        conflicts,
        [Conflict::ShadowNamespace {
            id: 0x10,
            old_format: 1
        }]
    );
    assert!(conflicts[0]
        .to_string()
        .contains("give the type a new shadow id"));
}

/// A shadow id wider than 24 bits cannot go under the namespace: the macro refuses it (the
/// UI test shadow_id_too_wide, whose message names the same limit as the runtime), and so
/// does the cross-item check of tables written by other means.
#[test]
fn shadow_ids_wider_than_24_bits_are_refused() {
    use klp_runtime::abi::SHADOW_ID_MAX;
    use klp_runtime::check::{check, CheckError};
    use klp_runtime::reader::read_memory;
    let ui = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/ui/shadow_id_too_wide.stderr"
    ))
    .unwrap();
    assert!(ui.contains(&format!("up to {SHADOW_ID_MAX:#x}")), "{ui}");
    // SAFETY: the header of a crate linked into this test.
    let mut p = unsafe { read_memory(&p1::KLP_PATCH).unwrap() };
    p.shadows[0].id = SHADOW_ID_MAX + 1;
    assert!(check(&p).iter().any(
        |e| matches!(e, CheckError::ShadowIdTooWide { shadow, .. } if *shadow == SHADOW_ID_MAX + 1)
    ));
}

/// A set id names one object: a replace that has it on another object would take over a
/// set that was never set up there and leave the old one set up for ever. Refused, naming
/// both objects, as the kernel refuses it where its core runs the sets.
#[test]
fn a_replace_that_moves_a_set_to_another_object_is_refused() {
    use klp_runtime::check::{replace_conflicts, Conflict};
    use klp_runtime::reader::{read_memory, ObjectName};
    // SAFETY: headers of crates linked into this test.
    let (old, mut new) = unsafe {
        (
            read_memory(&p1::KLP_PATCH).unwrap(),
            read_memory(&p2::KLP_PATCH).unwrap(),
        )
    };
    assert_eq!(replace_conflicts(&old, &new).count(), 0);
    let binfmt = ObjectName::new(c"binfmt_misc").unwrap();
    let set = new.sets.iter_mut().find(|s| s.id == 1).unwrap();
    set.object = binfmt;
    let conflicts: Vec<_> = replace_conflicts(&old, &new).collect();
    assert_eq!(
        conflicts,
        [Conflict::SetMoved {
            id: 1,
            old: ObjectName::new(c"vmlinux").unwrap(),
            new: binfmt
        }]
    );
    assert!(conflicts[0]
        .to_string()
        .contains("give the set on binfmt_misc a new id"));
}
