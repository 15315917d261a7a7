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
use std::path::{Path, PathBuf};

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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Found {
    /// The kallsyms entries of the name in the object, in kallsyms order (the order
    /// `sympos` counts), as their type letters: every type counts, as in the livepatch core.
    pub types: String,
    /// Entries in ftrace's list of functions it can attach to.
    pub traceable: u32,
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
        let what = format!("#[klp_func] `{}` in {}", w.name, w.object);
        let symbols = found.types.chars().count();
        let functions = found.functions();
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
            found.types.push_str(ty);
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

/// Keeps the answers, written whole to a file of this writer's own and renamed into place
/// (two writers: the last one's answers stay, each file whole).
pub fn store_cache(file: &Path, answers: &Answers) -> Result<()> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = file.with_extension(format!("tmp-{}-{n}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(answers)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("cannot write {}", file.display()))
}

/// The cache file of a kernel: its release and a short hash of its image's size and time,
/// so that another build under the same release name is asked anew.
fn cache_file(dir: &Path, kernel: &klp_vm::Kernel) -> PathBuf {
    let meta = std::fs::metadata(&kernel.vmlinux).ok();
    let stamp = meta.map_or(String::new(), |m| {
        let time = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        format!("{}-{time}", m.len())
    });
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in stamp.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    dir.join(format!("{}-{:08x}.json", kernel.release, h as u32))
}

/// A module of the image and those it depends on (its `.modinfo` `depends`), in load order.
fn with_dependencies(kernel: &klp_vm::Kernel, name: &str, work: &Path) -> Result<Vec<PathBuf>> {
    fn visit(
        kernel: &klp_vm::Kernel,
        name: &str,
        work: &Path,
        order: &mut Vec<PathBuf>,
    ) -> Result<()> {
        let file = work.join(format!("{}.ko", name.replace('-', "_")));
        if order.contains(&file) {
            return Ok(());
        }
        let ko = kernel.image_module(name, work)?;
        let depends = crate::inspect::inspect(&ko)
            .map(|r| r.depends)
            .unwrap_or_default();
        for d in depends {
            visit(kernel, &d, work, order)?;
        }
        order.push(ko);
        Ok(())
    }
    let mut order = Vec::new();
    visit(kernel, name, work, &mut order)?;
    Ok(order)
}

/// Whether the kernel's image lists `module` as built into vmlinux (`modules.builtin`).
fn built_in(kernel: &klp_vm::Kernel, module: &str) -> bool {
    std::fs::read_to_string(kernel.modules.join("modules.builtin")).is_ok_and(|list| {
        list.lines().any(|l| {
            Path::new(l)
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| f.strip_suffix(".ko"))
                .is_some_and(|f| f.replace('-', "_") == module)
        })
    })
}

/// The lines of a section and the count the guest printed for it; `None` if they disagree or
/// either is missing (the console broke a line, or the script did not get there).
fn counted(log: &klp_vm::GuestLog, section: &str) -> Option<Vec<String>> {
    let lines = log.section(section);
    let said = format!("@@@ lines {section} ");
    let count: usize = log
        .serial
        .lines()
        .find_map(|l| l.trim_end().split_once(&said)?.1.trim().parse().ok())?;
    (lines.len() == count).then_some(lines)
}

/// Asks the booted kernel about every wanted name it has not answered yet (one boot per
/// object), keeps the answers, and returns the verdict. A module object that cannot be
/// loaded in the VM (not in the image, or its init fails there) is a warning, and its
/// functions go unchecked.
pub fn check_in_kernel(
    shell: &crate::status::Shell,
    kernel: &klp_vm::Kernel,
    wanted: &[Wanted],
    work: &Path,
) -> Result<Verdict> {
    let mut verdict = Verdict::default();
    let mut asked: Vec<Wanted> = Vec::new();
    for w in wanted {
        if !plain_name(&w.name) {
            verdict.problems.push(format!(
                "#[klp_func] `{}` in {}: not a kernel symbol name (letters, digits, `_`, `.`)",
                w.name, w.object
            ));
        } else if w.object.contains('-') {
            verdict.problems.push(format!(
                "#[klp_func] `{}`: object `{}`: the kernel names modules with `_` (`{}`), and \
                 would wait for this one forever",
                w.name,
                w.object,
                w.object.replace('-', "_")
            ));
        } else if w.object != klp_runtime::abi::VMLINUX && built_in(kernel, &w.object) {
            verdict.problems.push(format!(
                "#[klp_func] `{}`: module {} is built into {}'s vmlinux: use object = \"vmlinux\"",
                w.name, w.object, kernel.release
            ));
        } else {
            asked.push(w.clone());
        }
    }
    let cache_dir = klp_vm::cache_dir()
        .unwrap_or_else(|| work.to_path_buf())
        .join("functions");
    std::fs::create_dir_all(&cache_dir)
        .with_context(|| format!("cannot create {}", cache_dir.display()))?;
    let cache = cache_file(&cache_dir, kernel);
    let mut answers = load_cache(&cache);
    let mut objects: Vec<String> = asked.iter().map(|w| w.object.clone()).collect();
    objects.sort_unstable();
    objects.dedup();
    let mut unchecked: Vec<String> = Vec::new();
    for object in &objects {
        let object = object.as_str();
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
        let files = match module {
            Some(m) => match with_dependencies(kernel, m, work) {
                Ok(files) => files,
                Err(e) => {
                    verdict.warnings.push(format!(
                        "module {m}: {e:#}; the functions the patch replaces in it were not \
                         checked against the kernel"
                    ));
                    unchecked.push(object.to_string());
                    continue;
                }
            },
            None => Vec::new(),
        };
        let loads: Vec<String> = files
            .iter()
            .filter_map(|f| Some(f.file_stem()?.to_str()?.to_string()))
            .collect();
        let loads: Vec<&str> = loads.iter().map(String::as_str).collect();
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
            &script(&loads, &names),
            work,
            klp_vm::BootOptions::default(),
        )?;
        if let Some(m) = log.serial.lines().find_map(|l| {
            l.split_once("@@@ insmod failed ")
                .map(|(_, m)| m.trim().to_string())
        }) {
            verdict.warnings.push(format!(
                "module {m} from the image did not load in a bare VM (its hardware may be \
                 missing); the functions the patch replaces in {object} were not checked \
                 against the kernel"
            ));
            unchecked.push(object.to_string());
            continue;
        }
        let (Some(kallsyms), Some(traceable)) =
            (counted(&log, "kallsyms"), counted(&log, "traceable"))
        else {
            anyhow::bail!(
                "the kernel's answer about {object} came back garbled on the console (a kernel \
                 message?); build again:\n{}",
                log.serial
            );
        };
        answers.extend(parse(object, module, &names, &kallsyms, &traceable));
        if let Err(e) = store_cache(&cache, &answers) {
            verdict
                .warnings
                .push(format!("the answers were not kept for next time: {e:#}"));
        }
    }
    asked.retain(|w| !unchecked.contains(&w.object));
    let checked = check(&kernel.release, &asked, &answers);
    verdict.problems.extend(checked.problems);
    verdict.warnings.extend(checked.warnings);
    Ok(verdict)
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

    fn found(types: &str, traceable: u32) -> Found {
        Found {
            types: types.into(),
            traceable,
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
