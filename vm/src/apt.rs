//! A private apt configuration under the cache, for every Debian release a fleet runs: the
//! host's apt lists only its own release's suites (a Debian 12 build server has no Debian 11
//! or 13 kernels), and its configuration is left untouched. The mirror is the one the host's
//! apt sources already name for Debian (no host name is written here); the keys are the
//! host's `debian-archive-keyring`, which signs all three releases.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

/// A Debian release a supported kernel comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Debian {
    /// Debian 11, gcc-10, Linux 5.10.
    Bullseye,
    /// Debian 12, gcc-12, Linux 6.1 (and 6.12 from bookworm-security).
    Bookworm,
    /// Debian 13, gcc-14, Linux 6.12.
    Trixie,
}

impl Debian {
    pub const ALL: [Debian; 3] = [Debian::Bullseye, Debian::Bookworm, Debian::Trixie];

    pub fn codename(self) -> &'static str {
        match self {
            Debian::Bullseye => "bullseye",
            Debian::Bookworm => "bookworm",
            Debian::Trixie => "trixie",
        }
    }

    pub fn number(self) -> u32 {
        match self {
            Debian::Bullseye => 11,
            Debian::Bookworm => 12,
            Debian::Trixie => 13,
        }
    }

    /// The major version of the release's default gcc, with which Debian builds its kernels.
    pub fn gcc(self) -> u32 {
        match self {
            Debian::Bullseye => 10,
            Debian::Bookworm => 12,
            Debian::Trixie => 14,
        }
    }

    /// The release whose kernels are built with gcc `major`.
    pub fn of_gcc(major: u32) -> Option<Debian> {
        Debian::ALL.into_iter().find(|d| d.gcc() == major)
    }

    pub fn of_codename(name: &str) -> Option<Debian> {
        Debian::ALL.into_iter().find(|d| d.codename() == name)
    }

    /// The release this machine runs (`VERSION_CODENAME` of /etc/os-release), if Debian's.
    pub fn host() -> Option<Debian> {
        let text = std::fs::read_to_string("/etc/os-release").ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
            .and_then(|v| Debian::of_codename(v.trim_matches('"')))
    }

    /// The suites apt gets the release's kernels from: the newest ABIs are in the security
    /// suite, the point release's in the main one.
    pub fn suites(self) -> [String; 3] {
        let c = self.codename();
        [
            c.to_string(),
            format!("{c}-updates"),
            format!("{c}-security"),
        ]
    }
}

/// One `deb` source of the host: its URI and suites.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    uri: String,
    suites: Vec<String>,
    /// Whether it carries the `main` component (Debian's own archive does; a third-party
    /// repository that names a Debian suite, such as Docker's, does not).
    main: bool,
}

/// The host's apt sources, deb822 (`URIs:`/`Suites:` stanzas) and one-line `deb` entries.
fn parse_sources(deb822: &[String], one_line: &[String]) -> Vec<Source> {
    let mut out = Vec::new();
    for text in deb822 {
        for stanza in text.split("\n\n") {
            // deb822 field names are case-insensitive.
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim().eq_ignore_ascii_case(name).then_some(v)
                    })
                    .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                    .unwrap_or_default()
            };
            let types = field("Types");
            let disabled = field("Enabled")
                .iter()
                .any(|v| v.eq_ignore_ascii_case("no"));
            if disabled || !types.iter().any(|t| t == "deb") {
                continue;
            }
            let suites = field("Suites");
            let main = field("Components").iter().any(|c| c == "main");
            for uri in field("URIs") {
                out.push(Source {
                    uri,
                    suites: suites.clone(),
                    main,
                });
            }
        }
    }
    for text in one_line {
        for line in text.lines().map(str::trim) {
            let Some(rest) = line.strip_prefix("deb ") else {
                continue;
            };
            // deb [options] URI SUITE COMPONENTS...
            let rest = match rest.trim_start().strip_prefix('[') {
                Some(r) => r.split_once(']').map_or("", |(_, r)| r),
                None => rest,
            };
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let [uri, suite, components @ ..] = &words[..] {
                out.push(Source {
                    uri: uri.to_string(),
                    suites: vec![suite.to_string()],
                    main: components.contains(&"main"),
                });
            }
        }
    }
    out
}

