//! Rendering: JSON (`--json`) or one human form per result type (the
//! [`Human`] impls in `human`) on stdout; progress and errors on stderr.

use std::io::Write;
use std::process::ExitCode;

use pyro::{OutputSink, Progress, Remedy};

/// Progress as `[area] detail` lines on stderr.
pub struct Stderr;

impl Progress for Stderr {
    fn phase(&self, area: &str, detail: &str) {
        eprintln!("[{area}] {detail}");
    }
}

/// Progress for long work: a spinner with the current phase on a terminal,
/// plain `[area] detail` lines otherwise (logs, CI, pipes).
pub struct Phases {
    bar: Option<indicatif::ProgressBar>,
}

impl Phases {
    pub fn new() -> Phases {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
                    .expect("valid template"),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        Phases { bar }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Phases {
    fn phase(&self, area: &str, detail: &str) {
        match &self.bar {
            Some(bar) => {
                bar.println(format!("[{area}] {detail}"));
                bar.set_message(format!("{area}: {detail}"));
            }
            None => eprintln!("[{area}] {detail}"),
        }
    }
}

impl Drop for Phases {
    fn drop(&mut self) {
        self.finish();
    }
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Guest output straight to ours, as it arrives.
pub struct Stream;

impl OutputSink for Stream {
    fn stdout(&mut self, bytes: &[u8]) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(bytes);
        let _ = out.flush();
    }
    fn stderr(&mut self, bytes: &[u8]) {
        let _ = std::io::stderr().lock().write_all(bytes);
    }
}

pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// A result printed in its human form.
pub trait Human {
    fn human(&self);
}

/// Prints `value` as JSON or in its human form.
pub fn show<T: serde::Serialize + Human>(json: bool, value: &T) -> anyhow::Result<ExitCode> {
    if json {
        self::json(value)?;
    } else {
        value.human();
    }
    Ok(ExitCode::SUCCESS)
}

/// What the user can do about an error, in this command line's words.
fn remedy(r: &Remedy) -> String {
    match r {
        Remedy::StartWorkspace { workspace_id } => {
            format!("; run `pyro workspace start {workspace_id}` first")
        }
        Remedy::StopWorkspace { workspace_id } => {
            format!("; run `pyro workspace stop {workspace_id}`")
        }
        Remedy::Overwrite => "; pass --force to overwrite it".into(),
        Remedy::ListWorkspaces => "; `pyro workspace list` shows them".into(),
        Remedy::ListEnvironments => "; `pyro env list` shows the catalog".into(),
        Remedy::PullEnvironment { environment } => {
            format!("; run `pyro env pull {environment}` to repair it")
        }
        Remedy::AllowHostCompat => {
            "\n  (or pass --allow-host-compat to run the command on the host, without isolation)"
                .into()
        }
        Remedy::NetworkPolicy { policy } => {
            format!("; create the workspace with --network-policy {policy}")
        }
    }
}

pub fn error(e: &anyhow::Error, json: bool) {
    let mut message = format!("{e:#}");
    if let Some(r) = e
        .downcast_ref::<pyro::Error>()
        .and_then(pyro::Error::remedy)
    {
        message.push_str(&remedy(&r));
    }
    if json {
        let _ = self::json(&serde_json::json!({ "ok": false, "error": message }));
    } else {
        eprintln!("[error] {}", safe(&message, true));
    }
}

/// A name or message that came from the guest, made safe to print on a
/// terminal: control characters (escape sequences among them) are shown
/// escaped, newlines too unless `lines`.
pub fn safe(s: &str, lines: bool) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() && c != '\t' && !(lines && c == '\n');
    if !s.chars().any(bad) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if bad(c) {
                c.escape_default().collect::<String>()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

pub fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

#[cfg(test)]
mod tests {
    use super::safe;

    #[test]
    fn guest_names_cannot_drive_the_terminal() {
        assert_eq!(safe("plain name.txt", false), "plain name.txt");
        assert_eq!(
            safe("a\u{1b}]0;pwned\u{7}b", false),
            "a\\u{1b}]0;pwned\\u{7}b"
        );
        assert_eq!(safe("two\nlines\tok", false), "two\\nlines\tok");
        assert_eq!(safe("two\nlines", true), "two\nlines");
        assert_eq!(safe("csi\u{9b}31m", true), "csi\\u{9b}31m");
    }
}
