use klp_runtime::klp_callbacks;

#[klp_callbacks(id = 1)]
mod set {
    pub fn pre_pach(_obj: &klp_runtime::Object) -> klp_runtime::Result {
        Ok(())
    }
}

fn main() {}
