use klp_runtime::klp_callbacks;

#[klp_callbacks(id = 1)]
mod set {
    fn helper() {}
}

fn main() {}