/// The Debian archive and security mirrors the sources name: the URI of a source carrying a
/// release's main suite, and of one carrying a `-security` suite.
fn mirrors(sources: &[Source]) -> Result<(String, String)> {
    let debian = |s: &&Source| s.main;
    let main = sources.iter().filter(debian).find(|s| {
        s.suites
            .iter()
            .any(|x| Debian::of_codename(x).is_some() || x.ends_with("-updates"))
    });
    let security = sources
        .iter()
        .filter(debian)
        .find(|s| s.suites.iter().any(|x| x.ends_with("-security")));
    match (main, security) {
        (Some(m), Some(s)) => Ok((m.uri.clone(), s.uri.clone())),
        _ => bail!(
            "this machine's apt sources name no Debian mirror with both a release suite and its \
             -security suite (for instance `bookworm` and `bookworm-security`); klp-rs fetches \
             kernels of every Debian release from the mirrors configured there"
        ),
    }
}

/// The host's sources, read from /etc/apt.
fn host_sources() -> Vec<Source> {
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let mut deb822 = Vec::new();
    let mut one_line: Vec<String> = read(Path::new("/etc/apt/sources.list"))
        .into_iter()
        .collect();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<PathBuf> = dir.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        for p in files {
            match p.extension().and_then(|x| x.to_str()) {
                Some("sources") => deb822.extend(read(&p)),
                Some("list") => one_line.extend(read(&p)),
                _ => {}
            }
        }
    }
    parse_sources(&deb822, &one_line)
}

/// The Debian archive mirror the host's apt sources name (for debootstrap).
pub fn host_archive_mirror() -> Result<String> {
    mirrors(&host_sources()).map(|(main, _)| main)
}

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The deb822 sources of a release, on the given mirrors.
fn sources_text(debian: Debian, main: &str, security: &str) -> String {
    let suites = |security_suites: bool| {
        debian
            .suites()
            .into_iter()
            .filter(|s| s.ends_with("-security") == security_suites)
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "# Written by klp-rs from this machine's apt sources; apt-get runs on it with -o options.\n\
         Types: deb\nURIs: {main}\nSuites: {}\nComponents: main\nSigned-By: {KEYRING}\n\n\
         Types: deb\nURIs: {security}\nSuites: {}\nComponents: main\nSigned-By: {KEYRING}\n",
        suites(false),
        suites(true)
    )
}

/// How old the private lists may get before they are refreshed: the newest ABI of a series
/// changes with Debian's security updates, a few times a month.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The private apt configuration of one release, kept in a directory of its own (so that a
/// release moving off the mirror, as each does when its support ends, fails only its own
/// kernels).
#[derive(Debug, Clone)]
pub struct Apt {
    dir: PathBuf,
}

impl Apt {
    /// The configuration of `debian` under `cache` (`<cache>/<codename>`: created, its
    /// sources written from the host's mirrors).
    pub fn open(cache: &Path, debian: Debian) -> Result<Apt> {
        let (main, security) = mirrors(&host_sources())?;
        let dir = cache.join(debian.codename());
        let apt = Apt { dir: dir.clone() };
        for d in ["sources", "lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(d))
                .with_context(|| format!("cannot create {}", dir.join(d).display()))?;
        }
        let status = dir.join("status");
        if !status.exists() {
            std::fs::write(&status, "")?;
        }
        let text = sources_text(debian, &main, &security);
        let file = dir.join("sources/klp-rs.sources");
        if std::fs::read_to_string(&file).ok().as_deref() != Some(&text) {
            // Under the lock, whole: an `apt-get update` of another process reads it.
            let lock = apt.lock()?;
            let tmp = dir.join(format!(".sources.tmp-{}", std::process::id()));
            std::fs::write(&tmp, &text)?;
            std::fs::rename(&tmp, &file)?;
            // Lists of other mirrors are stale now.
            let _ = std::fs::remove_file(dir.join(".updated"));
            drop(lock);
        }
        Ok(apt)
    }

    fn lock(&self) -> Result<std::fs::File> {
        let path = self.dir.join(".lock");
        let lock = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        lock.lock()
            .with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(lock)
    }

    fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        let mut o = vec![
            "Dir::Etc::sourcelist=/dev/null".to_string(),
            format!("Dir::Etc::sourceparts={d}/sources"),
            "Dir::Etc::preferencesparts=/dev/null".to_string(),
            format!("Dir::State::lists={d}/lists"),
            format!("Dir::State::status={d}/status"),
            format!("Dir::Cache={d}/cache"),
            "APT::Architecture=amd64".to_string(),
            "APT::Architectures=amd64".to_string(),
            "Acquire::Languages=none".to_string(),
        ];
        if crate::is_root() {
            // apt drops to `_apt` for downloads, which cannot write to a user's directory.
            o.push("APT::Sandbox::User=root".to_string());
        }
        o.into_iter().flat_map(|o| ["-o".to_string(), o]).collect()
    }

    /// When the lists were last refreshed (nanoseconds), if they were.
    pub fn lists_stamp(&self) -> Option<String> {
        let t = std::fs::metadata(self.dir.join(".updated"))
            .ok()?
            .modified()
            .ok()?;
        Some(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .ok()?
                .as_nanos()
                .to_string(),
        )
    }

    /// Refreshes the lists if they are missing or older than a day (or `force`); one process
    /// at a time.
    pub fn update(&self, force: bool) -> Result<()> {
        let fresh = || {
            std::fs::metadata(self.dir.join(".updated"))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age < LISTS_MAX_AGE)
        };
        if fresh() && !force {
            return Ok(());
        }
        let _lock = self.lock()?;
        if fresh() && !force {
            return Ok(());
        }
        crate::run(
            Command::new("apt-get")
                .args(self.options())
                .args(["update", "-qq"]),
            "apt-get update of klp-rs' own apt lists (Debian's apt is needed)",
            crate::Output::Captured,
        )?;
        std::fs::write(self.dir.join(".updated"), "")?;
        Ok(())
    }

    /// `apt-cache ARGS` on the private lists.
    pub fn cache(&self, args: &[&str]) -> Result<String> {
        crate::run(
            Command::new("apt-cache").args(self.options()).args(args),
            &format!("apt-cache {} (Debian's apt is needed)", args.join(" ")),
            crate::Output::Captured,
        )
    }

    /// Downloads `packages` into `dir`.
    pub fn download(&self, packages: &[String], dir: &Path) -> Result<()> {
        crate::run(
            Command::new("apt-get")
                .args(self.options())
                .arg("download")
                .args(packages)
                .current_dir(dir),
            "apt-get download",
            crate::Output::Captured,
        )
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirrors_come_from_either_sources_format() {
        let deb822 =
            "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\n\
                      Components: main\n\nTypes: deb\nURIs: http://m.example/debian-security\n\
                      Suites: bookworm-security\nComponents: main\n";
        let s = parse_sources(&[deb822.into()], &[]);
        assert_eq!(
            mirrors(&s).unwrap(),
            (
                "http://m.example/debian".into(),
                "http://m.example/debian-security".into()
            )
        );
        let one = "deb [arch=amd64] http://a/debian bookworm main\n\
                   deb http://a/debian-security bookworm-security main\n";
        let s = parse_sources(&[], &[one.into()]);
        assert_eq!(
            mirrors(&s).unwrap(),
            ("http://a/debian".into(), "http://a/debian-security".into())
        );
        assert!(mirrors(&parse_sources(
            &[],
            &["deb http://a/x nodistro main".into()]
        ))
        .is_err());
        // A third-party repository naming Debian's suite, and a disabled stanza, are passed over.
        let docker = "deb https://d/linux/debian bookworm stable\n";
        let off = "types: deb\nuris: http://off/debian\nsuites: bookworm\ncomponents: main\n\
                   enabled: no\n";
        let s = parse_sources(&[off.into(), deb822.into()], &[docker.into()]);
        assert_eq!(mirrors(&s).unwrap().0, "http://m.example/debian");
    }

    #[test]
    fn the_private_sources_list_a_releases_suites_on_the_hosts_mirrors() {
        let t = sources_text(
            Debian::Trixie,
            "http://m/debian",
            "http://m/debian-security",
        );
        assert!(t.contains("URIs: http://m/debian\nSuites: trixie trixie-updates\n"));
        assert!(t.contains("URIs: http://m/debian-security\nSuites: trixie-security\n"));
    }

    #[test]
    fn each_release_is_known_by_its_compiler() {
        assert_eq!(Debian::of_gcc(10), Some(Debian::Bullseye));
        assert_eq!(Debian::of_gcc(14), Some(Debian::Trixie));
        assert_eq!(Debian::of_gcc(13), None);
    }
}
