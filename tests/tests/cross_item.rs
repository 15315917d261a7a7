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
                first: format!("broken::one ({file}:30)"),
                second: format!("broken::two ({file}:40)"),
            },
        ]
    );
    let msg = err.to_string();
    assert!(msg.contains("callback set id 4 is declared twice"), "{msg}");
    assert!(msg.contains("declare `#[klp_callbacks(id = 7)]`"), "{msg}");
}
