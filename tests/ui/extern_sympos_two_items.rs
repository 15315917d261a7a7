use klp_runtime::klp_extern;

#[klp_extern(sympos = 2)]
extern "C" {
    fn c_start();
    fn c_next();
}

fn main() {}
