//! A Rust function declaration checked against the kernel's prototype of the same name,
//! from the target kernel's BTF: the number of parameters, each one's kind and size, the
//! return type. A mismatch is an error in the kernel build showing both prototypes; what
//! the syntax cannot classify (the user's own types) is checked by size in a const
//! assertion. Without BTF, or for a function BTF does not describe, nothing is checked.

use proc_macro2::TokenStream;
use quote::{quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{FnArg, ReturnType, Signature};

use crate::btf;
use crate::internals::ctype::{self, RustShape};

/// The checks of `sig` against the kernel's `name` in `object`, as items of the kernel build.
pub fn check(what: &str, name: &str, object: &str, sig: &Signature) -> TokenStream {
    // Rebuilt when the BTF the build hands over changes (a module's comes after a first
    // compile: see cargo-klp's build).
    let tracked = btf::tracking(object);
    let Some(Ok(btf)) = btf::for_object(object) else {
        return tracked;
    };
    let Ok(protos) = btf::functions(&btf, name) else {
        return tracked;
    };
    // Static functions of several files may share a name but not a prototype; BTF cannot
    // say which is which.
    let Some(proto) = protos.first() else {
        return tracked;
    };
    if protos.iter().any(|p| p.render(name) != proto.render(name)) {
        return tracked;
    }
    let kernel = proto.render(name);
    let patch = rust_prototype(sig);
    let both = format!("{what} `{name}` does not match the target kernel's prototype:\n  kernel: {kernel}\n  patch:  {patch}");
    let error = |span: proc_macro2::Span, why: String| {
        let msg = format!("{both}\n  {why}");
        quote_spanned! {span=>
            #[cfg(target_os = "none")]
            const _: () = ::core::compile_error!(#msg);
        }
    };
    let params: Vec<&syn::Type> = sig
        .inputs
        .iter()
        .filter_map(|a| match a {
            FnArg::Typed(t) => Some(&*t.ty),
            FnArg::Receiver(_) => None,
        })
        .collect();
    if params.len() != proto.params.len() && !(proto.variadic && params.len() > proto.params.len())
    {
        return error(
            sig.inputs.span(),
            format!(
                "the kernel's takes {} parameter(s), the patch's {}",
                proto.params.len(),
                params.len()
            ),
        );
    }
    let mut out = tracked;
    let mut compare = |ty: Option<&syn::Type>, kernel: &btf::Resolved, which: String| {
        let shape = ty.map_or(RustShape::Unit, ctype::rust_shape);
        let span = ty.map_or(sig.output.span(), |t| t.span());
        if let Some(why) = ctype::mismatch(&shape, kernel) {
            out.extend(error(span, format!("{which}: {why}")));
        } else if let (RustShape::Other, Some(ty)) = (shape, ty) {
            let size = kernel.size;
            let msg = format!(
                "{both}\n  {which}: the kernel's `{}` is {size} bytes, the patch's type is not",
                kernel.c
            );
            out.extend(quote_spanned! {span=>
                #[cfg(target_os = "none")]
                const _: () = ::core::assert!(::core::mem::size_of::<#ty>() == #size, #msg);
            });
        }
    };
    for (i, (ty, (pname, kernel))) in params.iter().zip(&proto.params).enumerate() {
        let which = if pname.is_empty() {
            format!("parameter {}", i + 1)
        } else {
            format!("parameter {} `{pname}`", i + 1)
        };
        compare(Some(ty), kernel, which);
    }
    let ret = match &sig.output {
        ReturnType::Default => None,
        ReturnType::Type(_, ty) => Some(&**ty),
    };
    compare(ret, &proto.ret, "the return type".into());
    out
}

/// The Rust declaration, for messages.
fn rust_prototype(sig: &Signature) -> String {
    let params: Vec<String> = sig
        .inputs
        .iter()
        .map(|a| a.to_token_stream().to_string())
        .collect();
    let ret = match &sig.output {
        ReturnType::Default => String::new(),
        ReturnType::Type(_, ty) => format!(" -> {}", ty.to_token_stream()),
    };
    tidy(&format!("fn {}({}){ret}", sig.ident, params.join(", ")))
}

/// Token spacing as people write it: `m: *mut c_void`, not `m : * mut c_void`.
pub fn tidy(s: &str) -> String {
    s.replace(" : ", ": ")
        .replace("* mut ", "*mut ")
        .replace("* const ", "*const ")
        .replace("& mut ", "&mut ")
        .replace(" ,", ",")
        .replace("[ ", "[")
        .replace(" ]", "]")
        .replace(" ;", ";")
        .replace(" :: ", "::")
        .replace(":: ", "::")
        .replace(" < ", "<")
        .replace(" >", ">")
}
