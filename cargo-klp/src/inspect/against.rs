//! `inspect NEW --against OLD`: what a replace will run, from both files' tables, with the
//! steps of module objects conditional on their module being loaded.

use std::collections::BTreeSet;
use std::path::Path;

use klp_runtime::plan::{self, Side, Step, StepLine};
use klp_runtime::reader::Patch;
use serde::Serialize;

use super::*;

/// What a replace NEW-over-OLD will do.
#[derive(Debug, Clone, Serialize)]
pub struct ReplacePlan {
    pub old: String,
    pub new: String,
    /// Why the kernel or our runtime would refuse it; the steps are then what would have run.
    pub refused: Option<String>,
    /// The steps in order, as the kernel log will print them; the transition as `transition`.
    pub steps: Vec<String>,
    pub shadow_types_freed: Vec<u64>,
    pub functions_added: Vec<String>,
    pub functions_removed: Vec<String>,
    pub functions_kept: Vec<String>,
}

pub(super) fn func_keys(r: &Report) -> Vec<String> {
    r.objects
        .iter()
        .flat_map(|o| {
            o.functions
                .iter()
                .map(move |f| format!("{}:{},{}", o.name, f.old, f.sympos))
        })
        .collect()
}

/// The plan for NEW replacing OLD, from the files: the same planner the module runs.
pub fn against(new_path: &Path, old_path: &Path) -> Result<ReplacePlan, InspectError> {
    let (new_data, new_z) = load(new_path)?;
    let (old_data, old_z) = load(old_path)?;
    let (new_name, old_name) = (
        new_path.display().to_string(),
        old_path.display().to_string(),
    );
    let (new_r, new_p) = report(&new_name, &new_data, new_z)?;
    let (old_r, old_p) = report(&old_name, &old_data, old_z)?;
    let name = |r: &Report| r.name.clone().unwrap_or_else(|| r.file.clone());
    let (nf, of) = (func_keys(&new_r), func_keys(&old_r));
    let (in_new, in_old): (BTreeSet<_>, BTreeSet<_>) = (nf.iter().collect(), of.iter().collect());
    let mut plan = ReplacePlan {
        old: name(&old_r),
        new: name(&new_r),
        refused: None,
        steps: vec![],
        shadow_types_freed: vec![],
        functions_added: nf.iter().filter(|f| !in_old.contains(f)).cloned().collect(),
        functions_removed: of.iter().filter(|f| !in_new.contains(f)).cloned().collect(),
        functions_kept: nf.iter().filter(|f| in_old.contains(f)).cloned().collect(),
    };
    // The kernel refuses a patch that lacks a state an installed one has (or has it older).
    for s in &old_r.states {
        if !new_r
            .states
            .iter()
            .any(|n| n.id == s.id && n.version >= s.version)
        {
            plan.refused = Some(format!(
                "the kernel refuses it: {} lacks klp_state {:#x} (version {}) that {} has{}",
                plan.new,
                s.id,
                s.version,
                plan.old,
                if s.id == klp_runtime::abi::KLP_STATE_ID {
                    " (a patch not built by klp-rs cannot replace a klp-rs patch)"
                } else {
                    ""
                }
            ));
        }
    }
    if !new_r.livepatch {
        plan.refused = Some(format!("{} is not a livepatch module", plan.new));
    }
    if new_r.replace == Some(false) {
        plan.refused.get_or_insert(format!(
            "{} does not replace (replace = false): it stacks on {}",
            plan.new, plan.old
        ));
    }
    // Tables this reader cannot read: too new for cargo-klp, and so for every runtime that
    // reads no further than it (ours refuses before running anything).
    let unreadable = |r: &Report, p: &Option<Patch<'_, &str>>| r.kind == Kind::KlpRs && p.is_none();
    if unreadable(&new_r, &new_p) {
        return Err(InspectError::Tables {
            file: new_r.file.clone(),
            what: new_r.warnings.join("; "),
        });
    }
    if unreadable(&old_r, &old_p) {
        plan.refused = Some(format!(
            "the runtime of {} refuses it: {}'s tables are format {}, it reads up to {}",
            plan.new,
            plan.old,
            old_r.format_version.unwrap_or(0),
            klp_runtime::abi::FORMAT_VERSION
        ));
        return Ok(plan);
    }
    let Some(new_p) = new_p else {
        plan.refused.get_or_insert(format!(
            "{} has no klp-rs tables: it runs only its own callbacks",
            plan.new
        ));
        return Ok(plan);
    };
    (plan.steps, plan.shadow_types_freed) =
        step_lines(old_p.as_ref(), &new_p).map_err(|what| InspectError::Tables {
            file: new_r.file.clone(),
            what,
        })?;
    Ok(plan)
}

