//! The text renderings of a report and of a replace plan.

use super::*;

/// Human-readable output, in the spirit of `cargo tree`.
pub fn render(r: &Report) -> String {
    // (depth, text) lines, then connectors drawn from what follows each line.
    let mut lines: Vec<(usize, String)> = Vec::new();
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let prototype = |name: &str| {
        r.kernel_prototypes
            .get(name)
            .map(|p| format!("  [kernel: {p}]"))
            .unwrap_or_default()
    };
    lines.push((
        1,
        format!(
            "module: {}  license: {}  signed: {}",
            opt(&r.name),
            opt(&r.license),
            if r.signed { "yes" } else { "no" }
        ),
    ));
    lines.push((1, format!("vermagic: {}", opt(&r.vermagic).trim_end())));
    if let Some(v) = &r.srcversion {
        lines.push((1, format!("srcversion: {v}")));
    }
    lines.push((
        1,
        match r.kind {
            Kind::KlpRs => format!(
                "klp-rs live patch, table format {}{}",
                r.format_version.unwrap_or(0),
                match r.replace {
                    Some(false) => ", stacks (replace = false)",
                    _ => "",
                }
            ),
            Kind::KlpBuild => "live patch built by klp-build".into(),
            Kind::CStatic => format!(
                "C live patch (static structures), replace: {}",
                r.replace.unwrap_or(false)
            ),
            Kind::Livepatch => "live patch (structures not decoded)".into(),
            Kind::NotLivepatch => "not a livepatch".into(),
        },
    ));
    let hooks = |c: &CallbackSet| {
        [
            ("pre_patch", &c.pre_patch),
            ("post_patch", &c.post_patch),
            ("pre_unpatch", &c.pre_unpatch),
            ("post_unpatch", &c.post_unpatch),
        ]
        .iter()
        .filter_map(|(n, v)| v.as_ref().map(|_| *n))
        .collect::<Vec<_>>()
        .join(", ")
    };
    for o in &r.objects {
        lines.push((1, format!("object {}", o.name)));
        for f in &o.functions {
            let pos = if f.sympos != 0 {
                format!(",{}", f.sympos)
            } else {
                String::new()
            };
            lines.push((
                2,
                format!(
                    "func {}{pos} -> {}{}",
                    f.old,
                    f.new.as_deref().unwrap_or("?"),
                    prototype(&f.old)
                ),
            ));
        }
        for c in &o.callback_sets {
            lines.push((2, format!("callback set {}: {}", c.id, hooks(c))));
        }
        if let Some(c) = &o.callbacks {
            lines.push((2, format!("callbacks: {}", hooks(c))));
        }
    }
    for t in &r.shadow_types {
        let unit = if t.size == 1 { "byte" } else { "bytes" };
        lines.push((
            1,
            format!(
                "shadow {:#x}: {}, {} {unit}, owned by set {}",
                t.id, t.type_name, t.size, t.owner
            ),
        ));
    }
    for st in &r.states {
        lines.push((1, format!("klp_state {:#x} version {}", st.id, st.version)));
    }
    if r.klp_relocations.is_empty() {
        for k in &r.klp_rela_sections {
            lines.push((1, k.clone()));
        }
    }
    for k in &r.klp_relocations {
        let target = match (&k.object, k.sympos) {
            (Some(o), Some(0)) => format!("{o} {} (the only one)", k.symbol),
            (Some(o), Some(p)) => format!("{o} {} (sympos {p})", k.symbol),
            _ => format!("`{}` (not a livepatch symbol)", k.symbol),
        };
        lines.push((
            1,
            format!(
                "klp relocation -> {target}, in {} ({}, applied with {}){}",
                k.function.as_deref().unwrap_or("?"),
                k.r_type,
                k.applied_with,
                if k.object.as_deref() == Some(klp_runtime::abi::VMLINUX) {
                    prototype(&k.symbol)
                } else {
                    String::new()
                }
            ),
        ));
    }
    if !r.klp_symbols.is_empty() && r.klp_relocations.is_empty() {
        lines.push((1, format!("{} .klp.sym symbols", r.klp_symbols.len())));
    }
    for w in &r.warnings {
        lines.push((1, format!("warning: {w}")));
    }
    let mut s = format!(
        "{}{}\n",
        r.file,
        r.compression
            .map(|c| format!(" ({c}-compressed)"))
            .unwrap_or_default()
    );
    for (i, (depth, text)) in lines.iter().enumerate() {
        // Is there a later sibling at this depth before the parent ends?
        let more = |d: usize| {
            lines[i + 1..]
                .iter()
                .take_while(|(e, _)| *e >= d)
                .any(|(e, _)| *e == d)
        };
        if *depth == 2 {
            s += if more(1) { "│   " } else { "    " };
        }
        s += if more(*depth) {
            "├── "
        } else {
            "└── "
        };
        s += text;
        s += "\n";
    }
    s
}

/// Human-readable plan.
pub fn render_plan(p: &ReplacePlan) -> String {
    let mut s = format!("replace {} by {}\n", p.old, p.new);
    if let Some(r) = &p.refused {
        s += &format!("REFUSED: {r}\n");
    }
    for (i, step) in p.steps.iter().enumerate() {
        s += &format!("{:>3}. {step}\n", i + 1);
    }
    if !p.shadow_types_freed.is_empty() {
        let ids: Vec<String> = p
            .shadow_types_freed
            .iter()
            .map(|i| format!("{i:#x}"))
            .collect();
        s += &format!("shadow types freed: {}\n", ids.join(", "));
    }
    s += &format!(
        "functions: {} added, {} removed, {} kept\n",
        p.functions_added.len(),
        p.functions_removed.len(),
        p.functions_kept.len()
    );
    for f in &p.functions_added {
        s += &format!("  + {f}\n");
    }
    for f in &p.functions_removed {
        s += &format!("  - {f}\n");
    }
    s
}
