//! Properties of the planner, driven through the simulator over random patches and random
//! sequences of replace, disable, reversal, module load/unload and injected failures:
//!
//! 1. every (patch, set) alternates: `pre_patch` / `post_unpatch` bracket `post_patch` /
//!    `pre_unpatch`; never torn down without setup, never set up twice;
//! 2. every shadow type lives exactly while a set-up set owns it (freed when its set leaves);
//! 3. after any sequence, the state equals enabling the last patch from scratch;
//! 4. a failed or reversed operation leaves everything as it was.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{c_char, c_int, c_void, CString};

use klp_runtime::abi::{CallbackSetEntry, HookFn, PatchHeader, PrePatchFn, ShadowEntry, Table};
use klp_runtime::plan::{Hook, Step};
use klp_runtime::sim::{current_hook, store, Event, Kernel, SimError};
use proptest::prelude::*;

const OBJECTS: [&str; 3] = ["vmlinux", "mod_a", "mod_b"];
const SHADOW_IDS: [u64; 5] = [0x10, 0x20, 0x30, 0x40, 0x50];

#[derive(Debug, Clone)]
struct SetSpec {
    id: u32,
    object: &'static str,
    hooks: [bool; 4],
}

#[derive(Debug, Clone)]
struct PatchSpec {
    sets: Vec<SetSpec>,
    /// (shadow id, owner set id)
    shadows: Vec<(u64, u32)>,
}

thread_local! {
    /// (patch, set) -> shadow ids the set owns: what the synthetic pre_patch allocates.
    static OWNED: RefCell<BTreeMap<(String, u32), Vec<u64>>> = const { RefCell::new(BTreeMap::new()) };
}

/// Where the synthetic hooks hang their shadow variables.
fn key(set: u32) -> *const c_void {
    (0x1_0000 + set as usize) as *const c_void
}

unsafe extern "C" fn pre_patch(_obj: *const c_char) -> c_int {
    let (patch, set, _) = current_hook().expect("called by the simulator");
    let ids = OWNED.with(|o| {
        o.borrow()
            .get(&(patch.to_string(), set))
            .cloned()
            .unwrap_or_default()
    });
    for id in ids {
        let mut value = Some(0u64);
        // SAFETY: ctor::<u64> takes an Option<u64>.
        let p = unsafe {
            store::alloc(
                key(set),
                // The id as the kernel knows it, as klp_runtime::shadow hands it over.
                klp_runtime::abi::shadow_key(klp_runtime::abi::FORMAT_VERSION, id),
                8,
                klp_runtime::shadow::ctor::<u64>,
                (&raw mut value).cast(),
                true,
                klp_runtime::abi::Gfp::Kernel,
            )
        };
        assert!(!p.is_null());
    }
    0
}

unsafe extern "C" fn other_hook(_obj: *const c_char) {}

fn leak_cstr(s: &str) -> &'static std::ffi::CStr {
    Box::leak(CString::new(s).unwrap().into_boxed_c_str())
}

fn table<T: 'static>(v: Vec<T>) -> Table {
    let s: &'static [T] = Vec::leak(v);
    let start = s.as_ptr() as *const u8;
    Table {
        start,
        end: start.wrapping_add(std::mem::size_of_val(s)),
    }
}

/// Builds a patch's tables in memory, as the macros would have linked them.
fn build(name: &str, spec: &PatchSpec) -> &'static PatchHeader {
    let sets = spec
        .sets
        .iter()
        .map(|s| {
            let h = |i: usize| s.hooks[i].then_some(other_hook as HookFn);
            let pre = s.hooks[0].then_some(pre_patch as PrePatchFn);
            CallbackSetEntry::new(
                s.id,
                leak_cstr(s.object),
                (pre, h(1), h(2), h(3)),
                leak_cstr("synthetic"),
            )
        })
        .collect();
    let shadows = spec
        .shadows
        .iter()
        .map(|&(id, owner)| {
            OWNED.with(|o| {
                o.borrow_mut()
                    .entry((name.to_string(), owner))
                    .or_default()
                    .push(id)
            });
            ShadowEntry::new(
                id,
                owner,
                leak_cstr("u64"),
                8,
                8,
                klp_runtime::shadow::ctor::<u64>,
                klp_runtime::shadow::dtor::<u64>,
                leak_cstr("synthetic"),
            )
        })
        .collect();
    Box::leak(Box::new(PatchHeader::new(
        leak_cstr(name),
        table::<u8>(vec![]),
        table(sets),
        table(shadows),
    )))
}

