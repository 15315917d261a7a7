//! Whether the functions a patch replaces exist in the target kernel and can be patched there,
//! and whether the kernel symbols it uses through livepatch relocations ([`crate::klp_rela`])
//! exist there and are unambiguous, as that kernel itself says: its `/proc/kallsyms` and ftrace's
//! `available_filter_functions`, read in the kernel booted under qemu (a module object's
//! after loading the module from the kernel's image). The headers cannot say this: a function
//! may be static, inlined into its callers, `notrace` or `noinstr`. What a kernel answered is
//! kept in the per-user cache beside it, so each name costs one boot per kernel.
//!
//! The rules are the livepatch core's: `klp_find_object_symbol` counts every kallsyms entry
//! of the name in the object, in kallsyms order; `sympos = 0` needs exactly one, `sympos = N`
//! needs at least N; then `klp_patch_func` attaches ftrace, which needs the function in
//! ftrace's list. A livepatch symbol is found by the same `klp_find_object_symbol`
//! (`klp_resolve_symbols`).

mod ask;

pub use ask::check_in_kernel;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A kernel symbol the patch needs: a function it replaces, or a symbol it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// `vmlinux` or a module's name.
    pub object: String,
    pub name: String,
    pub sympos: u32,
    pub role: Role,
}

/// What the patch does with a [`Wanted`] symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A `#[klp_func]` replaces it: it must be a function ftrace can attach to.
    Replaced,
    /// The patch's code calls or reads it through a livepatch relocation: it must exist,
    /// and be the only one of its name unless `sympos` says which.
    Used {
        /// The code takes its address (not only `call`/`jmp` to it) on a kernel with IBT,
        /// where a function whose address the kernel never takes loses its `endbr64` at
        /// boot: such a use of a function is refused.
        address_taken_under_ibt: bool,
    },
}

impl Wanted {
    /// How messages name it.
    fn describe(&self) -> String {
        match self.role {
            Role::Replaced => format!("#[klp_func] `{}` in {}", self.name, self.object),
            Role::Used { .. } => format!(
                "kernel symbol `{}` of {} (used by the patch, not exported)",
                self.name, self.object
            ),
        }
    }
}

/// What the kernel says about one name in one object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Found {
    /// The kallsyms entries of the name in the object, in kallsyms order (the order
    /// `sympos` counts), as their type letters: every type counts, as in the livepatch core.
    pub types: String,
    /// Entries in ftrace's list of functions it can attach to.
    pub traceable: u32,
    /// Where each entry of `types` lies, in the same order: `.` ordinary, `i` in the init
    /// text vmlinux frees after boot, `p` a per-CPU variable (an offset, not an address),
    /// `0` at address 0 (which `klp_find_object_symbol` takes for "not found").
    #[serde(default)]
    pub places: String,
    /// For a module object: how many defined symbols of the name the module's file has.
    /// The livepatch core counts in that table when the module loads after the patch
    /// (`klp_module_coming`, before the module's init symbols are dropped), and in kallsyms
    /// when it was loaded before: a count that differs makes `sympos` mean two things.
    #[serde(default)]
    pub in_module_file: Option<u32>,
}

/// The symbols that bound the places of [`Found::places`] in vmlinux.
pub const RANGES: [&str; 4] = [
    "_sinittext",
    "_einittext",
    "__per_cpu_start",
    "__per_cpu_end",
];

/// Where the entry at `address` lies (see [`Found::places`]), given the bounds' addresses.
fn place(address: u64, bounds: &BTreeMap<&str, u64>) -> char {
    let within = |lo: &str, hi: &str| match (bounds.get(lo), bounds.get(hi)) {
        (Some(&lo), Some(&hi)) => (lo..hi).contains(&address),
        _ => false,
    };
    if address == 0 {
        '0'
    } else if within("_sinittext", "_einittext") {
        'i'
    } else if within("__per_cpu_start", "__per_cpu_end") {
        'p'
    } else {
        '.'
    }
}

fn is_text(ty: char) -> bool {
    matches!(ty, 't' | 'T' | 'w' | 'W')
}

impl Found {
    fn functions(&self) -> usize {
        self.types.chars().filter(|&t| is_text(t)).count()
    }
}

/// What the check found: refusals, and doubts it could not settle.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

/// The kernel's answers, by `object:name`.
pub type Answers = BTreeMap<String, Found>;

