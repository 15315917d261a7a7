use klp_runtime::klp_func;

#[klp_func(name = "cmdline_proc_show")]
extern "C" fn replacement<T>(_t: *mut T) {}

fn main() {}
