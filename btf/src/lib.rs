//! A kernel's BTF (its own description of its types), read with `btf-rs` for klp-rs: a
//! struct's members and where they lie, a function's prototype, each type's shape and C
//! spelling. The macros lay out `#[kernel_struct]` and check prototypes with it;
//! `cargo klp inspect --btf` shows the kernel's prototypes with it.

use btf_rs::{Btf, BtfType, Type};

pub use btf_rs::Btf as Kernel;

/// Reads a BTF file: vmlinux's (`/sys/kernel/btf/vmlinux`, or an image's `.BTF`), or with
/// `base`, a module's split BTF on vmlinux's.
pub fn load(path: &std::path::Path, base: Option<&Btf>) -> Result<Btf, String> {
    let read = match base {
        None => Btf::from_file(path),
        Some(base) => Btf::from_split_file(path, base),
    };
    read.map_err(|e| format!("cannot read BTF {}: {e}", path.display()))
}

/// What a type is, as far as a Rust declaration can be compared with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    Void,
    /// `boolean`: C's `_Bool` (only 0 or 1).
    Int {
        size: usize,
        signed: bool,
        boolean: bool,
    },
    Float {
        size: usize,
    },
    Pointer,
    Array {
        len: usize,
        elem_size: usize,
    },
    /// A struct or union, by value.
    Record {
        size: usize,
    },
    Enum {
        size: usize,
    },
    Function,
}

/// A BTF type resolved through typedefs and qualifiers: its shape, size, an alignment no
/// larger than the kernel's, and its C spelling (typedef names kept) for messages.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub shape: Shape,
    pub size: usize,
    pub align: usize,
    pub c: String,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn name_of(btf: &Btf, t: &dyn BtfType) -> String {
    btf.resolve_name(t).unwrap_or_default()
}

/// Resolves type `id` (0 is `void`).
pub fn resolve(btf: &Btf, id: u32) -> Result<Resolved, String> {
    resolve_depth(btf, id, 0)
}

fn resolve_depth(btf: &Btf, id: u32, depth: u32) -> Result<Resolved, String> {
    if depth > 32 {
        return Err(format!("BTF type {id}: chain too deep"));
    }
    let t = btf.resolve_type_by_id(id).map_err(err)?;
    let chained = |t: &dyn BtfType| -> Result<Resolved, String> {
        let next = t.get_type_id().map_err(err)?;
        resolve_depth(btf, next, depth + 1)
    };
    let r = match &t {
        Type::Void => Resolved {
            shape: Shape::Void,
            size: 0,
            align: 1,
            c: "void".into(),
        },
        Type::Int(i) => Resolved {
            shape: Shape::Int {
                size: i.size(),
                signed: i.is_signed(),
                boolean: i.is_bool(),
            },
            size: i.size(),
            align: i.size().clamp(1, 8),
            c: name_of(btf, i),
        },
        Type::Float(f) => Resolved {
            shape: Shape::Float { size: f.size() },
            size: f.size(),
            align: f.size().clamp(1, 8),
            c: name_of(btf, f),
        },
        Type::Ptr(p) => {
            let to = p.get_type_id().map_err(err)?;
            let c = if to == 0 {
                "void".to_string()
            } else {
                // The pointee's spelling only: a pointer to an incomplete or recursive type
                // is fine, whatever it points to.
                spelling(btf, to, depth + 1)
            };
            Resolved {
                shape: Shape::Pointer,
                size: 8,
                align: 8,
                c: format!("{c} *"),
            }
        }
        Type::Array(a) => {
            let elem = chained(a)?;
            Resolved {
                shape: Shape::Array {
                    len: a.len(),
                    elem_size: elem.size,
                },
                size: elem.size * a.len(),
                align: elem.align,
                c: format!("{}[{}]", elem.c, a.len()),
            }
        }
        Type::Struct(s) | Type::Union(s) => {
            let kind = if matches!(t, Type::Struct(_)) {
                "struct"
            } else {
                "union"
            };
            Resolved {
                shape: Shape::Record { size: s.size() },
                size: s.size(),
                align: record_align(btf, s, depth)?,
                c: format!("{kind} {}", name_of(btf, s)),
            }
        }
        Type::Enum(e) => Resolved {
            shape: Shape::Enum { size: e.size() },
            size: e.size(),
            align: e.size().clamp(1, 8),
            c: format!("enum {}", name_of(btf, e)),
        },
        Type::Enum64(e) => Resolved {
            shape: Shape::Enum { size: e.size() },
            size: e.size(),
            align: e.size().clamp(1, 8),
            c: format!("enum {}", name_of(btf, e)),
        },
        Type::Typedef(td) => Resolved {
            c: name_of(btf, td),
            ..chained(td)?
        },
        Type::Const(c) => chained(c)?,
        Type::Volatile(v) => chained(v)?,
        Type::Restrict(r) => chained(r)?,
        Type::TypeTag(tt) => chained(tt)?,
        Type::FuncProto(_) => Resolved {
            shape: Shape::Function,
            size: 0,
            align: 1,
            c: "function".into(),
        },
        Type::Fwd(f) => {
            return Err(format!(
                "`{}` is only declared, never defined, in the kernel's BTF",
                name_of(btf, f)
            ))
        }
        other => {
            return Err(format!(
                "BTF type {id} is a {}, not a type a patch can use",
                other.name()
            ))
        }
    };
    Ok(r)
}

