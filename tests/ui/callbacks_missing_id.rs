use klp_runtime::klp_callbacks;

#[klp_callbacks(object = "vmlinux")]
mod set {
    pub fn post_patch() {}
}

fn main() {}
