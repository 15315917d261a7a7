use proc_macro2::TokenStream;
use quote::quote;
use syn::{ForeignItem, ItemForeignMod};

use crate::internals::attr::{Args, Kind};
use crate::internals::check;
use crate::internals::ctxt::Ctxt;
use crate::internals::symbol::{OBJECT, SYMPOS, VMLINUX};

/// The kernel's name of a livepatch symbol (Documentation/livepatch/module-elf-format.rst,
/// read back by `klp_resolve_symbols` and by cargo-klp's `klp_rela::KlpSym`).
fn livepatch_symbol(object: &str, name: &str, sympos: u32) -> String {
    format!(".klp.sym.{object}.{name},{sympos}")
}

pub fn expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let mut block: ItemForeignMod = syn::parse2(item).map_err(|e| {
        syn::Error::new(
            e.span(),
            "#[klp_extern] goes on an extern block: `extern \"C\" { fn name(...); static NAME: T; }`",
        )
    })?;
    let mut cx = Ctxt::default();
    let args = Args::parse(&mut cx, args, &[(OBJECT, Kind::Str), (SYMPOS, Kind::Int)]);
    let object = args.str(&mut cx, OBJECT);
    if let Some(o) = &object {
        check::object_name(&mut cx, o);
    }
    let object = object.map_or(VMLINUX.to_string(), |o| o.value());
    let sympos = args.int::<u32>(&mut cx, SYMPOS);
    check::kernel_extern_block(&mut cx, &block, sympos.map(|(_, span)| span));
    let sympos = sympos.map_or(0, |(v, _)| v);

    let mut prototypes = TokenStream::new();
    for item in &mut block.items {
        let (attrs, ident, sig) = match item {
            ForeignItem::Fn(f) => (&mut f.attrs, &f.sig.ident, Some(&f.sig)),
            ForeignItem::Static(s) => (&mut s.attrs, &s.ident, None),
            _ => continue,
        };
        // The kernel's name: the item's, or the one `link_name` gives (a suffixed static
        // function such as `foo.isra.0`).
        let mut name = ident.to_string();
        let mut host_link_name = None;
        attrs.retain(|a| {
            let Some(value) = check::link_name(a) else {
                return true;
            };
            name = value.value();
            host_link_name = Some(value);
            false
        });
        check::kernel_symbol_name(&mut cx, ident, &name);
        if let Some(sig) = sig {
            prototypes.extend(super::prototype::check(
                "#[klp_extern] fn",
                &name,
                &object,
                sig,
            ));
        }
        let kernel = livepatch_symbol(&object, &name, sympos);
        // On the host the test supplies the symbol under its plain name.
        attrs.push(syn::parse_quote!(#[cfg_attr(target_os = "none", link_name = #kernel)]));
        if let Some(host) = host_link_name {
            attrs.push(syn::parse_quote!(#[cfg_attr(not(target_os = "none"), link_name = #host)]));
        }
    }
    cx.check()?;
    Ok(quote!(#block #prototypes))
}