/// When a step of a replace runs, the module objects being loaded or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum When<'a> {
    Always,
    /// A hook on a module object: it runs only where the module is loaded.
    Loaded(&'a str),
    /// A shadow type freed only where none of these modules is loaded: the incoming patch
    /// owns the id through a set on them, which keeps it while set up.
    NoneLoaded(Vec<&'a str>),
}

/// The steps of replacing `old` by `new` whichever module objects are loaded: the plan with
/// every module object loaded, each of its hooks on a module object conditional on that
/// module; and, where they fall, the shadow frees that only the plan with none loaded has
/// (a loaded module's set keeps more ids alive, never fewer, so every other step is in both).
pub(super) fn conditional_steps<'a, F, G>(
    old: Option<&Patch<'a, F>>,
    new: &Patch<'a, G>,
) -> Result<Vec<(Option<Step<'a>>, When<'a>)>, String> {
    let planning = |e: klp_runtime::fallible::AllocError| format!("planning the replace: {e}");
    let all = plan::replace(old, new, &|_| true).map_err(planning)?;
    let none = plan::replace(old, new, &|_| false).map_err(planning)?;
    let none: Vec<_> = none.steps().collect();
    let keepers = |step: &Option<Step<'a>>| {
        let mut objects: Vec<&'a str> = match step {
            Some(Step::FreeShadow { shadow, .. }) => new
                .shadows
                .iter()
                .filter(|t| t.id == *shadow)
                .filter_map(|t| new.sets.iter().find(|s| s.id == t.owner))
                .map(|s| s.object)
                .filter(|o| !o.is_vmlinux())
                .map(|o| o.as_str())
                .collect(),
            _ => vec![],
        };
        objects.sort_unstable();
        objects.dedup();
        When::NoneLoaded(objects)
    };
    let all: Vec<_> = all.steps().collect();
    let module_hook = |s: &Option<Step<'a>>| match s {
        Some(Step::Hook { object, .. }) if !object.is_vmlinux() => Some(object.as_str()),
        _ => None,
    };
    // For each step, the next step of `all` that `none` has too (None: no more).
    let mut next_common = vec![None; all.len()];
    for k in (0..all.len().saturating_sub(1)).rev() {
        next_common[k] = match module_hook(&all[k + 1]) {
            None => Some(all[k + 1]),
            Some(_) => next_common[k + 1],
        };
    }
    let mut out = Vec::new();
    let mut rest = none.iter().peekable();
    for (k, step) in all.iter().enumerate() {
        if let Some(object) = module_hook(step) {
            out.push((*step, When::Loaded(object)));
            continue;
        }
        // `none`'s extra steps go where `none` has them: right after the step before.
        while let Some(extra) = rest.next_if(|s| *s != step) {
            out.push((*extra, keepers(extra)));
        }
        rest.next();
        out.push((*step, When::Always));
        while let Some(extra) = rest.next_if(|s| Some(**s) != next_common[k]) {
            out.push((*extra, keepers(extra)));
        }
    }
    Ok(out)
}

/// The plan's lines, as the modules log them, a conditional step followed by
/// ` (if MODULE is loaded)` or ` (if MODULE is not loaded)`; and the shadow ids freed.
pub(super) fn step_lines<F, G>(
    old: Option<&Patch<'_, F>>,
    new: &Patch<'_, G>,
) -> Result<(Vec<String>, Vec<u64>), String> {
    let patch = |side| match (side, old) {
        (Side::Old, Some(o)) => o.name,
        (Side::Old, None) => "?",
        (Side::New, _) => new.name,
    };
    let (mut lines, mut freed) = (Vec::new(), Vec::new());
    for (step, when) in conditional_steps(old, new)? {
        let Some(step) = step else {
            lines.push("transition".to_string());
            continue;
        };
        if let Step::Hook { defined: false, .. } = step {
            continue;
        }
        if let Step::FreeShadow { shadow, .. } = step {
            freed.push(shadow);
        }
        let line = StepLine {
            patch: patch(step.side()),
            step: &step,
        };
        lines.push(match when {
            When::Always => line.to_string(),
            When::NoneLoaded(m) if m.is_empty() => line.to_string(),
            When::Loaded(m) => format!("{line} (if {m} is loaded)"),
            When::NoneLoaded(m) if m.len() == 1 => format!("{line} (if {} is not loaded)", m[0]),
            When::NoneLoaded(m) => format!("{line} (if none of {} is loaded)", m.join(", ")),
        });
    }
    Ok((lines, freed))
}
