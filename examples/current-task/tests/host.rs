//! The patch under `cargo test`: on the host `task_struct` is a plain struct with the
//! declared members, and the simulator's current task is whatever the test says.

use core::ffi::c_char;

use current_task::{loadavg_proc_show, task_struct};
use klp_runtime::bindings::{set_current_task, Opaque, SeqFile};
use klp_runtime::sim::{rcu_read_depth, spin_held};

fn comm(name: &str) -> [c_char; 16] {
    let mut out = [0; 16];
    for (o, b) in out.iter_mut().zip(name.bytes()) {
        *o = b as c_char;
    }
    out
}

#[test]
fn proc_loadavg_tells_who_reads_it() {
    let init = task_struct {
        pid: 1,
        tgid: 1,
        comm: comm("init"),
        real_parent: std::ptr::null(),
        alloc_lock: Opaque::new(),
    };
    let reader = task_struct {
        pid: 42,
        tgid: 40,
        comm: comm("cat"),
        real_parent: &init,
        alloc_lock: Opaque::new(),
    };
    set_current_task(&reader as *const task_struct as usize);
    let mut m = SeqFile::new();
    // SAFETY: a host SeqFile stands in for the kernel's; the current task is `reader`.
    unsafe { loadavg_proc_show(&mut m, std::ptr::null_mut()) };
    assert_eq!(m.text(), "pid 42 tgid 40 comm cat ppid 1\n");
    // Every section and lock the patch took, it ended.
    assert_eq!(rcu_read_depth(), 0);
    assert!(!spin_held(reader.alloc_lock_ptr()));
    // container_of, from a member back to its struct.
    // SAFETY: `comm_ptr` points into `reader`.
    let back = unsafe { task_struct::from_comm_ptr(reader.comm_ptr()) };
    assert_eq!(back, &reader as *const task_struct);
}
