//! Parses attribute arguments: a comma-separated list of `key = value`, each key known to the
//! macro and given once.

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream, Parser};
use syn::{Ident, LitInt, LitStr, Token};

use super::ctxt::Ctxt;

/// What a key takes.
#[derive(Clone, Copy)]
pub enum Kind {
    Str,
    Int,
    Type,
}

pub enum Value {
    Str(LitStr),
    Int(LitInt),
    Type(Box<syn::Type>),
}

pub struct Arg {
    pub key: Ident,
    pub value: Value,
}

/// The parsed arguments, in order.
pub struct Args {
    args: Vec<Arg>,
    /// The list did not parse: a "missing key" error would only repeat that.
    unparsed: bool,
}

struct RawArg {
    key: Ident,
    value: TokenStream,
}

impl Parse for RawArg {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        // `Ident::parse_any` so that `type = T` works although `type` is a keyword.
        let key = Ident::parse_any(input).map_err(|e| {
            syn::Error::new(e.span(), "expected `key = value`, for example `id = 3`")
        })?;
        if !input.peek(Token![=]) {
            return Err(syn::Error::new(
                key.span(),
                format!("expected `=` after `{key}`: write `{key} = ...`"),
            ));
        }
        input.parse::<Token![=]>()?;
        let mut value = TokenStream::new();
        while !input.is_empty() && !input.peek(Token![,]) {
            value.extend(std::iter::once(input.parse::<proc_macro2::TokenTree>()?));
        }
        if value.is_empty() {
            return Err(syn::Error::new(
                key.span(),
                format!("`{key} =` needs a value"),
            ));
        }
        Ok(RawArg { key, value })
    }
}

fn expected_list(expected: &[(&str, Kind)]) -> String {
    expected
        .iter()
        .map(|(k, _)| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Args {
    /// Parses `tokens` against `expected`; problems go to `cx`, and the keys that parsed are kept.
    pub fn parse(cx: &mut Ctxt, tokens: TokenStream, expected: &[(&str, Kind)]) -> Args {
        let raw = match syn::punctuated::Punctuated::<RawArg, Token![,]>::parse_terminated
            .parse2(tokens)
        {
            Ok(raw) => raw,
            Err(e) => {
                cx.push(e);
                return Args {
                    args: Vec::new(),
                    unparsed: true,
                };
            }
        };
        let mut args: Vec<Arg> = Vec::new();
        for RawArg { key, value } in raw {
            let Some(&(_, kind)) = expected.iter().find(|(k, _)| key == k) else {
                cx.error_spanned_by(
                    &key,
                    format!(
                        "unknown key `{key}`; expected one of {}",
                        expected_list(expected)
                    ),
                );
                continue;
            };
            if args.iter().any(|a| a.key == key) {
                cx.error_spanned_by(&key, format!("duplicate key `{key}`; give it once"));
                continue;
            }
            let parsed = match kind {
                Kind::Str => syn::parse2::<LitStr>(value.clone())
                    .map(Value::Str)
                    .map_err(|_| {
                        syn::Error::new_spanned(
                            &value,
                            format!(
                                "`{key}` takes a string literal, for example `{key} = \"vmlinux\"`"
                            ),
                        )
                    }),
                Kind::Int => syn::parse2::<LitInt>(value.clone())
                    .map(Value::Int)
                    .map_err(|_| {
                        syn::Error::new_spanned(
                            &value,
                            format!("`{key}` takes an integer literal, for example `{key} = 3`"),
                        )
                    }),
                Kind::Type => syn::parse2::<syn::Type>(value.clone())
                    .map(|t| Value::Type(Box::new(t)))
                    .map_err(|_| {
                        syn::Error::new_spanned(
                            &value,
                            format!("`{key}` takes a type, for example `{key} = u64`"),
                        )
                    }),
            };
            match parsed {
                Ok(value) => args.push(Arg { key, value }),
                Err(e) => cx.push(e),
            }
        }
        Args {
            args,
            unparsed: false,
        }
    }

    /// Whether `key` is absent from a list that parsed (so "missing" is the real problem).
    pub fn missing(&self, key: &str) -> bool {
        !self.unparsed && !self.has(key)
    }

    fn get(&self, key: &str) -> Option<&Arg> {
        self.args.iter().find(|a| a.key == key)
    }

    /// A string value, checked to be usable as a C string (non-empty, no NUL).
    pub fn str(&self, cx: &mut Ctxt, key: &str) -> Option<LitStr> {
        let Value::Str(s) = &self.get(key)?.value else {
            return None;
        };
        let v = s.value();
        if v.is_empty() {
            cx.error_spanned_by(s, format!("`{key}` cannot be empty"));
        } else if v.contains('\0') {
            cx.error_spanned_by(s, format!("`{key}` cannot contain a NUL byte"));
        }
        Some(s.clone())
    }

    /// An integer value that fits `T`, with its span.
    pub fn int<T>(&self, cx: &mut Ctxt, key: &str) -> Option<(T, Span)>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        let Value::Int(i) = &self.get(key)?.value else {
            return None;
        };
        match i.base10_parse::<T>() {
            Ok(v) => Some((v, i.span())),
            Err(_) => {
                cx.error_spanned_by(
                    i,
                    format!(
                        "`{key}` = {i} is out of range for {}",
                        std::any::type_name::<T>()
                    ),
                );
                None
            }
        }
    }

    pub fn ty(&self, key: &str) -> Option<&syn::Type> {
        match &self.get(key)?.value {
            Value::Type(t) => Some(t),
            _ => None,
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

/// A required non-zero id, with a message saying how to give one.
pub fn nonzero_id<T>(cx: &mut Ctxt, args: &Args, key: &str, example: &str) -> Option<T>
where
    T: std::str::FromStr + PartialEq + Default + Copy,
    T::Err: std::fmt::Display,
{
    if !args.has(key) {
        if args.missing(key) {
            cx.push(syn::Error::new(
                Span::call_site(),
                format!("missing `{key}`: {example}"),
            ));
        }
        return None;
    }
    let (v, span) = args.int::<T>(cx, key)?;
    if v == T::default() {
        cx.push(syn::Error::new(
            span,
            format!("`{key}` must be non-zero: 0 means \"none\" in the tables"),
        ));
        return None;
    }
    Some(v)
}