fn key(object: &str, name: &str) -> String {
    format!("{object}:{name}")
}

/// The problems with the patch's functions in kernel `release`, each naming the fix. Pure:
/// `answers` holds what the kernel said for every wanted name.
pub fn check(release: &str, wanted: &[Wanted], answers: &Answers) -> Verdict {
    let mut v = Verdict::default();
    for w in wanted {
        let Some(found) = answers.get(&key(&w.object, &w.name)) else {
            continue;
        };
        let what = w.describe();
        let symbols = found.types.chars().count();
        let functions = found.functions();
        if let Some(in_file) = found.in_module_file.filter(|&n| n as usize != symbols) {
            v.problems.push(format!(
                "{what}: {}'s file has {in_file} symbol(s) of this name, its kallsyms {symbols} \
                 once loaded (its init symbols are dropped): the livepatch core counts in the \
                 first when the module loads after the patch and in the second when it was \
                 loaded before, so no `sympos` means one symbol in both; use one whose name is \
                 the same in both",
                w.object
            ));
            continue;
        }
        if matches!(w.role, Role::Used { .. }) {
            v.problems.extend(check_used(release, w, found));
            continue;
        }
        if functions == 0 {
            v.problems.push(format!(
                "{what}: {release} has no such function (not in its kallsyms): it is misspelled, \
                 static inline, or inlined into every caller there; patch a function that \
                 exists (its callers, for an inlined one)"
            ));
            continue;
        }
        if w.sympos == 0 && symbols > 1 {
            v.problems.push(format!(
                "{what}: {release} has {symbols} symbols of this name, and the kernel refuses an \
                 ambiguous one; say which with `sympos = N` (1 to {symbols}, in kallsyms order)"
            ));
            continue;
        }
        let Some(chosen) = found.types.chars().nth((w.sympos.max(1) - 1) as usize) else {
            v.problems.push(format!(
                "{what}: sympos = {} but {release} has only {symbols} symbol(s) of this name; \
                 use 1 to {symbols}",
                w.sympos
            ));
            continue;
        };
        if !is_text(chosen) {
            v.problems.push(format!(
                "{what}: symbol {} of this name in {release} is data (kallsyms type `{chosen}`), \
                 not a function; choose the function's `sympos` (in kallsyms order: {})",
                w.sympos.max(1),
                found.types
            ));
        } else if found.traceable == 0 {
            v.problems.push(format!(
                "{what}: {release} cannot patch it: ftrace has no call site in it (it is \
                 `notrace` or `noinstr`, or too early to trace); patch a function that calls it"
            ));
        } else if (found.traceable as usize) < functions {
            // ftrace lists names without saying which copy; 6.12's list with addresses could.
            v.warnings.push(format!(
                "{what}: ftrace can patch {} of the {functions} functions of this name in \
                 {release}, and cannot say which; if the kernel refuses `sympos = {}`, try \
                 another",
                found.traceable, w.sympos
            ));
        }
    }
    v
}

