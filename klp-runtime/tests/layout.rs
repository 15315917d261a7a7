//! docs/table-format.md, include/klp_rs_abi.h and `abi.rs` describe one layout: every
//! offset and size in the document is checked against the Rust definition and against the C
//! header as the C compiler lays it out.

use std::collections::BTreeMap;
use std::process::Command;

use klp_runtime::abi::layout::*;

type Layout = BTreeMap<(String, String), (usize, usize)>;

/// (struct, field) -> (offset, size), from the document's layout table.
fn documented() -> Layout {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/table-format.md"
    ))
    .unwrap();
    doc.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            let [s, f, o, n] = cells[..] else { return None };
            Some((
                (s.to_string(), f.to_string()),
                (o.parse().ok()?, n.parse().ok()?),
            ))
        })
        .collect()
}

/// (struct, field) -> (offset, size), from the Rust definition.
fn rust() -> Layout {
    let e = |s: &str, f: &str, o: usize, n: usize| ((s.to_string(), f.to_string()), (o, n));
    let [pre, post, preu, postu] = SET_HOOKS;
    BTreeMap::from([
        e("PatchHeader", "magic", 0, 8),
        e("PatchHeader", "format_version", HEADER_FORMAT_VERSION, 4),
        e("PatchHeader", "size", HEADER_SIZE_FIELD, 4),
        e("PatchHeader", "name", HEADER_NAME, 8),
        e("PatchHeader", "funcs", HEADER_FUNCS, 16),
        e("PatchHeader", "sets", HEADER_SETS, 16),
        e("PatchHeader", "shadows", HEADER_SHADOWS, 16),
        e("PatchHeader", "(total)", 0, HEADER_SIZE),
        e("FuncEntry", "size", 0, 4),
        e("FuncEntry", "sympos", FUNC_SYMPOS, 4),
        e("FuncEntry", "object", FUNC_OBJECT, 8),
        e("FuncEntry", "old_name", FUNC_OLD_NAME, 8),
        e("FuncEntry", "new_func", FUNC_NEW_FUNC, 8),
        e("FuncEntry", "origin", FUNC_ORIGIN, 8),
        e("FuncEntry", "(total)", 0, FUNC_SIZE),
        e("CallbackSetEntry", "size", 0, 4),
        e("CallbackSetEntry", "id", SET_ID, 4),
        e("CallbackSetEntry", "object", SET_OBJECT, 8),
        e("CallbackSetEntry", "pre_patch", pre, 8),
        e("CallbackSetEntry", "post_patch", post, 8),
        e("CallbackSetEntry", "pre_unpatch", preu, 8),
        e("CallbackSetEntry", "post_unpatch", postu, 8),
        e("CallbackSetEntry", "origin", SET_ORIGIN, 8),
        e("CallbackSetEntry", "(total)", 0, SET_SIZE),
        e("ShadowEntry", "size", 0, 4),
        e("ShadowEntry", "owner", SHADOW_OWNER, 4),
        e("ShadowEntry", "id", SHADOW_ID, 8),
        e("ShadowEntry", "type_name", SHADOW_TYPE_NAME, 8),
        e("ShadowEntry", "type_size", SHADOW_TYPE_SIZE, 4),
        e("ShadowEntry", "type_align", SHADOW_TYPE_ALIGN, 4),
        e("ShadowEntry", "ctor", SHADOW_CTOR, 8),
        e("ShadowEntry", "dtor", SHADOW_DTOR, 8),
        e("ShadowEntry", "origin", SHADOW_ORIGIN, 8),
        e("ShadowEntry", "(total)", 0, SHADOW_SIZE),
    ])
}

#[test]
fn the_document_matches_the_rust_definition() {
    assert_eq!(documented(), rust());
}

