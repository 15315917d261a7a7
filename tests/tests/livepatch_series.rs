//! The livepatch-core series for callback sets (`kernel/`): it applies to Debian's
//! `linux-source-6.12` (the setup step builds the kernel with it), it is
//! `checkpatch.pl --strict` clean, and in that kernel, booted under qemu, its selftests and
//! the kernel's existing livepatch selftests pass, as `make run_tests` would run them.

use std::time::Duration;

fn patched() -> klp_harness::patched::Patched {
    klp_harness::patched_kernel().unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn the_series_is_checkpatch_strict_clean() {
    let p = patched();
    let series = klp_harness::kernel_series().unwrap();
    // FILE_PATH_CHANGES asks whether MAINTAINERS needs updating for every new file: the
    // LIVE PATCHING entry's F: lines (kernel/livepatch/, tools/testing/selftests/livepatch/)
    // cover them already.
    let out = std::process::Command::new("perl")
        .arg(p.source.join("scripts/checkpatch.pl"))
        .args([
            "--strict",
            "--no-tree",
            "--ignore",
            "FILE_PATH_CHANGES",
            "--terse",
        ])
        .args(&series.patches)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "checkpatch.pl --strict:\n{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("total:") && !l.contains("0 errors, 0 warnings, 0 checks"))
            .count(),
        0,
        "{text}"
    );
}

#[test]
fn the_kernels_livepatch_selftests_pass_with_the_series() {
    let p = patched();
    let (extra, script) = p.selftests_guest(klp_harness::patched::SELFTESTS).unwrap();
    let log = klp_harness::boot_with(&p.kernel, &script, &extra, Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e:#}"));
    for t in klp_harness::patched::SELFTESTS {
        let lines = log.section(t);
        let tests: Vec<&String> = lines.iter().filter(|l| l.starts_with("TEST: ")).collect();
        assert!(!tests.is_empty(), "{t} ran no test:\n{}", lines.join("\n"));
        assert_eq!(
            lines.last().map(String::as_str),
            Some("exit 0"),
            "{t} failed:\n{}",
            lines.join("\n")
        );
        // functions.sh's check_result prints "not ok" and exits with 1 on any mismatch. (A
        // TEST line need not end in "ok": test_klp_state raises the console log level, so
        // kernel lines land between the two.)
        assert!(
            !lines.iter().any(|l| l.contains("not ok")),
            "{t}:\n{}",
            lines.join("\n")
        );
    }
    // The series' own tests, by name: a test dropped from the script would not go unnoticed.
    let ours: Vec<String> = log
        .section("test-callback-sets.sh")
        .iter()
        .filter_map(|l| {
            l.strip_prefix("TEST: ")?
                .strip_suffix(" ... ok")
                .map(str::to_string)
        })
        .collect();
    assert_eq!(
        ours,
        [
            "enable and disable a patch with callback sets",
            "replace runs only the sets one patch has",
            "a failing pre_patch leaves the enabled patch as it was",
            "replace tears down a set on a module only the replaced patch has",
            "a module coming and going sets up and tears down its sets",
            "a module loading during a replace",
            "a module loading during a replace, with a set both patches have",
            "a reversed replace sets the replaced patch's sets up again",
            "callback set ids are refused when they cannot identify a set",
        ]
    );
}