/// Patches drawn from one universe of sets: a set id names one behaviour (object, hooks,
/// shadow types) in every patch that has it — the contract of callback sets, since a set kept
/// across a replace never runs again. Each set owns at most one shadow type, id `0x10 * id`.
fn patch_specs() -> impl Strategy<Value = Vec<PatchSpec>> {
    let set = (0..OBJECTS.len(), any::<[bool; 4]>(), any::<bool>());
    let universe = prop::collection::vec(set, 5);
    let members = prop::collection::vec(any::<[bool; 5]>(), 1..5);
    (universe, members).prop_map(|(universe, members)| {
        members
            .into_iter()
            .map(|m| {
                let mut spec = PatchSpec {
                    sets: vec![],
                    shadows: vec![],
                };
                for (i, &(o, hooks, owns)) in universe.iter().enumerate().filter(|(i, _)| m[*i]) {
                    let id = i as u32 + 1;
                    spec.sets.push(SetSpec {
                        id,
                        object: OBJECTS[o],
                        hooks,
                    });
                    if owns {
                        spec.shadows.push((0x10 * u64::from(id), id));
                    }
                }
                spec
            })
            .collect()
    })
}

#[derive(Debug, Clone)]
enum Op {
    Insmod(usize),
    InsmodReversed(usize),
    Disable,
    DisableReversed,
    Rmmod(usize),
    Load(usize),
    /// Load a target module while a replace is in transition, then complete it (`true`) or
    /// reverse it.
    LoadDuringTransition(usize, usize, bool),
    Unload(usize),
    FailNext(usize, u32),
}

fn op(n: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..n).prop_map(Op::Insmod),
        1 => (0..n).prop_map(Op::InsmodReversed),
        1 => Just(Op::Disable),
        1 => Just(Op::DisableReversed),
        1 => (0..n).prop_map(Op::Rmmod),
        2 => (1..OBJECTS.len()).prop_map(Op::Load),
        2 => (0..n, 1..OBJECTS.len(), any::<bool>()).prop_map(|(p, o, c)| Op::LoadDuringTransition(p, o, c)),
        1 => (1..OBJECTS.len()).prop_map(Op::Unload),
        1 => (0..n, 1u32..6).prop_map(|(p, s)| Op::FailNext(p, s)),
    ]
}

/// The state the planner must maintain: which sets are set up (outer) and patched (inner),
/// rebuilt from the log while checking that hooks alternate. Sets are known by id alone: a
/// set that two patches share carries its state across the replace (nothing runs for it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Model {
    outer: BTreeSet<u32>,
    inner: BTreeSet<u32>,
}

impl Model {
    fn apply(&mut self, events: &[Event]) -> Result<(), String> {
        // Sets whose shadow types were freed in this operation: their post_unpatch may not
        // come after (it could still use them).
        let mut freed = BTreeSet::new();
        for e in events {
            if let Event::Step {
                step: Step::FreeShadow { set, .. },
                ..
            } = e
            {
                freed.insert(*set);
            }
            // A pre_patch that failed set nothing up (the kernel will not call post_unpatch).
            if let Event::HookFailed {
                patch,
                set,
                hook: Hook::PrePatch,
                ..
            } = e
            {
                let _ = patch;
                self.outer.remove(set);
                continue;
            }
            let Event::Step {
                patch,
                step: Step::Hook { set, hook, .. },
            } = e
            else {
                continue;
            };
            let k = *set;
            if *hook == Hook::PostUnpatch && freed.contains(&k) {
                return Err(format!(
                    "{patch} set {set}: its shadow types were freed before its post_unpatch"
                ));
            }
            let ok = match hook {
                Hook::PrePatch => self.outer.insert(k),
                Hook::PostUnpatch => !self.inner.contains(&k) && self.outer.remove(&k),
                Hook::PostPatch => self.outer.contains(&k) && self.inner.insert(k),
                Hook::PreUnpatch => self.inner.remove(&k),
            };
            if !ok {
                return Err(format!("{patch} set {set}: {hook} out of turn ({self:?})"));
            }
        }
        Ok(())
    }

