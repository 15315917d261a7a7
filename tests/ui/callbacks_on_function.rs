use klp_runtime::klp_callbacks;

#[klp_callbacks(id = 1)]
pub fn pre_patch() -> klp_runtime::Result {
    Ok(())
}

fn main() {}
