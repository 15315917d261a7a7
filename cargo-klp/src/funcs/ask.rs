//! Asking the booted kernel: the guest run, its answers kept per kernel image in the
//! per-user cache, and the module objects loaded with what they depend on.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{check, key, parse, plain_name, script, Answers, Found, Verdict, Wanted};

/// The names to ask about: vmlinux's come with the bounds of its init text and per-CPU
/// area ([`super::RANGES`]), which say where each entry lies.
fn asked_for<'a>(object: &str, names: &[&'a str]) -> Vec<&'a str> {
    let mut all = names.to_vec();
    if object == klp_runtime::abi::VMLINUX {
        all.extend(super::RANGES);
    }
    all
}

/// How many defined symbols of each name the module file's symbol table has.
fn symbol_counts<'n>(ko: &[u8], names: &[&'n str]) -> Vec<(&'n str, u32)> {
    use object::read::{Object, ObjectSymbol};
    let Ok(file) = object::File::parse(ko) else {
        return Vec::new();
    };
    names
        .iter()
        .map(|&n| {
            let count = file
                .symbols()
                .filter(|s| !s.is_undefined() && s.name() == Ok(n))
                .count();
            (n, u32::try_from(count).unwrap_or(u32::MAX))
        })
        .collect()
}

/// The name under which the answers remember that a module object did not load in a bare
/// VM (no symbol is named with `*`).
const UNLOADABLE: &str = "*unloadable*";

