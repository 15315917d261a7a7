//! The patch under `cargo test`, on the host: the kernel symbols it uses are the test's.

use core::ffi::c_char;

use klp_runtime::bindings::SeqFile;

/// Stands in for init/main.c's variable: on the host the patch's `extern` block links to
/// whatever defines the plain name.
#[allow(non_upper_case_globals)]
#[no_mangle]
static mut saved_command_line: *const c_char = c"console=ttyS0 root=/dev/vda quiet".as_ptr();

#[test]
fn proc_cmdline_shows_the_saved_command_line_and_the_suffix() {
    let mut m = SeqFile::new();
    // SAFETY: a host SeqFile stands in for the kernel's.
    unsafe { cmdline_string::cmdline_proc_show(&mut m, std::ptr::null_mut()) };
    assert_eq!(m.text(), "console=ttyS0 root=/dev/vda quiet klp_rs=1\n");
}
