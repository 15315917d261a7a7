use klp_runtime::klp_callbacks;

#[klp_callbacks(id = 1)]
mod set {
    pub fn pre_patch(_obj: &klp_runtime::Object) {}
}

fn main() {}
