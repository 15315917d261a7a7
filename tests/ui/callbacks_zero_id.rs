use klp_runtime::klp_callbacks;

#[klp_callbacks(id = 0)]
mod set {
    pub fn post_patch() {}
}

fn main() {}
