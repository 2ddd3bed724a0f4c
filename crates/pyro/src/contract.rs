//! What every operation's parameters share: the typed [`Command`], how a
//! command was executed, the defaults of every parameter (one place, read
//! by the CLI's flags, the MCP tools' schemas and the library's `Default`
//! impls) and the limits every request is checked against.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A command to run in a guest.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Command {
    /// A shell command string, run with `/bin/sh -lc`.
    Shell(String),
    /// A program and its arguments, run as they are.
    Argv(Vec<String>),
}

impl Command {
    pub fn shell(s: impl Into<String>) -> Command {
        Command::Shell(s.into())
    }

    pub fn argv<S: Into<String>>(words: impl IntoIterator<Item = S>) -> Command {
        Command::Argv(words.into_iter().map(Into::into).collect())
    }

    /// An empty shell string or an argv without a program is refused.
    pub(crate) fn validate(&self) -> Result<()> {
        let empty = match self {
            Command::Shell(s) => s.trim().is_empty(),
            Command::Argv(a) => a.first().is_none_or(|p| p.is_empty()),
        };
        if empty {
            return Err(Error::invalid("command is required"));
        }
        Ok(())
    }

    /// How history and listings show the command.
    pub fn display(&self) -> String {
        match self {
            Command::Shell(s) => s.clone(),
            Command::Argv(a) => a.join(" "),
        }
    }
}

impl From<Command> for pyro_protocol::Command {
    fn from(c: Command) -> Self {
        match c {
            Command::Shell(s) => pyro_protocol::Command::Shell(s),
            Command::Argv(a) => pyro_protocol::Command::Argv(a),
        }
    }
}

/// How a command was executed.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionMode {
    /// In the guest, through the agent on its virtio-serial port.
    GuestVirtioSerial,
    /// On the host, without isolation (`--allow-host-compat`).
    HostCompat,
}

impl ExecutionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionMode::GuestVirtioSerial => "guest_virtio_serial",
            ExecutionMode::HostCompat => "host_compat",
        }
    }
}

impl std::fmt::Display for ExecutionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a workspace's idle timeout does.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleAction {
    /// Save the guest's memory beside its disk and end QEMU: no memory, no
    /// CPU; the next call resumes it with everything intact.
    #[default]
    Pause,
    /// Shut the guest down (its processes end; the disk stays).
    Stop,
    /// Nothing: it runs until stopped.
    None,
}

impl IdleAction {
    pub fn as_str(self) -> &'static str {
        match self {
            IdleAction::Pause => "pause",
            IdleAction::Stop => "stop",
            IdleAction::None => "none",
        }
    }
}

impl std::fmt::Display for IdleAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for IdleAction {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        [IdleAction::Pause, IdleAction::Stop, IdleAction::None]
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| Error::invalid(format!("on idle {s:?}: use pause, stop or none")))
    }
}

/// The reserved name of a workspace's create-time checkpoint.
pub const BASELINE: &str = "baseline";

/// The default of every parameter that has one. Functions rather than
/// constants so that serde's `default = "..."` can name them.
pub mod defaults {
    pub fn environment() -> String {
        "debian:12".into()
    }
    pub fn vcpu_count() -> u32 {
        1
    }
    pub fn mem_mib() -> u32 {
        1024
    }
    /// A command and everything it started are killed after this long.
    pub fn timeout_seconds() -> u64 {
        30
    }
    /// One-shot and lifecycle VMs: lifetime; workspaces: idle timeout.
    pub fn ttl_seconds() -> u64 {
        600
    }
    /// The working directory of services and shells, and the root of file
    /// listings.
    pub fn workspace_path() -> String {
        pyro_protocol::WORKSPACE_ROOT.into()
    }
    pub fn max_bytes() -> u64 {
        65536
    }
    /// The snapshot `reset` rolls back to.
    pub fn snapshot() -> String {
        super::BASELINE.into()
    }
    pub fn ready_timeout_seconds() -> u64 {
        30
    }
    pub fn ready_interval_ms() -> u64 {
        500
    }
    pub fn tail_lines() -> u64 {
        200
    }
    pub fn cols() -> u16 {
        120
    }
    pub fn rows() -> u16 {
        30
    }
    pub fn max_chars() -> u64 {
        65536
    }
    pub fn signal() -> String {
        "INT".into()
    }
    pub fn append_newline() -> bool {
        true
    }
}

/// The refusal of `allow_host_compat` for `what` (a workspace, a VM):
/// only one-shot runs fall back to the host; anything that persists always
/// runs in a guest, so the flag is refused rather than ignored.
pub(crate) fn host_compat_refused(what: &str) -> Error {
    Error::invalid(format!(
        "allow_host_compat is for one-shot runs only: {what} always runs in a guest, never on the host"
    ))
}

/// The limits every VM's resources share (runs, VMs and workspaces).
pub(crate) fn validate_resources(vcpu_count: u32, mem_mib: u32, ttl_seconds: u64) -> Result<()> {
    if !(1..=8).contains(&vcpu_count) {
        return Err(Error::invalid(format!(
            "vcpu_count must be 1 to 8, not {vcpu_count}"
        )));
    }
    if !(256..=32768).contains(&mem_mib) {
        return Err(Error::invalid(format!(
            "mem_mib must be 256 to 32768, not {mem_mib}"
        )));
    }
    if !(1..=86_400).contains(&ttl_seconds) {
        return Err(Error::invalid(format!(
            "ttl_seconds must be 1 to 86400, not {ttl_seconds}"
        )));
    }
    Ok(())
}

pub(crate) fn validate_timeout(timeout_seconds: u64) -> Result<()> {
    if timeout_seconds == 0 {
        return Err(Error::invalid("timeout_seconds must be at least 1"));
    }
    Ok(())
}

/// Names of snapshots, services and label keys.
pub(crate) fn valid_name(kind: &str, s: &str) -> Result<()> {
    let ok = s.len() <= 64
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{kind} {s:?} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )))
    }
}

/// Workspace names and label values.
pub(crate) fn valid_text(kind: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.chars().count() > 120 || s.contains('\n') {
        return Err(Error::invalid(format!(
            "{kind} must be 1-120 characters on one line"
        )));
    }
    Ok(())
}

pub(crate) fn now() -> f64 {
    ms_to_s(crate::host::now_unix_ms())
}

/// Milliseconds since the Unix epoch as the seconds the public results use.
pub(crate) fn ms_to_s(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_commands_are_refused() {
        assert!(Command::shell("  ").validate().is_err());
        assert!(Command::Argv(vec![]).validate().is_err());
        assert!(Command::argv([""]).validate().is_err());
        assert!(Command::argv(["true"]).validate().is_ok());
        assert_eq!(Command::argv(["echo", "a  b"]).display(), "echo a  b");
    }

    #[test]
    fn limits_are_checked() {
        assert!(validate_resources(1, 1024, 600).is_ok());
        let e = validate_resources(0, 1024, 600).unwrap_err();
        assert!(e.to_string().contains("vcpu_count"));
        assert!(validate_resources(1, 64, 600)
            .unwrap_err()
            .to_string()
            .contains("mem_mib"));
        assert!(validate_timeout(0).is_err());
        assert!(valid_name("snapshot name", "a.b-c_1").is_ok());
        assert!(valid_name("snapshot name", "-a").is_err());
        assert!(valid_name("snapshot name", "").is_err());
        assert!(valid_text("name", "one\ntwo").is_err());
    }
}
