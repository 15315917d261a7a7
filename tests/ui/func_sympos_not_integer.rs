use klp_runtime::klp_func;

#[klp_func(name = "cmdline_proc_show", sympos = "1")]
extern "C" fn replacement() {}

fn main() {}
