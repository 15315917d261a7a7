use klp_runtime::klp_func;

#[klp_func(object = "vmlinux")]
extern "C" fn replacement() {}

fn main() {}
