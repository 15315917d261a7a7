//! Comparing a Rust declaration with the kernel's type as BTF gives it: what the Rust type
//! is, read from its syntax, and whether the kernel's shape fits it. What syntax cannot
//! tell (a user's own type) is left to a size assertion in the expansion.

use crate::btf::{Resolved, Shape};

/// A Rust type as its syntax shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RustShape {
    Pointer,
    /// `&T`, `&mut T`, `fn`, `NonNull<T>`: a pointer Rust assumes is never null (and, for
    /// references, points to a valid `T`); the kernel promises neither.
    NonNullPointer,
    /// `bool`: only 0 or 1.
    Bool,
    /// A primitive integer (or `bool`), with its size.
    Int(usize),
    Float(usize),
    Array(Option<usize>),
    Unit,
    /// `klp_runtime::bindings::Opaque`: a kernel struct only pointed to; its size is not
    /// compared.
    Opaque,
    /// Anything else: only its size can be compared.
    Other,
}

/// The size of a primitive or `core::ffi` integer type on x86-64 Linux, by its last path
/// segment.
fn int_size(name: &str) -> Option<usize> {
    Some(match name {
        "i8" | "u8" | "c_char" | "c_schar" | "c_uchar" => 1,
        "i16" | "u16" | "c_short" | "c_ushort" => 2,
        "i32" | "u32" | "c_int" | "c_uint" => 4,
        "i64" | "u64" | "isize" | "usize" | "c_long" | "c_ulong" | "c_longlong" | "c_ulonglong" => {
            8
        }
        _ => return None,
    })
}

pub fn rust_shape(ty: &syn::Type) -> RustShape {
    match ty {
        syn::Type::Ptr(_) => RustShape::Pointer,
        syn::Type::Reference(_) | syn::Type::BareFn(_) => RustShape::NonNullPointer,
        syn::Type::Array(a) => RustShape::Array(match &a.len {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Int(n),
                ..
            }) => n.base10_parse().ok(),
            _ => None,
        }),
        syn::Type::Tuple(t) if t.elems.is_empty() => RustShape::Unit,
        syn::Type::Paren(p) => rust_shape(&p.elem),
        syn::Type::Path(p) if p.qself.is_none() => {
            let Some(last) = p.path.segments.last() else {
                return RustShape::Other;
            };
            let name = last.ident.to_string();
            match name.as_str() {
                "f32" | "c_float" => RustShape::Float(4),
                "f64" | "c_double" => RustShape::Float(8),
                "NonNull" => RustShape::NonNullPointer,
                "bool" => RustShape::Bool,
                // `Option<&T>`, `Option<fn ...>`, `Option<NonNull<T>>`: a pointer, maybe null.
                "Option" => match &last.arguments {
                    syn::PathArguments::AngleBracketed(a) => match a.args.first() {
                        Some(syn::GenericArgument::Type(inner))
                            if rust_shape(inner) == RustShape::NonNullPointer =>
                        {
                            RustShape::Pointer
                        }
                        _ => RustShape::Other,
                    },
                    _ => RustShape::Other,
                },
                "Opaque" => RustShape::Opaque,
                _ => int_size(&name).map_or(RustShape::Other, RustShape::Int),
            }
        }
        _ => RustShape::Other,
    }
}

/// Why the Rust shape cannot stand for the kernel's type, if it cannot.
pub fn mismatch(rust: &RustShape, kernel: &Resolved) -> Option<String> {
    let k = &kernel.shape;
    let ok = match (rust, k) {
        (RustShape::Pointer, Shape::Pointer) => true,
        (RustShape::Int(n), Shape::Int { size, .. } | Shape::Enum { size }) => n == size,
        (RustShape::Bool, Shape::Int { boolean, .. }) => *boolean,
        (RustShape::Float(n), Shape::Float { size }) => n == size,
        (RustShape::Array(Some(n)), Shape::Array { len, .. }) => n == len,
        (RustShape::Array(None), Shape::Array { .. }) => true,
        (RustShape::Unit, Shape::Void) => true,
        (RustShape::Opaque, Shape::Record { .. }) => true,
        (RustShape::Other, Shape::Void | Shape::Function) => false,
        (RustShape::Other, _) => true,
        _ => false,
    };
    if *rust == RustShape::NonNullPointer && matches!(k, Shape::Pointer) {
        return Some(format!(
            "the kernel's `{}` is a pointer it may pass as NULL, which a reference, `fn` or \
             `NonNull` may never be: declare a raw pointer or wrap it in `Option<...>`",
            kernel.c
        ));
    }
    if *rust == RustShape::Bool {
        return (!ok).then(|| {
            format!(
                "`bool` must be 0 or 1, which only a C `_Bool` promises; the kernel's `{}` is \
                 not one: declare its integer type",
                kernel.c
            )
        });
    }
    (!ok).then(|| {
        let what = match k {
            Shape::Void => "nothing (void)".to_string(),
            Shape::Int { boolean: true, .. } => "a C `_Bool`".to_string(),
            Shape::Int { size, signed, .. } => format!(
                "a {}-byte {} integer",
                size,
                if *signed { "signed" } else { "unsigned" }
            ),
            Shape::Float { size } => format!("a {size}-byte float"),
            Shape::Pointer => "a pointer".into(),
            Shape::Array { len, elem_size } => format!("an array of {len} x {elem_size} bytes"),
            Shape::Record { size } => format!("a {size}-byte struct or union, by value"),
            Shape::Enum { size } => format!("a {size}-byte enum"),
            Shape::Function => "a function".into(),
        };
        format!("the kernel's `{}` is {what}", kernel.c)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(shape: Shape, size: usize, c: &str) -> Resolved {
        Resolved {
            shape,
            size,
            align: size.clamp(1, 8),
            c: c.into(),
        }
    }

    fn shape(ty: &str) -> RustShape {
        rust_shape(&syn::parse_str(ty).unwrap())
    }

    #[test]
    fn declarations_fit_the_kernel_types_they_can_stand_for() {
        let ptr = kernel(Shape::Pointer, 8, "struct seq_file *");
        let int = kernel(
            Shape::Int {
                size: 4,
                signed: true,
                boolean: false,
            },
            4,
            "int",
        );
        let bool_ = kernel(
            Shape::Int {
                size: 1,
                signed: false,
                boolean: true,
            },
            1,
            "_Bool",
        );
        let u8_ = kernel(
            Shape::Int {
                size: 1,
                signed: false,
                boolean: false,
            },
            1,
            "u8",
        );
        for fits in [
            "*mut SeqFile",
            "*const u8",
            "Option<&SeqFile>",
            "Option<extern \"C\" fn()>",
        ] {
            assert_eq!(mismatch(&shape(fits), &ptr), None, "{fits}");
        }
        for null_unsafe in [
            "&SeqFile",
            "&mut SeqFile",
            "extern \"C\" fn()",
            "NonNull<u8>",
        ] {
            let why = mismatch(&shape(null_unsafe), &ptr).expect(null_unsafe);
            assert!(why.contains("may pass as NULL"), "{why}");
        }
        assert_eq!(mismatch(&shape("c_int"), &int), None);
        assert!(mismatch(&shape("i64"), &int).is_some());
        assert!(mismatch(&shape("*mut u8"), &int).is_some());
        assert_eq!(mismatch(&shape("bool"), &bool_), None);
        assert!(mismatch(&shape("bool"), &u8_).unwrap().contains("`_Bool`"));
        assert_eq!(
            mismatch(&shape("()"), &kernel(Shape::Void, 0, "void")),
            None
        );
        assert!(mismatch(&shape("()"), &int).is_some());
    }
}
