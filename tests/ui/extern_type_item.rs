use klp_runtime::klp_extern;

#[klp_extern]
extern "C" {
    type Opaque;
    fn ok();
}

fn main() {}
