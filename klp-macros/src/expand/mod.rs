//! Expansion: each macro emits the item unchanged plus one table entry (and, for shadows, the
//! typed handle), hidden in `const _: () = { ... }` so nothing leaks into the user's namespace.

pub mod callbacks;
pub mod external;
pub mod func;
pub mod kernel_struct;
pub mod prototype;
pub mod shadow;

use proc_macro2::TokenStream;
use quote::quote;

/// `"text"` as a `&'static CStr` expression.
pub fn cstr(s: &str) -> TokenStream {
    quote!(::klp_runtime::abi::cstr(::core::concat!(#s, "\0")))
}

/// Where an item was declared, as a `&'static CStr`: `module::path::item (file:line)`.
/// `item` is `None` when the expansion sits inside the item (a module), whose path
/// `module_path!()` already ends with.
pub fn origin(item: Option<&syn::Ident>) -> TokenStream {
    let name = item.map(|i| format!("::{i}")).unwrap_or_default();
    quote!(::klp_runtime::abi::cstr(::core::concat!(
        ::core::module_path!(), #name, " (", ::core::file!(), ":", ::core::line!(), ")\0"
    )))
}
