//! A long random walk over the versioned example P1..P4 (upgrades, downgrades, reads by
//! several tasks, removals of replaced modules), ending with disable: nothing may be left.

use klp_runtime::abi::PatchHeader;
use klp_runtime::bindings::{set_current_task, SeqFile};
use klp_runtime::sim::{store, Kernel};
use proptest::prelude::*;

const PATCHES: [(&str, &PatchHeader); 4] = [
    ("p1", &p1::KLP_PATCH),
    ("p2", &p2::KLP_PATCH),
    ("p3", &p3::KLP_PATCH),
    ("p4", &p4::KLP_PATCH),
];

fn read(k: &Kernel, task: usize) {
    set_current_task(task);
    let show = match k.enabled_patch() {
        Some("p1") => p1::cmdline_proc_show,
        Some("p2") => p2::cmdline_proc_show,
        Some("p3") => p3::cmdline_proc_show,
        Some("p4") => p4::cmdline_proc_show,
        _ => return,
    };
    // SAFETY: a host SeqFile stands in for the kernel's.
    unsafe { show(&mut SeqFile::new(), std::ptr::null_mut()) };
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn versioned_random_walk_leaves_nothing(steps in prop::collection::vec((0usize..4, 0usize..3), 20..200)) {
        let mut k = Kernel::new();
        for (p, task) in steps {
            let (name, header) = PATCHES[p];
            if k.enabled_patch() != Some(name) {
                // Remove the module if it is loaded but no longer enabled (replaced), then load.
                let _ = k.rmmod(name);
                k.insmod(header).unwrap();
            }
            read(&k, 0x100 + task);
            // Exactly the shadow types the enabled version's sets own are live.
            let live = |id| store::count(id) > 0;
            prop_assert!(live(0x10), "set 1's state is always there while a version is enabled");
            prop_assert_eq!(live(0x20), name == "p3");
            prop_assert_eq!(live(0x30), name == "p4");
        }
        let enabled = k.enabled_patch().unwrap();
        k.disable(enabled).unwrap();
        prop_assert_eq!(store::total(), 0);
    }
}
