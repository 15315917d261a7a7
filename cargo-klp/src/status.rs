//! Cargo-style status lines on stderr: a right-aligned verb, in bold green on a terminal; or,
//! with `--message-format json`, one JSON object per line on stdout, as cargo does.

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
