use klp_runtime::klp_shadow;

#[klp_shadow(type = [u8], id = 0x10, callbacks = 1)]
pub struct Bytes;

fn main() {}
