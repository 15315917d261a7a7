//! Validation of the annotated items: what one macro can see by itself.

use syn::{FnArg, ItemFn, ReturnType, Signature, Type};

use super::ctxt::Ctxt;
use super::symbol::{HOOKS, PRE_PATCH};

/// A replacement function: `extern "C"`, not generic, not async, not variadic.
pub fn replacement_fn(cx: &mut Ctxt, f: &ItemFn) {
    let sig = &f.sig;
    let is_c = sig
        .abi
        .as_ref()
        .is_some_and(|abi| abi.name.as_ref().is_none_or(|n| n.value() == "C"));
    if !is_c {
        let what = match &sig.abi {
            Some(abi) => format!(
                "has ABI {}",
                abi.name
                    .as_ref()
                    .map_or("?".into(), |n| format!("\"{}\"", n.value()))
            ),
            None => "has the Rust ABI".into(),
        };
        cx.error_spanned_by(
            sig.abi.as_ref().map_or(&sig.fn_token as &dyn quote::ToTokens, |a| a as &dyn quote::ToTokens),
            format!("the replacement function {what}, but the kernel calls it in place of a C function: declare it `extern \"C\" fn`"),
        );
    }
    not_generic(
        cx,
        sig,
        "a replacement function cannot be generic: the kernel needs one concrete function",
    );
    if let Some(a) = &sig.asyncness {
        cx.error_spanned_by(a, "a replacement function cannot be `async`");
    }
    if let Some(v) = &sig.variadic {
        cx.error_spanned_by(
            v,
            "a variadic replacement function cannot be written in Rust; patch a non-variadic caller instead",
        );
    }
}

fn not_generic(cx: &mut Ctxt, sig: &Signature, msg: &str) {
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        cx.error_spanned_by(&sig.generics, msg);
    }
}

/// Which hook a `pub fn` of a callbacks module is, or an error naming the expected ones.
pub fn hook_index(cx: &mut Ctxt, f: &ItemFn) -> Option<usize> {
    let name = f.sig.ident.to_string();
    let Some(index) = HOOKS.iter().position(|h| *h == name) else {
        let hint = HOOKS
            .iter()
            .find(|h| edit_distance(h, &name) <= 2)
            .map(|h| format!(" (did you mean `{h}`?)"))
            .unwrap_or_default();
        cx.error_spanned_by(
            &f.sig.ident,
            format!(
                "`{name}` is not a hook{hint}: the public functions of a callback set are its hooks, one of `pre_patch`, `post_patch`, `pre_unpatch`, `post_unpatch`; make helpers private"
            ),
        );
        return None;
    };
    let sig = &f.sig;
    not_generic(cx, sig, "a hook cannot be generic");
    if let Some(a) = &sig.asyncness {
        cx.error_spanned_by(
            a,
            "a hook cannot be `async`: the kernel calls it synchronously",
        );
    }
    if sig.abi.is_some() {
        cx.error_spanned_by(
            &sig.abi,
            "write hooks as plain Rust functions; the macro generates the `extern \"C\"` entry point",
        );
    }
    if sig.inputs.len() > 1 {
        cx.error_spanned_by(
            &sig.inputs,
            format!("`{name}` takes at most one argument, `obj: &klp_runtime::Object`"),
        );
    }
    if let Some(FnArg::Receiver(r)) = sig.inputs.first() {
        cx.error_spanned_by(r, "a hook is a free function, not a method");
    }
    if let Some(FnArg::Typed(t)) = sig.inputs.first() {
        if !matches!(&*t.ty, Type::Reference(_)) {
            cx.error_spanned_by(
                &t.ty,
                format!("`{name}` takes `&klp_runtime::Object`, by reference"),
            );
        }
    }
    match (&sig.output, name == PRE_PATCH) {
        (ReturnType::Default, true) => cx.error_spanned_by(
            sig,
            "`pre_patch` must return `klp_runtime::Result` (Ok(()) to go on, Err(errno) to veto the patch)",
        ),
        (ReturnType::Type(_, ty), false) => {
            cx.error_spanned_by(ty, format!("`{name}` cannot fail or return a value: remove the return type"))
        }
        _ => {}
    }
    Some(index)
}