/// A type's C spelling without resolving what it points to further.
fn spelling(btf: &Btf, id: u32, depth: u32) -> String {
    let Ok(t) = btf.resolve_type_by_id(id) else {
        return "?".into();
    };
    match &t {
        Type::Struct(s) => format!("struct {}", name_of(btf, s)),
        Type::Union(u) => format!("union {}", name_of(btf, u)),
        Type::Enum(e) => format!("enum {}", name_of(btf, e)),
        Type::Fwd(f) => name_of(btf, f),
        Type::Typedef(td) => name_of(btf, td),
        Type::FuncProto(_) => "function".into(),
        _ if depth > 32 => "?".into(),
        _ => resolve_depth(btf, id, depth).map_or("?".into(), |r| r.c),
    }
}

/// The largest natural alignment of a record's members (never more than the kernel's,
/// which may add `__aligned`).
fn record_align(btf: &Btf, s: &btf_rs::Struct, depth: u32) -> Result<usize, String> {
    let mut align = 1;
    for m in &s.members {
        let id = m.get_type_id().map_err(err)?;
        align = align.max(resolve_depth(btf, id, depth + 1)?.align);
    }
    Ok(align)
}

/// A struct or union the kernel defines, by name. In a module's split BTF, `module` prefers
/// the module's own definition: btf-rs lists vmlinux's types before the module's.
pub fn record(btf: &Btf, name: &str, module: bool) -> Result<btf_rs::Struct, String> {
    let found: Vec<btf_rs::Struct> = btf
        .resolve_types_by_name(name)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|t| match t {
            Type::Struct(s) | Type::Union(s) => Some(s),
            _ => None,
        })
        .collect();
    match found.as_slice() {
        [] => Err(format!(
            "the target kernel's BTF has no struct or union `{name}`"
        )),
        [s] => Ok(s.clone()),
        [.., last] if module => Ok(last.clone()),
        [first, rest @ ..]
            if rest
                .iter()
                .all(|s| s.size() == first.size() && s.members.len() == first.members.len()) =>
        {
            Ok(first.clone())
        }
        _ => Err(format!(
            "the target kernel's BTF defines `{name}` {} times, differently",
            found.len()
        )),
    }
}

/// A record's size and an alignment no larger than the kernel's.
pub fn resolve_record(btf: &Btf, s: &btf_rs::Struct, name: &str) -> Result<Resolved, String> {
    Ok(Resolved {
        shape: Shape::Record { size: s.size() },
        size: s.size(),
        align: record_align(btf, s, 0)?,
        c: format!("struct {name}"),
    })
}

/// Where a member is: its byte offset in the record, and its type. Members of anonymous
/// structs and unions are found through them, as C names them.
pub struct Field {
    pub offset: usize,
    pub ty: Resolved,
}

pub fn field(
    btf: &Btf,
    record_name: &str,
    s: &btf_rs::Struct,
    name: &str,
) -> Result<Field, String> {
    find_field(btf, s, name, 0, 0)?.ok_or_else(|| {
        let close: Vec<String> = s
            .members
            .iter()
            .map(|m| name_of(btf, m))
            .filter(|n| {
                !n.is_empty()
                    && (edit_distance(n, name) <= 2
                        || (name.len() > 3 && (n.contains(name) || name.contains(n.as_str()))))
            })
            .map(|n| format!("`{n}`"))
            .collect();
        let hint = if close.is_empty() {
            format!(
                "it has {} members; see its definition in the kernel's headers",
                s.members.len()
            )
        } else {
            format!("did you mean {}?", close.join(" or "))
        };
        format!("`{record_name}` has no member `{name}` in the target kernel: {hint}")
    })
}

