use klp_runtime::klp_shadow;

#[repr(align(64))]
pub struct CacheLine([u8; 64]);

// SAFETY: plain bytes.
unsafe impl klp_runtime::shadow::Portable for CacheLine {}

#[klp_shadow(type = CacheLine, id = 0x10, callbacks = 1)]
pub struct PerTask;

fn main() {}
