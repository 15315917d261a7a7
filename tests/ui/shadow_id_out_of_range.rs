use klp_runtime::klp_shadow;

#[klp_shadow(type = u64, id = 0x10, callbacks = 5000000000)]
pub struct Counter;

fn main() {}
