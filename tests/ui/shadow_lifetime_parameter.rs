use klp_runtime::klp_shadow;

#[klp_shadow(id = 0x10, callbacks = 1)]
pub struct Record<'a> {
    pub name: &'a str,
}

fn main() {}
