use klp_runtime::klp_func;

#[klp_func(name = "cmdline_proc_show", name = "version_proc_show")]
extern "C" fn replacement() {}

fn main() {}