/// Rejects types that cannot be shadow data: unsized, or borrowing with a non-`'static`
/// lifetime (a shadow variable outlives any borrow). Anything subtler is caught by the
/// `'static` and `Sized` bounds of `klp_runtime::shadow::ShadowType`.
pub fn shadow_data_type(cx: &mut Ctxt, ty: &Type) {
    match ty {
        Type::Reference(r) if r.lifetime.as_ref().is_none_or(|l| l.ident != "static") => cx.error_spanned_by(
            r,
            "a shadow type must be `'static`: it outlives the call that attaches it; store owned plain data (a pointer into the kernel as `KernelPtr<T>`)",
        ),
        Type::Slice(_) | Type::TraitObject(_) => cx.error_spanned_by(
            ty,
            "a shadow type must be `Sized`: its size is recorded in the tables; use an array or a struct",
        ),
        Type::Path(p) if p.qself.is_none() && p.path.is_ident("str") => {
            cx.error_spanned_by(ty, "a shadow type must be `Sized`: use a fixed-size byte array instead of `str`")
        }
        Type::Paren(p) => shadow_data_type(cx, &p.elem),
        Type::Tuple(t) => t.elems.iter().for_each(|e| shadow_data_type(cx, e)),
        Type::Array(a) => shadow_data_type(cx, &a.elem),
        _ => {}
    }
}

pub use klp_btf::edit_distance;

/// A module name as the kernel writes it: `_` where the file name has `-`, no `.`
/// (`klp_resolve_symbols` reads the object up to the first `.`), at most 55 bytes.
pub fn object_name(cx: &mut Ctxt, object: &syn::LitStr) {
    let v = object.value();
    if v.contains('-') {
        cx.error_spanned_by(
            object,
            format!(
                "the kernel names modules with `_`: write `{}`",
                v.replace('-', "_")
            ),
        );
    } else if !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || v.len() > 55 {
        cx.error_spanned_by(
            object,
            "an object is `vmlinux` or a module's name (letters, digits, `_`, at most 55)",
        );
    }
}

/// A `#[klp_extern]` block: C ABI, functions and statics only, one item when `sympos`
/// picks among same-named symbols.
pub fn kernel_extern_block(
    cx: &mut Ctxt,
    block: &syn::ItemForeignMod,
    sympos: Option<proc_macro2::Span>,
) {
    if block.abi.name.as_ref().is_some_and(|n| n.value() != "C") {
        cx.error_spanned_by(
            &block.abi,
            "kernel symbols have the C ABI: write `extern \"C\" { ... }`",
        );
    }
    for item in &block.items {
        if !matches!(item, syn::ForeignItem::Fn(_) | syn::ForeignItem::Static(_)) {
            cx.error_spanned_by(
                item,
                "a #[klp_extern] block declares kernel functions (`fn`) and variables \
                 (`static`) only",
            );
        }
    }
    if let Some(span) = sympos {
        if block.items.len() != 1 {
            cx.push(syn::Error::new(
                span,
                format!(
                    "`sympos` picks one symbol among those of the same name: give it a block \
                     of its own ({} items here)",
                    block.items.len()
                ),
            ));
        }
    }
}

/// The value of `#[link_name = "..."]`, if `attr` is one.
pub fn link_name(attr: &syn::Attribute) -> Option<syn::LitStr> {
    let syn::Meta::NameValue(nv) = &attr.meta else {
        return None;
    };
    if !nv.path.is_ident("link_name") {
        return None;
    }
    match &nv.value {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) => Some(s.clone()),
        _ => None,
    }
}

/// A name kallsyms can hold, and the livepatch symbol's format can carry (no `,`).
pub fn kernel_symbol_name(cx: &mut Ctxt, ident: &syn::Ident, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 511
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !ok {
        cx.error_spanned_by(
            ident,
            format!(
                "`{name}` is not a kernel symbol name (letters, digits, `_`, `.`, at most 511)"
            ),
        );
    }
}