#[test]
fn the_c_header_matches_the_document() {
    let c_struct = |s: &str| match s {
        "PatchHeader" => "klp_rs_patch_header",
        "FuncEntry" => "klp_rs_func",
        "CallbackSetEntry" => "klp_rs_set",
        "ShadowEntry" => "klp_rs_shadow",
        other => panic!("unknown struct {other} in the document"),
    };
    let doc = documented();
    let mut prog = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include \"klp_rs_abi.h\"\nint main(void) {\n",
    );
    for (s, f) in doc.keys() {
        let t = c_struct(s);
        if f == "(total)" {
            prog += &format!("printf(\"{s} {f} 0 %zu\\n\", sizeof(struct {t}));\n");
        } else {
            prog += &format!(
                "printf(\"{s} {f} %zu %zu\\n\", offsetof(struct {t}, {f}), sizeof(((struct {t} *)0)->{f}));\n"
            );
        }
    }
    prog += "return 0; }\n";
    let c: Layout = run_c("layout", &prog)
        .lines()
        .map(|l| {
            let v: Vec<&str> = l.split(' ').collect();
            (
                (v[0].to_string(), v[1].to_string()),
                (v[2].parse().unwrap(), v[3].parse().unwrap()),
            )
        })
        .collect();
    assert_eq!(c, doc);
}

/// Compiles `prog` against the C header with `cc`, runs it and returns what it printed.
fn run_c(name: &str, prog: &str) -> String {
    let dir = std::env::temp_dir().join(format!("klp-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, prog).unwrap();
    let include = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
    let cc = Command::new("cc")
        .args(["-I", include, "-o"])
        .arg(dir.join(name))
        .arg(&src)
        .status()
        .expect("a C compiler (cc) is needed for this test");
    assert!(cc.success());
    let out = Command::new(dir.join(name)).output().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    String::from_utf8(out.stdout).unwrap()
}

/// The constants C and Rust share: the header spells each once, as abi.rs does.
#[test]
fn the_c_header_constants_match_the_rust_ones() {
    use klp_runtime::abi;
    let out = run_c(
        "consts",
        "#include <stdio.h>\n#include \"klp_rs_abi.h\"\nint main(void) {\n\
         printf(\"%u %lu %u %lu %u %u %u %u %u %u\\n\", (unsigned)KLP_RS_FORMAT_VERSION,\n\
         KLP_RS_STATE_ID, (unsigned)KLP_RS_STATE_VERSION, KLP_RS_STACK_STATE_ID,\n\
         (unsigned)KLP_RS_GFP_KERNEL, (unsigned)KLP_RS_GFP_ATOMIC,\n\
         (unsigned)KLP_RS_HOOK_PRE_PATCH, (unsigned)KLP_RS_HOOK_POST_PATCH,\n\
         (unsigned)KLP_RS_HOOK_PRE_UNPATCH, (unsigned)KLP_RS_HOOK_POST_UNPATCH);\n\
         printf(\"%lu %lu %lu\\n\", KLP_RS_NATIVE_STATE_ID, KLP_RS_SHADOW_NAMESPACE,\n\
         KLP_RS_SHADOW_ID_MAX);\n\
         return 0; }\n",
    );
    assert_eq!(
        out.trim(),
        format!(
            "{} {} {} {} {} {} {} {} {} {}",
            abi::FORMAT_VERSION,
            abi::KLP_STATE_ID,
            abi::KLP_STATE_VERSION,
            abi::KLP_STACK_STATE_ID,
            abi::Gfp::Kernel as u32,
            abi::Gfp::Atomic as u32,
            abi::Hook::PrePatch as u32,
            abi::Hook::PostPatch as u32,
            abi::Hook::PreUnpatch as u32,
            abi::Hook::PostUnpatch as u32
        ) + &format!(
            "\n{} {} {}",
            abi::KLP_NATIVE_STATE_ID,
            abi::SHADOW_NAMESPACE,
            abi::SHADOW_ID_MAX
        )
    );
}

/// `__section!` spells the per-crate section names as literals (`link_section` needs them):
/// they are the ABI's, for this crate as for any.
#[test]
fn the_macros_section_names_are_the_abis() {
    use klp_runtime::abi::section;
    let this = env!("CARGO_CRATE_NAME");
    assert_eq!(
        klp_runtime::__section!(patch),
        section::PATCH.of_crate(this)
    );
    assert_eq!(
        klp_runtime::__section!(funcs),
        section::FUNCS.of_crate(this)
    );
    assert_eq!(klp_runtime::__section!(sets), section::SETS.of_crate(this));
    assert_eq!(
        klp_runtime::__section!(shadows),
        section::SHADOWS.of_crate(this)
    );
}
