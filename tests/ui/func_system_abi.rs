use klp_runtime::klp_func;

#[klp_func(name = "cmdline_proc_show")]
extern "system" fn replacement() {}

fn main() {}
