use klp_runtime::klp_shadow;

#[klp_shadow(type = &'static mut u64, id = 0x10, callbacks = 1)]
pub struct Fine;

#[klp_shadow(type = &u64, id = 0x11, callbacks = 1)]
pub struct Borrowed;

fn main() {}
