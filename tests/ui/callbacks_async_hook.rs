use klp_runtime::klp_callbacks;

#[klp_callbacks(id = 1)]
mod set {
    pub async fn post_patch() {}
}

fn main() {}