fn find_field(
    btf: &Btf,
    s: &btf_rs::Struct,
    name: &str,
    base_bits: u32,
    depth: u32,
) -> Result<Option<Field>, String> {
    if depth > 8 {
        return Ok(None);
    }
    for m in &s.members {
        let member_name = name_of(btf, m);
        let bits = base_bits + m.bit_offset();
        if member_name == name {
            if m.bitfield_size().is_some_and(|b| b != 0) {
                return Err(format!(
                    "member `{name}` is a bitfield in the target kernel; a patch cannot take its \
                     address: read the word that holds it instead"
                ));
            }
            if !bits.is_multiple_of(8) {
                return Err(format!(
                    "member `{name}` does not start on a byte in the target kernel"
                ));
            }
            let ty = resolve(btf, m.get_type_id().map_err(err)?)?;
            return Ok(Some(Field {
                offset: (bits / 8) as usize,
                ty,
            }));
        }
        if member_name.is_empty() {
            // An anonymous struct or union: its members are the record's, in C.
            let t = btf
                .resolve_type_by_id(m.get_type_id().map_err(err)?)
                .map_err(err)?;
            if let Type::Struct(inner) | Type::Union(inner) = unqualified(btf, t)? {
                if let Some(f) = find_field(btf, &inner, name, bits, depth + 1)? {
                    return Ok(Some(f));
                }
            }
        }
    }
    Ok(None)
}

/// `t` without typedefs and qualifiers.
fn unqualified(btf: &Btf, mut t: Type) -> Result<Type, String> {
    for _ in 0..32 {
        match &t {
            Type::Typedef(_)
            | Type::Const(_)
            | Type::Volatile(_)
            | Type::Restrict(_)
            | Type::TypeTag(_) => {
                let chained = t.as_btf_type().ok_or("a qualifier without a type")?;
                t = btf.resolve_chained_type(chained).map_err(err)?;
            }
            _ => return Ok(t),
        }
    }
    Ok(t)
}

/// A function's prototype in the kernel.
#[derive(Debug, Clone)]
pub struct Proto {
    pub ret: Resolved,
    pub params: Vec<(String, Resolved)>,
    pub variadic: bool,
}

impl Proto {
    /// As C would declare it.
    pub fn render(&self, name: &str) -> String {
        let mut params: Vec<String> = self
            .params
            .iter()
            .map(|(n, t)| {
                if n.is_empty() {
                    t.c.clone()
                } else if t.c.ends_with('*') {
                    format!("{}{n}", t.c)
                } else {
                    format!("{} {n}", t.c)
                }
            })
            .collect();
        if self.variadic {
            params.push("...".into());
        }
        if params.is_empty() {
            params.push("void".into());
        }
        let sep = if self.ret.c.ends_with('*') { "" } else { " " };
        format!("{}{sep}{name}({})", self.ret.c, params.join(", "))
    }
}

/// The prototypes of every function named `name` in the BTF (static functions of several
/// files share names); empty if BTF has none (pahole leaves out some).
pub fn functions(btf: &Btf, name: &str) -> Result<Vec<Proto>, String> {
    let mut out = Vec::new();
    for t in btf.resolve_types_by_name(name).unwrap_or_default() {
        let Type::Func(f) = t else { continue };
        let Type::FuncProto(p) = btf.resolve_chained_type(&f).map_err(err)? else {
            continue;
        };
        let mut params = Vec::new();
        let mut variadic = false;
        for param in &p.parameters {
            if param.is_variadic() {
                variadic = true;
                continue;
            }
            params.push((
                name_of(btf, param),
                resolve(btf, param.get_type_id().map_err(err)?)?,
            ));
        }
        out.push(Proto {
            ret: resolve(btf, p.return_type_id())?,
            params,
            variadic,
        });
    }
    Ok(out)
}

/// Levenshtein distance, for "did you mean".
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Whether the record is packed (`__packed`), which BTF does not record: as pahole infers
/// it, a member at an offset its type's natural alignment does not divide, or a size the
/// record's natural alignment does not divide.
pub fn is_packed(btf: &Btf, s: &btf_rs::Struct) -> bool {
    let mut align = 1;
    for m in &s.members {
        if m.bitfield_size().is_some_and(|b| b != 0) {
            continue;
        }
        let Ok(ty) = m.get_type_id().map_err(err).and_then(|id| resolve(btf, id)) else {
            continue;
        };
        let offset = m.bit_offset() / 8;
        if ty.align > 1 && !(offset as usize).is_multiple_of(ty.align) {
            return true;
        }
        align = align.max(ty.align);
    }
    !s.size().is_multiple_of(align)
}
