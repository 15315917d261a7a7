use klp_runtime::klp_func;

#[klp_func(name = "")]
extern "C" fn replacement() {}

fn main() {}
