use klp_runtime::klp_func;

#[klp_func(name = "cmdline_proc_show")]
fn replacement() -> i32 {
    0
}

fn main() {}
