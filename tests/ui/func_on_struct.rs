use klp_runtime::klp_func;

#[klp_func(name = "cmdline_proc_show")]
struct NotAFunction;

fn main() {}
