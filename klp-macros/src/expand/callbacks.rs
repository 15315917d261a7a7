use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Item, ItemMod, Visibility};

use crate::internals::attr::{nonzero_id, Args, Kind};
use crate::internals::check;
use crate::internals::ctxt::Ctxt;
use crate::internals::symbol::{HOOKS, ID, OBJECT, PRE_PATCH, VMLINUX};

pub fn expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let mut m: ItemMod = syn::parse2(item).map_err(|e| {
        syn::Error::new(e.span(), "#[klp_callbacks] goes on an inline module whose `pub fn`s are the hooks: `mod name { pub fn pre_patch(...) ... }`")
    })?;
    let mut cx = Ctxt::default();
    let args = Args::parse(&mut cx, args, &[(ID, Kind::Int), (OBJECT, Kind::Str)]);
    let id = nonzero_id::<u32>(
        &mut cx,
        &args,
        ID,
        "each callback set needs an id, for example #[klp_callbacks(id = 1)]",
    );
    let object = args
        .str(&mut cx, OBJECT)
        .map_or(VMLINUX.to_string(), |o| o.value());

    let Some((_, items)) = &m.content else {
        return Err(syn::Error::new_spanned(
            &m,
            "#[klp_callbacks] needs the module's body inline (`mod name { ... }`), so it can see the hooks",
        ));
    };
    let mut hooks: [Option<&syn::ItemFn>; 4] = [None; 4];
    for item in items {
        if let Item::Fn(f) = item {
            if matches!(f.vis, Visibility::Inherited) {
                continue;
            }
            if let Some(i) = check::hook_index(&mut cx, f) {
                hooks[i] = Some(f);
            }
        }
    }
    if hooks.iter().all(Option::is_none) && !has_pub_fn(items) {
        cx.error_spanned_by(
            &m.ident,
            "a callback set needs at least one hook: a `pub fn` named `pre_patch`, `post_patch`, `pre_unpatch` or `post_unpatch`",
        );
    }
    cx.check()?;

    let mut wrappers = Vec::new();
    let mut slots = Vec::new();
    for (i, hook) in hooks.iter().enumerate() {
        let Some(f) = hook else {
            slots.push(quote!(::core::option::Option::None));
            continue;
        };
        let name = &f.sig.ident;
        let wrapper = format_ident!("__klp_{}", HOOKS[i]);
        let call = if f.sig.inputs.is_empty() {
            quote_spanned!(f.sig.span()=> |_| #name())
        } else {
            // A closure spanned at the parameters: a wrong parameter type is then reported
            // there, as a plain type mismatch.
            quote_spanned!(f.sig.inputs.span()=> |o| #name(o))
        };
        // pre_patch alone returns a result (the kernel's `klp_pre_patch_callback`).
        if HOOKS[i] == PRE_PATCH {
            wrappers.push(quote! {
                #[allow(clippy::redundant_closure)]
                unsafe extern "C" fn #wrapper(obj: *const ::core::ffi::c_char) -> ::core::ffi::c_int {
                    // SAFETY: the runtime passes the object's NUL-terminated name.
                    unsafe { ::klp_runtime::hook::__private::call_pre_patch(obj, #call) }
                }
            });
            slots.push(
                quote!(::core::option::Option::Some(#wrapper as ::klp_runtime::abi::PrePatchFn)),
            );
        } else {
            wrappers.push(quote! {
                #[allow(clippy::redundant_closure)]
                unsafe extern "C" fn #wrapper(obj: *const ::core::ffi::c_char) {
                    // SAFETY: as for pre_patch.
                    unsafe { ::klp_runtime::hook::__private::call_hook(obj, #call) }
                }
            });
            slots
                .push(quote!(::core::option::Option::Some(#wrapper as ::klp_runtime::abi::HookFn)));
        }
    }
    let id = id.expect("checked");
    let object = super::cstr(&object);
    let origin = super::origin(None);
    let entry: Item = syn::parse_quote! {
        const _: () = {
            #(#wrappers)*
            #[used]
            #[unsafe(link_section = ::klp_runtime::__section!(sets))]
            static ENTRY: ::klp_runtime::abi::CallbackSetEntry = ::klp_runtime::abi::CallbackSetEntry::new(
                #id, #object, (#(#slots),*), #origin,
            );
        };
    };
    m.content.as_mut().expect("inline").1.push(entry);
    Ok(quote!(#m))
}

/// Whether the module has a `pub fn`: every one that is not a hook was reported as a wrong
/// hook already, so "no hooks" would only repeat it.
fn has_pub_fn(items: &[Item]) -> bool {
    items
        .iter()
        .any(|i| matches!(i, Item::Fn(f) if !matches!(f.vis, Visibility::Inherited)))
}
