use klp_runtime::klp_shadow;

#[klp_shadow(type = u64, id = 0x10, callbacks = 1)]
pub struct Counter {
    pub n: u64,
}

fn main() {}
