use klp_runtime::klp_shadow;

#[klp_shadow(type = u64, id = 0x1_0000_0000, callbacks = 1)]
pub struct Wide;

fn main() {}
