//! Misuse of the attribute macros is a compile error with a span and the fix. Each case in
//! `tests/ui/` has its reviewed `.stderr` (regenerate with `TRYBUILD=overwrite` and review).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/*.rs");
}
