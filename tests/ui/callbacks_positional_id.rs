use klp_runtime::klp_callbacks;

#[klp_callbacks(3)]
mod set {
    pub fn post_patch() {}
}

fn main() {}