/// The answers kept for a kernel (none yet if the file is missing or unreadable).
fn load_cache(file: &Path) -> Answers {
    std::fs::read(file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Keeps the answers, written whole to a file of this writer's own and renamed into place
/// (two writers: the last one's answers stay, each file whole).
fn store_cache(file: &Path, answers: &Answers) -> Result<()> {
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
    let stamp = kernel.image_stamp().unwrap_or_default();
    // v3: the answers say where each entry lies (`places`) and how many a module's file has.
    dir.join(format!(
        "{}-v3-{}.json",
        kernel.release,
        crate::build::short_hash(&[stamp])
    ))
}

/// A module of the image and those it depends on (its `.modinfo` `depends`), in load order.
fn with_dependencies(kernel: &klp_vm::Kernel, name: &str, work: &Path) -> Result<Vec<PathBuf>> {
    fn visit(
        kernel: &klp_vm::Kernel,
        name: &str,
        work: &Path,
        visiting: &mut Vec<String>,
        order: &mut Vec<PathBuf>,
    ) -> Result<()> {
        let plain = name.replace('-', "_");
        let file = work.join(format!("{plain}.ko"));
        if order.contains(&file) {
            return Ok(());
        }
        if visiting.contains(&plain) {
            anyhow::bail!(
                "its dependencies form a cycle ({} -> {plain})",
                visiting.join(" -> ")
            );
        }
        visiting.push(plain);
        let ko = kernel.image_module(name, work)?;
        let depends = crate::inspect::inspect(&ko)
            .map(|r| r.depends)
            .unwrap_or_default();
        for d in depends {
            visit(kernel, &d, work, visiting, order)?;
        }
        visiting.pop();
        order.push(ko);
        Ok(())
    }
    let mut order = Vec::new();
    visit(kernel, name, work, &mut Vec::new(), &mut order)?;
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
                "{}: not a kernel symbol name (letters, digits, `_`, `.`)",
                w.describe()
            ));
        } else if w.object.contains('-') {
            verdict.problems.push(format!(
                "{}: the kernel names modules with `_` (`{}`), and would wait for this one \
                 forever",
                w.describe(),
                w.object.replace('-', "_")
            ));
        } else if w.object != klp_runtime::abi::VMLINUX && built_in(kernel, &w.object) {
            verdict.problems.push(format!(
                "{}: module {} is built into {}'s vmlinux: use object = \"vmlinux\"",
                w.describe(),
                w.object,
                kernel.release
            ));
        } else {
            asked.push(w.clone());
        }
    }
    let mut cache_dir = klp_vm::cache_dir()
        .unwrap_or_else(|| work.to_path_buf())
        .join("functions");
    if let Err(e) = std::fs::create_dir_all(&cache_dir) {
        verdict.warnings.push(format!(
            "cannot create {} ({e}); the kernel's answers are not kept for next time",
            cache_dir.display()
        ));
        cache_dir = work.to_path_buf();
    }
    let cache = cache_file(&cache_dir, kernel);
    // What of qemu and a static busybox is missing, asked once, when a boot is needed.
    let mut missing_tools: Option<Option<String>> = None;
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
        let unchecked_because = |why: &str| {
            format!(
                "{why}; the symbols the patch replaces or uses in {object} were not checked \
                 against Linux {}",
                kernel.release
            )
        };
        if answers.contains_key(&key(object, UNLOADABLE)) {
            verdict.warnings.push(unchecked_because(&format!(
                "module {object} did not load in a bare VM when last tried"
            )));
            unchecked.push(object.to_string());
            continue;
        }
        let missing = missing_tools.get_or_insert_with(|| {
            crate::tools::check_vm(klp_vm::BOOT_TOOLS)
                .err()
                .map(|e| e.to_string())
        });
        if let Some(missing) = missing {
            verdict.warnings.push(unchecked_because(missing));
            unchecked.push(object.to_string());
            continue;
        }
        let module = (object != klp_runtime::abi::VMLINUX).then_some(object);
        let files = match module {
            Some(m) => match with_dependencies(kernel, m, work) {
                Ok(files) => files,
                Err(e) => {
                    verdict.warnings.push(format!(
                        "module {m}: {e:#}; the symbols the patch replaces or uses in it were \
                         not checked against the kernel"
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
                "{} symbol(s) in {object} against Linux {} (kallsyms, ftrace; booted once, \
                 then cached)",
                names.len(),
                kernel.release
            ),
        );
        let paths: Vec<&Path> = files.iter().map(|f| f.as_path()).collect();
        let booted = klp_vm::boot(
            kernel,
            &paths,
            &script(&loads, &asked_for(object, &names)),
            work,
            klp_vm::BootOptions::default(),
        );
        let failed_load = match &booted {
            // A module's init that warns or oopses in a bare VM: the module, not the patch.
            Err(e) if module.is_some() => Some(format!(
                "module {object} (or one it depends on) made the kernel complain when loaded \
                 in a bare VM: {}",
                format!("{e:#}").lines().next().unwrap_or_default()
            )),
            Err(_) => None,
            Ok(log) => log.serial.lines().find_map(|l| {
                l.split_once("@@@ insmod failed ").map(|(_, m)| {
                    format!(
                        "module {} did not load in a bare VM (its hardware may be missing)",
                        m.trim()
                    )
                })
            }),
        };
        if let Some(why) = failed_load {
            verdict.warnings.push(unchecked_because(&why));
            unchecked.push(object.to_string());
            // Remembered, so that the next build does not boot to learn it again.
            answers.insert(key(object, UNLOADABLE), Found::default());
            if let Err(e) = store_cache(&cache, &answers) {
                verdict
                    .warnings
                    .push(format!("the answers were not kept for next time: {e:#}"));
            }
            continue;
        }
        let log = booted?;
        let (Some(kallsyms), Some(traceable)) =
            (counted(&log, "kallsyms"), counted(&log, "traceable"))
        else {
            anyhow::bail!(
                "the kernel's answer about {object} came back garbled on the console (a kernel \
                 message?); build again:\n{}",
                log.serial
            );
        };
        let mut found = parse(object, module, &names, &kallsyms, &traceable);
        // The module's own file: the symbol table the livepatch core searches when the
        // module loads after the patch (init symbols still in it).
        if let Some(ko) = module.and_then(|_| files.last()) {
            let counts = std::fs::read(ko)
                .ok()
                .map(|data| symbol_counts(&data, &names))
                .unwrap_or_default();
            for (name, count) in counts {
                if let Some(f) = found.get_mut(&key(object, name)) {
                    f.in_module_file = Some(count);
                }
            }
        }
        answers.extend(found);
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
