//! `#[kernel_struct]`: a kernel struct with the members the patch uses, laid out as the
//! target kernel's BTF says (`crate::btf`). On the host the struct is plain `repr(C)` with
//! the declared fields, so tests can make one; either way each member is read through an
//! accessor of its name, so patch code is the same in both builds.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::ItemStruct;

use crate::btf;
use crate::internals::attr::{Args, Kind};
use crate::internals::ctxt::Ctxt;
use crate::internals::ctype;
use crate::internals::symbol::{NAME, OBJECT, VMLINUX};

pub fn expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let s: ItemStruct = syn::parse2(item).map_err(|e| {
        syn::Error::new(
            e.span(),
            "#[kernel_struct] goes on a struct with the kernel's member names: \
             `struct task_struct { pid: i32, comm: [c_char; 16] }`",
        )
    })?;
    let mut cx = Ctxt::default();
    let args = Args::parse(&mut cx, args, &[(NAME, Kind::Str), (OBJECT, Kind::Str)]);
    let kernel_name = args
        .str(&mut cx, NAME)
        .map_or(s.ident.to_string(), |n| n.value());
    let object = args.str(&mut cx, OBJECT);
    if let Some(o) = &object {
        crate::internals::check::object_name(&mut cx, o);
    }
    let object = object.map_or(VMLINUX.to_string(), |o| o.value());
    let syn::Fields::Named(fields) = &s.fields else {
        cx.error_spanned_by(
            &s.ident,
            "#[kernel_struct] needs named fields: the kernel's member names",
        );
        return cx.check().map(|_| TokenStream::new());
    };
    if !s.generics.params.is_empty() {
        cx.error_spanned_by(&s.generics, "a kernel struct cannot be generic");
    }
    cx.check()?;

    let ident = &s.ident;
    let vis = &s.vis;
    let attrs = &s.attrs;
    let host_fields = fields.named.iter();
    let host_accessors = fields.named.iter().map(|f| {
        let (name, ty, fvis) = (f.ident.as_ref().expect("named"), &f.ty, &f.vis);
        let ptr = format_ident!("{name}_ptr");
        let from = format_ident!("from_{name}_ptr");
        let raw = format_ident!("{name}_raw");
        let value = (ctype::rust_shape(ty) != ctype::RustShape::Opaque).then(|| {
            quote! {
                #fvis fn #name(&self) -> #ty {
                    // SAFETY: a field of `self`, read as the kernel build reads it.
                    unsafe { ::core::ptr::read_volatile(&self.#name) }
                }
            }
        });
        quote! {
            #value
            /// # Safety
            /// `this` points to a live struct.
            #fvis unsafe fn #raw(this: *const Self) -> *mut #ty {
                // SAFETY: per the contract.
                unsafe { ::core::ptr::addr_of!((*this).#name).cast_mut() }
            }
            /// The member's address. On the host it comes from `&self`: read through it only
            /// (a write needs a pointer from `&mut`, or `_raw` with one).
            #fvis fn #ptr(&self) -> *mut #ty { ::core::ptr::addr_of!(self.#name).cast_mut() }
            /// # Safety
            /// `ptr` points to that member of a live struct.
            #fvis unsafe fn #from(ptr: *const #ty) -> *const Self {
                // SAFETY: per the contract.
                unsafe {
                    ptr.cast::<u8>()
                        .sub(::core::mem::offset_of!(Self, #name))
                        .cast::<Self>()
                }
            }
        }
    });
    let kernel = kernel_layout(&kernel_name, &object, ident, vis, attrs, &fields.named);
    Ok(quote! {
        #[cfg(not(target_os = "none"))]
        #(#attrs)*
        #[repr(C)]
        #vis struct #ident { #(#host_fields),* }

        #[cfg(not(target_os = "none"))]
        impl #ident {
            #(#host_accessors)*
        }

        #kernel
    })
}

/// The kernel build's struct and accessors, or the errors that stop it.
fn kernel_layout(
    kernel_name: &str,
    object: &str,
    ident: &syn::Ident,
    vis: &syn::Visibility,
    attrs: &[syn::Attribute],
    fields: &syn::punctuated::Punctuated<syn::Field, syn::Token![,]>,
) -> TokenStream {
    let kernel_error = |span: Span, msg: String| {
        quote_spanned! {span=>
            #[cfg(target_os = "none")]
            const _: () = ::core::compile_error!(#msg);
        }
    };
    let tracked = btf::tracking(object);
    let btf = match btf::for_object(object) {
        None => {
            let error = kernel_error(
                ident.span(),
                format!(
                    "the layout of `{kernel_name}` in {object} of the target kernel is unknown: \
                     `cargo klp build --kernel` gives the kernel's BTF (`--btf FILE` vmlinux's)"
                ),
            );
            return quote!(#tracked #error);
        }
        Some(Err(e)) => return kernel_error(ident.span(), e),
        Some(Ok(btf)) => btf,
    };
    let record = match btf::record(&btf, kernel_name, object != VMLINUX) {
        Ok(r) => r,
        Err(e) => return kernel_error(ident.span(), e),
    };
    let resolved = match btf::resolve_record(&btf, &record, kernel_name) {
        Ok(r) => r,
        Err(e) => return kernel_error(ident.span(), e),
    };
    if btf::is_packed(&btf, &record) {
        return kernel_error(
            ident.span(),
            format!(
                "`{kernel_name}` is packed in the target kernel: its members may sit unaligned, \
                 which a Rust reference cannot; read them with `read_unaligned` from a raw \
                 pointer instead"
            ),
        );
    }
    let (kernel_size, align) = (resolved.size, resolved.align);
    // The Rust struct covers the kernel's up to the end of the last member declared: the
    // kernel may allocate less than its BTF size (task_struct's FPU state is sized at
    // boot), and a reference must not claim bytes that may not exist.
    let mut size = 0;
    let mut out = TokenStream::new();
    let mut accessors = TokenStream::new();
    for f in fields {
        let (name, ty, fvis) = (f.ident.as_ref().expect("named"), &f.ty, &f.vis);
        let member = syn::ext::IdentExt::unraw(name).to_string();
        let field = match btf::field(&btf, kernel_name, &record, &member) {
            Ok(field) => field,
            Err(e) => {
                out.extend(kernel_error(name.span(), e));
                continue;
            }
        };
        if let Some(why) = ctype::mismatch(&ctype::rust_shape(ty), &field.ty) {
            out.extend(kernel_error(
                ty.span(),
                format!(
                    "`{kernel_name}.{name}` cannot be declared `{}`: {why}",
                    super::prototype::tidy(&quote!(#ty).to_string())
                ),
            ));
            continue;
        }
        let (offset, kernel_size) = (field.offset, field.ty.size);
        size = size.max(offset + kernel_size);
        let size_msg = format!(
            "`{kernel_name}.{name}`: the kernel's `{}` is {kernel_size} bytes, the declared type is not",
            field.ty.c
        );
        let align_msg = format!(
            "`{kernel_name}.{name}` is at offset {offset} in the kernel, not aligned for the declared type"
        );
        // An `Opaque` member is only pointed to: its size is the kernel's business.
        let opaque = ctype::rust_shape(ty) == ctype::RustShape::Opaque;
        let size_check = (!opaque).then(
            || quote!(::core::assert!(::core::mem::size_of::<#ty>() == #kernel_size, #size_msg);),
        );
        out.extend(quote_spanned! {ty.span()=>
            #[cfg(target_os = "none")]
            const _: () = {
                #size_check
                ::core::assert!(#offset % ::core::mem::align_of::<#ty>() == 0, #align_msg);
            };
        });
        let from = format_ident!("from_{name}_ptr");
        let container = format!(
            "`container_of(ptr, {kernel_name}, {name})`: the struct whose `{name}` `ptr` points to."
        );
        let ptr = format_ident!("{name}_ptr");
        let doc = format!(
            "`{}` at offset {offset} in the target kernel (BTF).",
            field.ty.c
        );
        // Members other CPUs may write are read once, by value (READ_ONCE): a `&T` would
        // promise Rust that they do not change. Only pointed to, an `Opaque` has no value.
        let value = (!opaque).then(|| {
            quote! {
                #[doc = #doc]
                /// Read once (`READ_ONCE`).
                #fvis fn #name(&self) -> #ty {
                    // SAFETY: the member lies inside the struct at this offset, aligned for
                    // its type (asserted above), and `self` covers it.
                    unsafe { ::core::ptr::read_volatile(self.#ptr()) }
                }
            }
        });
        let raw = format_ident!("{name}_raw");
        accessors.extend(quote! {
            #value
            /// The member's address, from a raw pointer to the struct: no reference is made
            /// (for a struct that may be unaligned, or partly allocated).
            ///
            /// # Safety
            /// `this` points into a live struct.
            #fvis unsafe fn #raw(this: *const Self) -> *mut #ty {
                // SAFETY: per the contract; in bounds (BTF offset).
                unsafe { this.cast::<u8>().add(#offset).cast::<#ty>().cast_mut() }
            }
            #[doc = #doc]
            #fvis fn #ptr(&self) -> *mut #ty {
                // SAFETY: in bounds of the struct (BTF offset < size).
                unsafe { self.__kernel.get().cast::<u8>().add(#offset).cast::<#ty>() }
            }
            #[doc = #container]
            ///
            /// # Safety
            /// `ptr` points to that member of a live struct.
            #fvis unsafe fn #from(ptr: *const #ty) -> *const Self {
                // SAFETY: per the contract, the struct starts `offset` bytes before.
                unsafe { ptr.cast::<u8>().sub(#offset).cast::<Self>() }
            }
        });
    }
    let doc = format!(
        "The kernel's `{kernel_name}` ({kernel_size} bytes in the target kernel, from its BTF; \
         this covers the first {size}, to the end of the last member declared): reached through \
         pointers the kernel gives, never made by the patch."
    );
    let (size, align) = (
        proc_macro2::Literal::usize_unsuffixed(size),
        proc_macro2::Literal::usize_unsuffixed(align),
    );
    quote! {
        #out
        #tracked

        #[cfg(target_os = "none")]
        #(#attrs)*
        #[doc = #doc]
        #[repr(C, align(#align))]
        #vis struct #ident {
            __kernel: ::core::cell::UnsafeCell<[::core::mem::MaybeUninit<u8>; #size]>,
            __pinned: ::core::marker::PhantomPinned,
        }

        #[cfg(target_os = "none")]
        impl #ident {
            /// The struct's size in the target kernel (BTF).
            pub const KERNEL_SIZE: usize = #kernel_size;
            #accessors
        }
    }
}
