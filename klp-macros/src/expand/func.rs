use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemFn;

use crate::internals::attr::{Args, Kind};
use crate::internals::check;
use crate::internals::ctxt::Ctxt;
use crate::internals::symbol::{NAME, OBJECT, SYMPOS, VMLINUX};

pub fn expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let f: ItemFn = syn::parse2(item).map_err(|e| {
        syn::Error::new(
            e.span(),
            "#[klp_func] goes on the replacement function: `extern \"C\" fn name(...) { ... }`",
        )
    })?;
    let mut cx = Ctxt::default();
    let args = Args::parse(
        &mut cx,
        args,
        &[(NAME, Kind::Str), (OBJECT, Kind::Str), (SYMPOS, Kind::Int)],
    );
    let name = args.str(&mut cx, NAME);
    if args.missing(NAME) {
        cx.push(syn::Error::new(
            proc_macro2::Span::call_site(),
            "missing `name`: the kernel function to replace, for example #[klp_func(name = \"cmdline_proc_show\")]",
        ));
    }
    let object = args
        .str(&mut cx, OBJECT)
        .map_or(VMLINUX.to_string(), |o| o.value());
    let sympos = args.int::<u32>(&mut cx, SYMPOS).map_or(0, |(v, _)| v);
    check::replacement_fn(&mut cx, &f);
    cx.check()?;

    let ident = &f.sig.ident;
    let name = name.expect("checked").value();
    let prototype = super::prototype::check("#[klp_func]", &name, &object, &f.sig);
    let object = super::cstr(&object);
    let name = super::cstr(&name);
    let origin = super::origin(Some(ident));
    Ok(quote! {
        #f
        #prototype
        const _: () = {
            #[used]
            #[unsafe(link_section = ::klp_runtime::__section!(funcs))]
            static ENTRY: ::klp_runtime::abi::FuncEntry = ::klp_runtime::abi::FuncEntry::new(
                #object, #name, #sympos, #ident as *const ::core::ffi::c_void, #origin,
            );
        };
    })
}
