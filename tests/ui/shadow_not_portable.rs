use klp_runtime::klp_shadow;

/// A function pointer and a raw pointer may point into the module, which a replace unloads
/// while the variable lives on.
#[klp_shadow(id = 0x10, callbacks = 1)]
pub struct Handlers {
    pub count: u64,
    pub callback: fn(),
    pub last: *const u8,
}

#[klp_shadow(type = &'static mut u64, id = 0x11, callbacks = 1)]
pub struct StaticMut;

fn main() {}
