use klp_runtime::klp_callbacks;

#[klp_callbacks(id = 1)]
mod set {
    pub fn post_unpatch(_obj: &klp_runtime::Object, _extra: u32) {}
}

fn main() {}
