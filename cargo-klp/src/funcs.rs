//! Whether the functions a patch replaces exist in the target kernel and can be patched there,
//! as that kernel itself says: its `/proc/kallsyms` and ftrace's
//! `available_filter_functions`, read in the kernel booted under qemu (a module object's
//! after loading the module from the kernel's image). The headers cannot say this: a function
//! may be static, inlined into its callers, `notrace` or `noinstr`. What a kernel answered is
//! kept in the per-user cache beside it, so each name costs one boot per kernel.
//!
//! The rules are the livepatch core's: `klp_find_object_symbol` counts every kallsyms entry
//! of the name in the object, in kallsyms order; `sympos = 0` needs exactly one, `sympos = N`
//! needs at least N; then `klp_patch_func` attaches ftrace, which needs the function in
//! ftrace's list.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// A function the patch replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// `vmlinux` or a module's name.
    pub object: String,
    pub name: String,
    pub sympos: u32,
}

/// What the kernel says about one name in one object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Found {
    /// kallsyms entries of the name in the object, any type (as the livepatch core counts).
    pub symbols: u32,
    /// Of them, text symbols (functions).
    pub functions: u32,
    /// Entries in ftrace's list of functions it can attach to.
    pub traceable: u32,
}

/// The kernel's answers, by `object:name`.
pub type Answers = BTreeMap<String, Found>;

fn key(object: &str, name: &str) -> String {
    format!("{object}:{name}")
}

/// The problems with the patch's functions in kernel `release`, each naming the fix. Pure:
/// `answers` holds what the kernel said for every wanted name.
pub fn check(release: &str, wanted: &[Wanted], answers: &Answers) -> Vec<String> {
    let mut problems = Vec::new();
    for w in wanted {
        let Some(found) = answers.get(&key(&w.object, &w.name)) else {
            continue;
        };
        let what = format!("#[klp_func] `{}` in {}", w.name, w.object);
        if found.functions == 0 {
            problems.push(format!(
                "{what}: {release} has no such function (not in its kallsyms): it is misspelled, \
                 static inline, or inlined into every caller there; patch a function that \
                 exists (its callers, for an inlined one)"
            ));
        } else if w.sympos == 0 && found.symbols > 1 {
            problems.push(format!(
                "{what}: {release} has {} symbols of this name, and the kernel refuses an \
                 ambiguous one; say which with `sympos = N` (1 to {}, in kallsyms order)",
                found.symbols, found.symbols
            ));
        } else if w.sympos > found.symbols {
            problems.push(format!(
                "{what}: sympos = {} but {release} has only {} symbol(s) of this name; use \
                 1 to {}",
                w.sympos, found.symbols, found.symbols
            ));
        } else if found.traceable == 0 {
            problems.push(format!(
                "{what}: {release} cannot patch it: ftrace has no call site in it (it is \
                 `notrace` or `noinstr`, or too early to trace); patch a function that calls it"
            ));
        }
    }
    problems
}

/// The guest script that answers for `names` of one object: the matching kallsyms lines,
/// then the matching lines of ftrace's list. Names are C identifiers, maybe with a
/// compiler suffix (`.isra.0`), checked by the caller.
pub fn script(module: Option<&str>, names: &[&str]) -> String {
    let alternatives = names
        .iter()
        .map(|n| n.replace('.', "\\."))
        .collect::<Vec<_>>()
        .join("|");
    let load = module.map_or(String::new(), |m| {
        format!("insmod /mod/{m}.ko || echo \"@@@ insmod failed\"\n")
    });
    format!(
        "mount -t tracefs nodev /sys/kernel/tracing\n\
         {load}\
         section kallsyms\n\
         grep -E '^[0-9a-f]+ [A-Za-z] ({alternatives})([[:space:]]|$)' /proc/kallsyms\n\
         section traceable\n\
         grep -E '^({alternatives})( |$)' /sys/kernel/tracing/available_filter_functions\n\
         exit 0\n"
    )
}

