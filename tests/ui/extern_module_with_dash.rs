use klp_runtime::klp_extern;

#[klp_extern(object = "snd-dummy")]
extern "C" {
    fn snd_card_dummy_new();
}

fn main() {}
