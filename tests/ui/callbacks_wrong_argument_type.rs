use klp_runtime::klp_callbacks;

#[klp_callbacks(id = 1)]
mod set {
    pub fn post_patch(_obj: &u32) {}
}

fn main() {}