/// Reads the guest's answer for `names` of `object` (`None` for vmlinux).
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
    for line in kallsyms {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (ty, name, owner) = match words.as_slice() {
            [_, ty, name] => (ty, name, None),
            [_, ty, name, owner] => (ty, name, Some(*owner)),
            _ => continue,
        };
        if owner != bracket.as_deref() {
            continue;
        }
        if let Some(found) = answers.get_mut(&key(object, name)) {
            found.symbols += 1;
            if matches!(*ty, "t" | "T" | "w" | "W") {
                found.functions += 1;
            }
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

/// The answers kept for a kernel (none yet if the file is missing or unreadable).
pub fn load_cache(file: &Path) -> Answers {
    std::fs::read(file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Keeps the answers, written whole and renamed into place.
pub fn store_cache(file: &Path, answers: &Answers) -> Result<()> {
    let tmp = file.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(answers)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("cannot write {}", file.display()))
}

/// Asks the booted kernel about every wanted name it has not answered yet (one boot per
/// object), keeps the answers, and returns the problems. A module object whose module is not
/// in the kernel's image cannot be asked: a warning says so and its functions go unchecked.
pub fn check_in_kernel(
    shell: &crate::status::Shell,
    kernel: &klp_vm::Kernel,
    wanted: &[Wanted],
    work: &Path,
) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut asked: Vec<&Wanted> = Vec::new();
    for w in wanted {
        if plain_name(&w.name) {
            asked.push(w);
        } else {
            problems.push(format!(
                "#[klp_func] `{}` in {}: not a kernel symbol name (letters, digits, `_`, `.`)",
                w.name, w.object
            ));
        }
    }
    let cache_dir = klp_vm::cache_dir()
        .unwrap_or_else(|| work.to_path_buf())
        .join("functions");
    std::fs::create_dir_all(&cache_dir)
        .with_context(|| format!("cannot create {}", cache_dir.display()))?;
    let cache = cache_dir.join(format!("{}.json", kernel.release));
    let mut answers = load_cache(&cache);
    let mut objects: Vec<&str> = asked.iter().map(|w| w.object.as_str()).collect();
    objects.sort_unstable();
    objects.dedup();
    for object in objects {
        let mut names: Vec<&str> = asked
            .iter()
            .filter(|w| w.object == object && !answers.contains_key(&key(object, &w.name)))
            .map(|w| w.name.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            continue;
        }
        let module = (object != klp_runtime::abi::VMLINUX).then_some(object);
        let mut files = Vec::new();
        if let Some(m) = module {
            match kernel.image_module(m, work) {
                Ok(ko) => files.push(ko),
                Err(_) => {
                    shell.warn(format!(
                        "module {m} is not in the image of {}: the functions the patch replaces \
                         in it were not checked against the kernel",
                        kernel.release
                    ));
                    continue;
                }
            }
        }
        shell.status(
            "Checking",
            format!(
                "{} function(s) in {object} against Linux {} (kallsyms, ftrace; booted once, \
                 then cached)",
                names.len(),
                kernel.release
            ),
        );
        let files: Vec<&Path> = files.iter().map(|f| f.as_path()).collect();
        let log = klp_vm::boot(
            kernel,
            &files,
            &script(module, &names),
            work,
            klp_vm::BootOptions::default(),
        )?;
        if log.serial.contains("@@@ insmod failed") {
            anyhow::bail!(
                "module {object} from the image of {} did not load in the kernel:\n{}",
                kernel.release,
                log.serial
            );
        }
        answers.extend(parse(
            object,
            module,
            &names,
            &log.section("kallsyms"),
            &log.section("traceable"),
        ));
        store_cache(&cache, &answers)?;
    }
    problems.extend(check(
        &kernel.release,
        &asked.into_iter().cloned().collect::<Vec<_>>(),
        &answers,
    ));
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(name: &str, sympos: u32) -> Wanted {
        Wanted {
            object: "vmlinux".into(),
            name: name.into(),
            sympos,
        }
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
        let f = |n: &str| a[&key("vmlinux", n)];
        assert_eq!(
            f("cmdline_proc_show"),
            Found {
                symbols: 1,
                functions: 1,
                traceable: 1
            }
        );
        assert_eq!(
            f("c_start"),
            Found {
                symbols: 3,
                functions: 2,
                traceable: 1
            }
        );
        assert_eq!(
            f("do_syscall_64"),
            Found {
                symbols: 1,
                functions: 1,
                traceable: 0
            }
        );
        assert_eq!(f("nope"), Found::default());
        let m = parse(
            "binfmt_misc",
            Some("binfmt_misc"),
            &["c_start"],
            &kallsyms,
            &traceable,
        );
        assert_eq!(
            m[&key("binfmt_misc", "c_start")],
            Found {
                symbols: 1,
                functions: 1,
                traceable: 1
            }
        );
    }

    #[test]
    fn each_refusal_names_the_fix() {
        let mut a = Answers::new();
        a.insert(
            key("vmlinux", "ok"),
            Found {
                symbols: 1,
                functions: 1,
                traceable: 1,
            },
        );
        a.insert(key("vmlinux", "gone"), Found::default());
        a.insert(
            key("vmlinux", "twice"),
            Found {
                symbols: 2,
                functions: 2,
                traceable: 2,
            },
        );
        a.insert(
            key("vmlinux", "noinstr"),
            Found {
                symbols: 1,
                functions: 1,
                traceable: 0,
            },
        );
        let p = check(
            "6.1.0-56-amd64",
            &[
                wanted("ok", 0),
                wanted("gone", 0),
                wanted("twice", 0),
                wanted("twice", 2),
                wanted("twice", 3),
                wanted("noinstr", 0),
            ],
            &a,
        );
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p[0].contains("`gone` in vmlinux: 6.1.0-56-amd64 has no such function"));
        assert!(
            p[1].contains("has 2 symbols of this name") && p[1].contains("`sympos = N` (1 to 2")
        );
        assert!(p[2].contains("sympos = 3 but 6.1.0-56-amd64 has only 2"));
        assert!(p[3].contains("cannot patch it: ftrace has no call site"));
    }

    #[test]
    fn the_script_escapes_suffixes_and_loads_the_module_first() {
        let s = script(Some("binfmt_misc"), &["bm_status_read", "foo.isra.0"]);
        assert!(s.contains("insmod /mod/binfmt_misc.ko"));
        assert!(s.contains("(bm_status_read|foo\\.isra\\.0)"));
        assert!(plain_name("foo.isra.0") && !plain_name("a'b") && !plain_name(""));
    }
}
