use klp_runtime::klp_shadow;

#[klp_shadow(type = &u64, id = 0x11, callbacks = 1)]
pub struct Borrowed;

fn main() {}