    /// Enabling `patch` from scratch with `loaded` objects.
    fn from_scratch(spec: Option<&PatchSpec>, loaded: &BTreeSet<&str>) -> Model {
        let mut m = Model::default();
        for s in spec
            .iter()
            .flat_map(|p| &p.sets)
            .filter(|s| s.object == "vmlinux" || loaded.contains(s.object))
        {
            m.outer.insert(s.id);
            m.inner.insert(s.id);
        }
        m
    }
}

fn live_shadows(spec: Option<&PatchSpec>, loaded: &BTreeSet<&str>) -> BTreeSet<u64> {
    let Some(spec) = spec else {
        return BTreeSet::new();
    };
    // The synthetic pre_patch allocates the set's types, so only sets that have one do.
    let up = |set: u32| {
        spec.sets.iter().any(|s| {
            s.id == set && s.hooks[0] && (s.object == "vmlinux" || loaded.contains(s.object))
        })
    };
    spec.shadows
        .iter()
        .filter(|(_, owner)| up(*owner))
        .map(|(id, _)| *id)
        .collect()
}

fn store_ids() -> BTreeSet<u64> {
    SHADOW_IDS
        .iter()
        .copied()
        .filter(|id| store::count(*id) > 0)
        .collect()
}

fn run(specs: &[PatchSpec], ops: &[Op]) -> Result<(), String> {
    OWNED.with(|o| o.borrow_mut().clear());
    for id in SHADOW_IDS {
        store::free_all(id, None);
    }
    let names: Vec<String> = (0..specs.len()).map(|i| format!("patch{i}")).collect();
    let headers: Vec<_> = specs.iter().zip(&names).map(|(s, n)| build(n, s)).collect();
    let mut k = Kernel::new();
    let mut model = Model::default();
    let mut loaded: BTreeSet<&str> = BTreeSet::new();
    let mut seen = 0;

    for op in ops {
        let before = model.clone();
        let before_shadows = store_ids();
        let mut unchanged = false;
        match *op {
            Op::Insmod(i) => match k.insmod(headers[i]) {
                Err(SimError::PrePatchFailed { .. }) => unchanged = true,
                Err(SimError::AlreadyLoaded(_) | SimError::InTransition) | Ok(()) => {}
                Err(e) => return Err(format!("insmod: {e}")),
            },
            Op::InsmodReversed(i) => match k.insmod_pending(headers[i]) {
                Ok(()) => {
                    k.reverse_transition().unwrap();
                    unchanged = true;
                }
                Err(SimError::PrePatchFailed { .. }) => unchanged = true,
                Err(_) => {}
            },
            Op::Disable => {
                if let Some(p) = k.enabled_patch() {
                    k.disable(p).map_err(|e| e.to_string())?;
                }
            }
            Op::DisableReversed => {
                if let Some(p) = k.enabled_patch() {
                    k.disable_pending(p).map_err(|e| e.to_string())?;
                    k.reverse_transition().unwrap();
                    unchanged = true;
                }
            }
            Op::Rmmod(i) => {
                let _ = k.rmmod(&names[i]);
            }
            Op::Load(o) => {
                if !loaded.contains(OBJECTS[o]) {
                    k.load_object(OBJECTS[o]).unwrap();
                    if k.log()[seen..]
                        .iter()
                        .any(|e| matches!(e, Event::HookFailed { .. }))
                    {
                        unchanged = true;
                    } else {
                        loaded.insert(OBJECTS[o]);
                    }
                }
            }
            Op::LoadDuringTransition(i, o, complete) => {
                if loaded.contains(OBJECTS[o]) {
                    continue;
                }
                let pending = k.insmod_pending(headers[i]).is_ok();
                let before_load = k.log().len();
                k.load_object(OBJECTS[o]).unwrap();
                if !k.log()[before_load..]
                    .iter()
                    .any(|e| matches!(e, Event::HookFailed { .. }))
                {
                    loaded.insert(OBJECTS[o]);
                }
                if pending {
                    if complete {
                        k.complete_transition().unwrap();
                    } else {
                        k.reverse_transition().unwrap();
                    }
                }
            }
            Op::Unload(o) => {
                k.unload_object(OBJECTS[o]).unwrap();
                loaded.remove(OBJECTS[o]);
            }
            Op::FailNext(p, s) => {
                k.clear_failures();
                k.fail_pre_patch(&names[p], s, 19);
            }
        }
        model
            .apply(&k.log()[seen..])
            .map_err(|e| format!("after {op:?}: {e}"))?;
        seen = k.log().len();

        let enabled = k.enabled_patch();
        let spec = enabled.map(|e| &specs[names.iter().position(|n| n == e).unwrap()]);
        let want = Model::from_scratch(spec, &loaded);
        if model != want {
            return Err(format!(
                "after {op:?}: state {model:?} != enabling {enabled:?} from scratch {want:?}"
            ));
        }
        let shadows = store_ids();
        if shadows != live_shadows(spec, &loaded) {
            return Err(format!(
                "after {op:?}: shadow ids {shadows:?}, want {:?}",
                live_shadows(spec, &loaded)
            ));
        }
        if unchanged && (model != before || shadows != before_shadows) {
            return Err(format!(
                "{op:?} failed or was reversed but changed the state"
            ));
        }
    }
    // Ending with disable leaves nothing behind.
    if let Some(p) = k.enabled_patch() {
        k.disable(p).map_err(|e| e.to_string())?;
    }
    model.apply(&k.log()[seen..])?;
    if !model.outer.is_empty() || !model.inner.is_empty() || store::total() != 0 {
        return Err(format!(
            "after the final disable: {model:?}, {} shadow variables",
            store::total()
        ));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn planner_keeps_every_set_and_shadow_consistent(
        specs in patch_specs(),
        ops in prop::collection::vec(op(4), 0..40),
    ) {
        let ops: Vec<Op> = ops.into_iter().map(|o| match o {
            Op::Insmod(i) => Op::Insmod(i % specs.len()),
            Op::LoadDuringTransition(i, o, c) => Op::LoadDuringTransition(i % specs.len(), o, c),
            Op::InsmodReversed(i) => Op::InsmodReversed(i % specs.len()),
            Op::Rmmod(i) => Op::Rmmod(i % specs.len()),
            Op::FailNext(i, s) => Op::FailNext(i % specs.len(), s),
            o => o,
        }).collect();
        if let Err(e) = run(&specs, &ops) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// A replace is reversed after the incoming patched code attached variables of a shadow type
/// the outgoing patch does not declare: one owned by a set both patches keep (no hook of it
/// runs), and one owned by a set on a module that is not loaded. Both go with the reversal;
/// the outgoing patch's own type stays.
#[test]
fn a_reversed_replace_frees_the_incoming_types_the_outgoing_patch_lacks() {
    let vmlinux_set = |id| SetSpec {
        id,
        object: "vmlinux",
        hooks: [true, false, false, false],
    };
    let old = PatchSpec {
        sets: vec![vmlinux_set(1)],
        shadows: vec![(0x10, 1)],
    };
    let new = PatchSpec {
        sets: vec![
            vmlinux_set(1),
            SetSpec {
                id: 2,
                object: "mod_a",
                hooks: [true, false, false, false],
            },
        ],
        shadows: vec![(0x10, 1), (0x20, 1), (0x30, 2)],
    };
    let (old, new) = (build("rev_old", &old), build("rev_new", &new));
    let mut k = Kernel::new();
    k.insmod(old).unwrap();
    k.insmod_pending(new).unwrap();
    // The incoming patched code, running during the transition, attaches both new types.
    for id in [0x20, 0x30] {
        let mut value = Some(1u64);
        // SAFETY: ctor::<u64> takes an Option<u64>.
        let p = unsafe {
            store::alloc(
                key(9),
                klp_runtime::abi::shadow_key(klp_runtime::abi::FORMAT_VERSION, id),
                8,
                klp_runtime::shadow::ctor::<u64>,
                (&raw mut value).cast(),
                false,
                klp_runtime::abi::Gfp::Kernel,
            )
        };
        assert!(!p.is_null());
    }
    k.reverse_transition().unwrap();
    assert_eq!(
        [0x10, 0x20, 0x30].map(store::count),
        [1, 0, 0],
        "{:#?}",
        k.lines()
    );
    k.disable("rev_old").unwrap();
    assert_eq!(store::total(), 0);
}
