//! Collects errors so the user sees all of them at once (after serde_derive's `Ctxt`).

use std::fmt::Display;

use quote::ToTokens;

#[derive(Default)]
pub struct Ctxt {
    errors: Vec<syn::Error>,
}

impl Ctxt {
    pub fn error_spanned_by<T: ToTokens, M: Display>(&mut self, obj: T, msg: M) {
        self.errors
            .push(syn::Error::new_spanned(obj.into_token_stream(), msg));
    }

    pub fn push(&mut self, e: syn::Error) {
        self.errors.push(e);
    }

    /// All errors combined into one, if any.
    pub fn check(self) -> syn::Result<()> {
        let mut errors = self.errors.into_iter();
        let Some(mut combined) = errors.next() else {
            return Ok(());
        };
        for e in errors {
            combined.combine(e);
        }
        Err(combined)
    }
}
