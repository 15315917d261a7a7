use klp_runtime::klp_callbacks;

#[klp_callbacks(id = 1)]
mod set {
    pub fn post_patch() -> i32 {
        0
    }
}

fn main() {}
