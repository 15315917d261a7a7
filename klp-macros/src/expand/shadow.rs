use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Fields, ItemStruct};

use crate::internals::attr::{nonzero_id, Args, Kind};
use crate::internals::check;
use crate::internals::ctxt::Ctxt;
use crate::internals::symbol::{CALLBACKS, ID, TYPE};

pub fn expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let s: ItemStruct = syn::parse2(item).map_err(|e| {
        syn::Error::new(
            e.span(),
            "#[klp_shadow] goes on a struct: `#[klp_shadow(type = T, ...)] pub struct Handle;` or on the data struct itself",
        )
    })?;
    let mut cx = Ctxt::default();
    let args = Args::parse(
        &mut cx,
        args,
        &[(TYPE, Kind::Type), (ID, Kind::Int), (CALLBACKS, Kind::Int)],
    );
    let id = nonzero_id::<u64>(
        &mut cx,
        &args,
        ID,
        "each shadow type needs a klp_shadow id, for example `id = 0x10`",
    );
    // The runtime puts the id under a 40-bit prefix (klp_runtime::abi::SHADOW_NAMESPACE) so
    // that it never meets a C patch's shadow id.
    const SHADOW_ID_MAX: u64 = 0xff_ffff;
    let id = match (id, args.int::<u64>(&mut cx, ID)) {
        (Some(v), Some((_, span))) if v > SHADOW_ID_MAX => {
            cx.push(syn::Error::new(
                span,
                format!(
                    "shadow ids have 24 bits (up to {SHADOW_ID_MAX:#x}): the runtime puts them \
                     in the klp-rs namespace, apart from C patches' shadow ids"
                ),
            ));
            None
        }
        (id, _) => id,
    };
    let owner = nonzero_id::<u32>(
        &mut cx,
        &args,
        CALLBACKS,
        "name the callback set that owns this shadow type, for example `callbacks = 1`; its variables are freed when that set leaves",
    );
    if !s.generics.params.is_empty() {
        let msg = if s.generics.lifetimes().next().is_some() {
            "a shadow type must be `'static`: it outlives the call that attaches it, so it cannot have lifetime parameters"
        } else {
            "a shadow type cannot be generic: each one has a single id and layout in the tables"
        };
        cx.error_spanned_by(&s.generics, msg);
    }
    let handle = &s.ident;
    let data = match args.ty(TYPE) {
        Some(ty) => {
            if !matches!(s.fields, Fields::Unit) {
                cx.error_spanned_by(
                    &s.fields,
                    "with `type = ...` the struct is only the handle: declare it as a unit struct, `pub struct Name;` (or drop `type` to use this struct as the data)",
                );
            }
            check::shadow_data_type(&mut cx, ty);
            quote!(#ty)
        }
        None => quote!(#handle),
    };
    cx.check()?;

    // Every part of the data must be portable (`klp_runtime::shadow::Portable`): checked per
    // field, so that the error points at the field that holds an address.
    let parts: Vec<syn::Type> = match args.ty(TYPE) {
        Some(ty) => vec![ty.clone()],
        None => s.fields.iter().map(|f| f.ty.clone()).collect(),
    };
    let portable_checks = parts
        .iter()
        .map(|ty| quote_spanned!(ty.span()=> __klp_rs_portable::<#ty>();));
    let portable_impl = args.ty(TYPE).is_none().then(|| {
        quote! {
            // SAFETY: every field is checked to be portable below.
            unsafe impl ::klp_runtime::shadow::Portable for #handle {}
        }
    });
    let (id, owner) = (id.expect("checked"), owner.expect("checked"));
    let type_name = super::cstr(&data.to_string().replace(' ', ""));
    let origin = super::origin(Some(handle));
    let handle_name = handle.to_string();
    Ok(quote! {
        #s

        impl ::klp_runtime::shadow::ShadowType for #handle {
            type Data = #data;
            const ID: u64 = #id;
            const OWNER: u32 = #owner;
        }

        #[allow(dead_code)]
        impl #handle {
            /// The variable attached to `obj`, if any.
            pub fn get<O>(obj: *const O) -> ::core::option::Option<::core::ptr::NonNull<#data>> {
                ::klp_runtime::shadow::get::<Self>(obj.cast())
            }
            /// The variable attached to `obj`, attaching `init()` first if there is none. The
            /// allocation may sleep (`GFP_KERNEL`): for hooks, and patched code in process
            /// context that holds no spinlock and is not in an RCU read-side section.
            pub fn get_or_alloc<O>(
                obj: *const O,
                init: impl ::core::ops::FnOnce() -> #data,
            ) -> ::klp_runtime::Result<::core::ptr::NonNull<#data>> {
                ::klp_runtime::shadow::get_or_alloc::<Self>(
                    obj.cast(),
                    ::klp_runtime::shadow::Gfp::Kernel,
                    init,
                )
            }
            /// As `get_or_alloc`, never sleeping (`GFP_ATOMIC`): for patched code under a
            /// spinlock, in an RCU read-side section or in interrupt context.
            pub fn get_or_alloc_atomic<O>(
                obj: *const O,
                init: impl ::core::ops::FnOnce() -> #data,
            ) -> ::klp_runtime::Result<::core::ptr::NonNull<#data>> {
                ::klp_runtime::shadow::get_or_alloc::<Self>(
                    obj.cast(),
                    ::klp_runtime::shadow::Gfp::Atomic,
                    init,
                )
            }
            /// Attaches `value` to `obj`; `EEXIST` if one is attached already. May sleep,
            /// as `get_or_alloc`.
            pub fn alloc<O>(obj: *const O, value: #data) -> ::klp_runtime::Result<::core::ptr::NonNull<#data>> {
                ::klp_runtime::shadow::alloc::<Self>(obj.cast(), ::klp_runtime::shadow::Gfp::Kernel, value)
            }
            /// As `alloc`, never sleeping, as `get_or_alloc_atomic`.
            pub fn alloc_atomic<O>(obj: *const O, value: #data) -> ::klp_runtime::Result<::core::ptr::NonNull<#data>> {
                ::klp_runtime::shadow::alloc::<Self>(obj.cast(), ::klp_runtime::shadow::Gfp::Atomic, value)
            }
            /// Detaches and drops the variable attached to `obj`.
            pub fn free<O>(obj: *const O) {
                ::klp_runtime::shadow::free::<Self>(obj.cast())
            }
            /// Detaches and drops every variable of this type.
            pub fn free_all() {
                ::klp_runtime::shadow::free_all::<Self>()
            }
        }

        #portable_impl

        const _: () = {
            fn __klp_rs_portable<T: ?::core::marker::Sized + ::klp_runtime::shadow::Portable>() {}
            #[allow(dead_code)]
            fn __klp_rs_check() {
                #(#portable_checks)*
            }
            ::core::assert!(
                ::core::mem::align_of::<#data>() <= 8,
                ::core::concat!("shadow type of `", #handle_name, "` needs alignment above 8, but the kernel's shadow data is only 8-byte aligned")
            );
            #[used]
            #[unsafe(link_section = ::klp_runtime::__section!(shadows))]
            static ENTRY: ::klp_runtime::abi::ShadowEntry = ::klp_runtime::abi::ShadowEntry::new(
                #id,
                #owner,
                #type_name,
                ::core::mem::size_of::<#data>(),
                ::core::mem::align_of::<#data>(),
                ::klp_runtime::shadow::ctor::<#data>,
                ::klp_runtime::shadow::dtor::<#data>,
                #origin,
            );
        };
    })
}