/// The problem with a used symbol, if any: the kernel resolves it by name and position
/// among every kallsyms entry of that name in the object, whatever their type.
fn check_used(release: &str, w: &Wanted, found: &Found) -> Option<String> {
    let what = w.describe();
    let symbols = found.types.chars().count();
    let candidates = || {
        found
            .types
            .chars()
            .enumerate()
            .map(|(i, t)| {
                let kind = if is_text(t) { "function" } else { "data" };
                format!("sympos = {} ({kind}, kallsyms type `{t}`)", i + 1)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let object_arg = if w.object == klp_runtime::abi::VMLINUX {
        String::new()
    } else {
        format!("object = \"{}\", ", w.object)
    };
    if symbols == 0 {
        Some(format!(
            "{what}: {release} has no symbol of this name in {} (not in its kallsyms): it is \
             misspelled, inlined everywhere, or in a module: declare it in \
             `#[klp_extern(object = \"<module>\")] extern \"C\" {{ ... }}`",
            w.object
        ))
    } else if w.sympos == 0 && symbols > 1 {
        Some(format!(
            "{what}: {release} has {symbols} symbols of this name and the kernel refuses an \
             ambiguous one; say which in kallsyms order with \
             `#[klp_extern({object_arg}sympos = N)]` on an extern block of its own. \
             Candidates: {}",
            candidates()
        ))
    } else if w.sympos as usize > symbols {
        Some(format!(
            "{what}: sympos = {} but {release} has only {symbols} symbol(s) of this name: {}",
            w.sympos,
            candidates()
        ))
    } else {
        let index = (w.sympos.max(1) - 1) as usize;
        let ty = found.types.chars().nth(index).unwrap_or('?');
        match found.places.chars().nth(index).unwrap_or('.') {
            'i' => Some(format!(
                "{what}: in {release} it is `__init` code, freed once the kernel has booted; \
                 use what calls it after boot"
            )),
            'p' => Some(format!(
                "{what}: in {release} it is a per-CPU variable, whose symbol is an offset into \
                 each CPU's area rather than an address; the patch cannot use it directly"
            )),
            '0' => Some(format!(
                "{what}: in {release} it is at address 0, which the livepatch core takes for \
                 \"not found\""
            )),
            _ if is_text(ty)
                && matches!(
                    w.role,
                    Role::Used {
                        address_taken_under_ibt: true
                    }
                ) =>
            {
                Some(format!(
                    "{what}: the patch takes the address of this function (it does more than \
                     call it), and {release} enforces IBT: the kernel removes the `endbr64` of \
                     functions whose address it never takes, so calling it through a pointer \
                     faults; call it directly, or use a function the kernel itself calls \
                     through pointers"
                ))
            }
            _ => None,
        }
    }
}

/// The guest script that answers for `names` of one object: the matching kallsyms lines,
/// then the matching lines of ftrace's list. Names are C identifiers, maybe with a
/// compiler suffix (`.isra.0`), checked by the caller.
pub fn script(modules: &[&str], names: &[&str]) -> String {
    let alternatives = names
        .iter()
        .map(|n| n.replace('.', "\\."))
        .collect::<Vec<_>>()
        .join("|");
    let load: String = modules
        .iter()
        .map(|m| format!("insmod /mod/{m}.ko || {{ echo \"@@@ insmod failed {m}\"; exit 0; }}\n"))
        .collect();
    // Each answer goes to a file first and is printed with its line count, so that a line a
    // kernel message broke on the console is caught rather than miscounted.
    format!(
        "mount -t tracefs nodev /sys/kernel/tracing\n\
         {load}\
         grep -E '^[0-9a-f]+ [A-Za-z] ({alternatives})([[:space:]]|$)' /proc/kallsyms > /tmp/k\n\
         grep -E '^({alternatives})([[:space:]]|$)' /sys/kernel/tracing/available_filter_functions > /tmp/t\n\
         section kallsyms\n\
         cat /tmp/k\n\
         echo \"@@@ lines kallsyms $(wc -l < /tmp/k)\"\n\
         section traceable\n\
         cat /tmp/t\n\
         echo \"@@@ lines traceable $(wc -l < /tmp/t)\"\n\
         exit 0\n"
    )
}

/// Reads the guest's answer for `names` of `object` (`None` for vmlinux). The kallsyms
/// lines include vmlinux's [`RANGES`] when the script asked for them.
pub fn parse(
    object: &str,
    module: Option<&str>,
    names: &[&str],
    kallsyms: &[String],
    traceable: &[String],
) -> Answers {
    let bracket = module.map(|m| format!("[{m}]"));
    let mut answers: Answers = names
        .iter()
        .map(|n| (key(object, n), Found::default()))
        .collect();
    let entries: Vec<(u64, &str, &str, Option<&str>)> = kallsyms
        .iter()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let (address, ty, name, owner) = match words.as_slice() {
                [a, ty, name] => (a, ty, name, None),
                [a, ty, name, owner] => (a, ty, name, Some(*owner)),
                _ => return None,
            };
            Some((u64::from_str_radix(address, 16).ok()?, *ty, *name, owner))
        })
        .collect();
    let bounds: BTreeMap<&str, u64> = entries
        .iter()
        .filter(|(_, _, name, owner)| owner.is_none() && RANGES.contains(name))
        .map(|&(address, _, name, _)| (name, address))
        .collect();
    for &(address, ty, name, owner) in &entries {
        if owner != bracket.as_deref() {
            continue;
        }
        if let Some(found) = answers.get_mut(&key(object, name)) {
            found.types.push_str(ty);
            found.places.push(place(address, &bounds));
        }
    }
    for line in traceable {
        let mut words = line.split_whitespace();
        let (Some(name), owner) = (words.next(), words.next()) else {
            continue;
        };
        if owner != bracket.as_deref() {
            continue;
        }
        if let Some(found) = answers.get_mut(&key(object, name)) {
            found.traceable += 1;
        }
    }
    answers
}

/// A name the guest script can carry as it is.
pub fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(name: &str, sympos: u32) -> Wanted {
        Wanted {
            object: "vmlinux".into(),
            name: name.into(),
            sympos,
            role: Role::Replaced,
        }
    }

    fn used(name: &str, sympos: u32) -> Wanted {
        Wanted {
            role: Role::Used {
                address_taken_under_ibt: false,
            },
            ..wanted(name, sympos)
        }
    }

    #[test]
    fn a_used_symbol_must_be_found_as_klp_find_object_symbol_finds_it() {
        let mut a = Answers::new();
        a.insert(key("vmlinux", "saved_command_line"), found("D", 0));
        a.insert(key("vmlinux", "gone"), Found::default());
        a.insert(key("vmlinux", "twice"), found("td", 1));
        let v = check(
            "6.12.117+deb12-amd64",
            &[
                used("saved_command_line", 0),
                used("gone", 0),
                used("twice", 0),
                used("twice", 2),
                used("twice", 3),
            ],
            &a,
        );
        let p = &v.problems;
        assert_eq!(p.len(), 3, "{p:#?}");
        assert!(p[0].contains("`gone` of vmlinux") && p[0].contains("no symbol of this name"));
        assert!(p[1].contains("has 2 symbols of this name"));
        assert!(p[1].contains("`#[klp_extern(sympos = N)]`"));
        assert!(p[1].contains("sympos = 1 (function, kallsyms type `t`), sympos = 2 (data"));
        assert!(p[2].contains("sympos = 3 but 6.12.117+deb12-amd64 has only 2"));
        assert!(v.warnings.is_empty());
    }

    fn found(types: &str, traceable: u32) -> Found {
        Found {
            types: types.into(),
            traceable,
            places: ".".repeat(types.len()),
            in_module_file: None,
        }
    }

    #[test]
    fn a_module_symbol_counted_differently_before_and_after_init_is_refused() {
        let mut a = Answers::new();
        let mut twice_in_file = found("t", 1);
        twice_in_file.in_module_file = Some(2);
        let mut same = found("t", 1);
        same.in_module_file = Some(1);
        a.insert(key("binfmt_misc", "helper"), twice_in_file);
        a.insert(key("binfmt_misc", "bm_status_read"), same);
        let module = |name: &str, role| Wanted {
            object: "binfmt_misc".into(),
            name: name.into(),
            sympos: 0,
            role,
        };
        let used = Role::Used {
            address_taken_under_ibt: false,
        };
        let v = check(
            "6.1.0-56-amd64",
            &[
                module("helper", used),
                module("helper", Role::Replaced),
                module("bm_status_read", used),
            ],
            &a,
        );
        assert_eq!(v.problems.len(), 2, "{:#?}", v.problems);
        assert!(v.problems[0].contains("binfmt_misc's file has 2 symbol(s) of this name"));
    }

    #[test]
    fn init_per_cpu_and_address_taken_functions_are_refused() {
        let kallsyms: Vec<String> = [
            "ffffffff83000000 T _sinittext",
            "ffffffff83000100 t early_setup",
            "ffffffff83100000 T _einittext",
            "0000000000000000 D __per_cpu_start",
            "0000000000000000 D fixed_percpu_data",
            "0000000000001000 D runqueues",
            "0000000000040000 D __per_cpu_end",
            "ffffffff81000000 t helper",
            "ffffffff82000000 D saved_command_line",
        ]
        .map(String::from)
        .to_vec();
        let names = [
            "early_setup",
            "fixed_percpu_data",
            "runqueues",
            "helper",
            "saved_command_line",
        ];
        let a = parse("vmlinux", None, &names, &kallsyms, &[]);
        assert_eq!(a[&key("vmlinux", "early_setup")].places, "i");
        assert_eq!(a[&key("vmlinux", "fixed_percpu_data")].places, "0");
        assert_eq!(a[&key("vmlinux", "runqueues")].places, "p");
        assert_eq!(a[&key("vmlinux", "helper")].places, ".");
        let taken = |name: &str| Wanted {
            role: Role::Used {
                address_taken_under_ibt: true,
            },
            ..used(name, 0)
        };
        let v = check(
            "6.12.117+deb12-amd64",
            &[
                used("early_setup", 0),
                used("fixed_percpu_data", 0),
                used("runqueues", 0),
                used("helper", 0),
                taken("helper"),
                taken("saved_command_line"),
            ],
            &a,
        );
        let p = &v.problems;
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p[0].contains("`early_setup`") && p[0].contains("`__init` code"));
        assert!(p[1].contains("at address 0"));
        assert!(p[2].contains("`runqueues`") && p[2].contains("per-CPU variable"));
        assert!(p[3].contains("`helper`") && p[3].contains("enforces IBT"));
    }

    #[test]
    fn the_guest_lines_count_as_the_livepatch_core_counts() {
        let kallsyms: Vec<String> = [
            "ffffffff814105a0 t cmdline_proc_show",
            "ffffffff8104c510 t c_start",
            "ffffffff8104d510 t c_start",
            "ffffffff8104e510 d c_start",
            "ffffffffc0000000 t c_start\t[binfmt_misc]",
            "ffffffff81a43dc0 T do_syscall_64",
        ]
        .map(String::from)
        .to_vec();
        let traceable: Vec<String> = ["cmdline_proc_show", "c_start", "c_start [binfmt_misc]"]
            .map(String::from)
            .to_vec();
        let names = ["cmdline_proc_show", "c_start", "do_syscall_64", "nope"];
        let a = parse("vmlinux", None, &names, &kallsyms, &traceable);
        let f = |n: &str| a[&key("vmlinux", n)].clone();
        assert_eq!(f("cmdline_proc_show"), found("t", 1));
        assert_eq!(f("c_start"), found("ttd", 1));
        assert_eq!(f("do_syscall_64"), found("T", 0));
        assert_eq!(f("nope"), Found::default());
        let m = parse(
            "binfmt_misc",
            Some("binfmt_misc"),
            &["c_start"],
            &kallsyms,
            &traceable,
        );
        assert_eq!(m[&key("binfmt_misc", "c_start")], found("t", 1));
    }

    #[test]
    fn each_refusal_names_the_fix() {
        let mut a = Answers::new();
        a.insert(key("vmlinux", "ok"), found("t", 1));
        a.insert(key("vmlinux", "gone"), Found::default());
        a.insert(key("vmlinux", "twice"), found("tt", 2));
        a.insert(key("vmlinux", "noinstr"), found("T", 0));
        a.insert(key("vmlinux", "shared"), found("dt", 1));
        a.insert(key("vmlinux", "halftraced"), found("tt", 1));
        let v = check(
            "6.1.0-56-amd64",
            &[
                wanted("ok", 0),
                wanted("gone", 0),
                wanted("twice", 0),
                wanted("twice", 2),
                wanted("twice", 3),
                wanted("noinstr", 0),
                wanted("shared", 1),
                wanted("shared", 2),
                wanted("halftraced", 2),
            ],
            &a,
        );
        let p = &v.problems;
        assert_eq!(p.len(), 5, "{p:#?}");
        assert!(p[0].contains("`gone` in vmlinux: 6.1.0-56-amd64 has no such function"));
        assert!(
            p[1].contains("has 2 symbols of this name") && p[1].contains("`sympos = N` (1 to 2")
        );
        assert!(p[2].contains("sympos = 3 but 6.1.0-56-amd64 has only 2"));
        assert!(p[3].contains("cannot patch it: ftrace has no call site"));
        assert!(
            p[4].contains("symbol 1 of this name in 6.1.0-56-amd64 is data (kallsyms type `d`)")
        );
        assert_eq!(v.warnings.len(), 1, "{:#?}", v.warnings);
        assert!(v.warnings[0].contains("ftrace can patch 1 of the 2 functions"));
    }

    #[test]
    fn the_script_escapes_suffixes_and_loads_the_modules_first() {
        let s = script(&["jbd2", "ext4"], &["ext4_file_open", "foo.isra.0"]);
        let (jbd2, ext4) = (
            s.find("/mod/jbd2.ko").unwrap(),
            s.find("/mod/ext4.ko").unwrap(),
        );
        assert!(jbd2 < ext4);
        assert!(s.contains("(ext4_file_open|foo\\.isra\\.0)"));
        assert!(plain_name("foo.isra.0") && !plain_name("a'b") && !plain_name(""));
    }
}
