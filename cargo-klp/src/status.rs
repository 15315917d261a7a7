//! Cargo-style status lines on stderr: a right-aligned verb, in bold green on a terminal; or,
//! with `--message-format json`, one JSON object per line on stdout, as cargo does. Long
//! steps (rebuilding `core`, fetching a kernel) show a spinner with the elapsed time on a
//! terminal, and nothing in CI logs.

use std::fmt::Display;
use std::io::IsTerminal;
use std::process::Command;

pub struct Shell {
    pub verbose: bool,
    color: bool,
    json: bool,
}

impl Shell {
    pub fn new(verbose: bool) -> Shell {
        Shell {
            verbose,
            color: std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            json: false,
        }
    }

    /// Messages as JSON lines on stdout (`--message-format json`).
    pub fn json(verbose: bool) -> Shell {
        Shell {
            json: true,
            ..Shell::new(verbose)
        }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    /// One JSON message on stdout, as a line.
    pub fn emit(&self, message: &serde_json::Value) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{message}");
        let _ = out.flush();
    }

    pub fn status(&self, verb: &str, message: impl Display) {
        if self.json {
            self.emit(&serde_json::json!({
                "reason": "klp-step",
                "step": verb,
                "message": message.to_string(),
            }));
            return;
        }
        if self.color {
            eprintln!("\x1b[1;32m{verb:>12}\x1b[0m {message}");
        } else {
            eprintln!("{verb:>12} {message}");
        }
    }

    pub fn warn(&self, message: impl Display) {
        if self.json {
            self.emit(&serde_json::json!({
                "reason": "klp-warning",
                "message": message.to_string(),
            }));
            return;
        }
        if self.color {
            eprintln!("\x1b[1;33mwarning\x1b[0m: {message}");
        } else {
            eprintln!("warning: {message}");
        }
    }

    /// A spinner for a long step, on a terminal only: not with `--message-format json`, not
    /// when stderr is not a terminal, not in CI (`CI` set), where it would only add noise.
    pub fn progress(&self, verb: &str) -> Progress {
        let shown = !self.json
            && std::io::stderr().is_terminal()
            && std::env::var_os("CI").is_none_or(|v| v.is_empty());
        if !shown {
            return Progress(None);
        }
        let bar =
            indicatif::ProgressBar::new_spinner().with_finish(indicatif::ProgressFinish::AndClear);
        let style = indicatif::ProgressStyle::with_template(if self.color {
            "\x1b[1;36m{prefix:>12}\x1b[0m {spinner} {elapsed:>4} {wide_msg}"
        } else {
            "{prefix:>12} {spinner} {elapsed:>4} {wide_msg}"
        })
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_prefix(verb.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Progress(Some(bar))
    }

    /// With `-v`, shows a command before it runs.
    pub fn command(&self, cmd: &Command) {
        if self.verbose {
            let envs: Vec<String> = cmd
                .get_envs()
                .filter_map(|(k, v)| {
                    Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy()))
                })
                .collect();
            let args: Vec<String> = cmd
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let env = if envs.is_empty() {
                String::new()
            } else {
                format!("{} ", envs.join(" "))
            };
            self.status(
                "Running",
                format!(
                    "`{env}{} {}`",
                    cmd.get_program().to_string_lossy(),
                    args.join(" ")
                ),
            );
        }
    }
}

/// A long step's spinner ([`Shell::progress`]); cleared when the last clone is dropped, on
/// success and error alike. Cloned into the threads that read a tool's output.
#[derive(Clone)]
pub struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    /// What the step is doing now.
    pub fn set(&self, message: impl Display) {
        if let Some(bar) = &self.0 {
            bar.set_message(message.to_string());
        }
    }

    /// A line of output, above the spinner (stderr).
    pub fn println(&self, line: &str) {
        match &self.0 {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }
}
