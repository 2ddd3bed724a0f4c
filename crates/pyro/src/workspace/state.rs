//! A workspace's lifecycle in one place: its states, why it stopped, its
//! network policy, the kinds of its checkpoints, what each state allows,
//! and how the record and the VM's liveness combine into what is shown.
//!
//! The record holds what the user last asked for (`started` or `stopped`);
//! whether the VM runs is a fact of the host (its supervisor is alive). A
//! workspace asked to run whose VM is gone is shown stopped, with the
//! reason read from how the VM ended.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Remedy, Result};
use crate::vmm::dir::{ExitReason, VmExit};

// A workspace's state: `Started` while its VM runs; `Paused` when its
// guest's memory is saved beside its disk and no QEMU runs (any call
// resumes it); `Stopped` keeps the disk, baseline and checkpoints. (Plain
// comments: doc comments would change the published JSON schema.)
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Started,
    Stopped,
    Paused,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Started => "started",
            State::Stopped => "stopped",
            State::Paused => "paused",
        }
    }

    /// Commands, files, shells, services, diffs, patches and exports need
    /// the VM (a paused one is resumed first).
    pub fn can_exec(self) -> bool {
        self == State::Started
    }

    /// The disk is read offline only while nothing writes it: a paused
    /// workspace's disk is as its saved guest left it.
    pub fn can_inspect_disk(self) -> bool {
        self != State::Started
    }

    /// `start` boots a stopped workspace (and leaves a started one be).
    pub fn needs_boot(self) -> bool {
        self == State::Stopped
    }

    /// `start`, and any call that needs the VM, resume a paused one.
    pub fn needs_resume(self) -> bool {
        self == State::Paused
    }
}

/// Why a workspace is stopped.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Someone asked (`stop`).
    Stopped,
    /// The idle timeout passed (never deleted: `start` brings it back).
    TtlExpired,
    /// The VM ended on its own (the guest powered off, QEMU died).
    VmExited,
    /// The supervisor died without saying why.
    Crashed,
    /// It died while saving the guest for a pause; the disk (everything
    /// acknowledged) is intact and `start` boots it.
    PauseInterrupted,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Stopped => "stopped",
            StopReason::TtlExpired => "ttl_expired",
            StopReason::VmExited => "vm_exited",
            StopReason::Crashed => "crashed",
            StopReason::PauseInterrupted => "pause_interrupted",
        }
    }
}

/// Which network a workspace's VM has.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkPolicy {
    /// No network device at all.
    #[default]
    #[serde(rename = "off")]
    Off,
    /// Outbound NAT; the host's loopback stays unreachable.
    #[serde(rename = "egress")]
    Egress,
    /// Egress, and services may publish ports on the host's 127.0.0.1.
    #[serde(rename = "egress+published-ports")]
    EgressPublishedPorts,
}

impl NetworkPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkPolicy::Off => "off",
            NetworkPolicy::Egress => "egress",
            NetworkPolicy::EgressPublishedPorts => "egress+published-ports",
        }
    }

    pub fn has_network(self) -> bool {
        self != NetworkPolicy::Off
    }

    pub fn allows_publishing(self) -> bool {
        self == NetworkPolicy::EgressPublishedPorts
    }

    /// Refuses publishing on a workspace whose policy does not allow it.
    pub(crate) fn check_publishing(self) -> Result<()> {
        if self.allows_publishing() {
            return Ok(());
        }
        let needed = NetworkPolicy::EgressPublishedPorts.as_str();
        Err(Error::conflict_with(
            format!(
                "publishing ports needs a workspace with network policy {needed} (this one has {self})"
            ),
            Remedy::NetworkPolicy {
                policy: needed.into(),
            },
        ))
    }
}

impl std::str::FromStr for NetworkPolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        [
            NetworkPolicy::Off,
            NetworkPolicy::Egress,
            NetworkPolicy::EgressPublishedPorts,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
        .ok_or_else(|| {
            Error::invalid(format!(
                "network policy {s:?}: use off, egress or egress+published-ports"
            ))
        })
    }
}

/// A checkpoint's kind.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotKind {
    /// Taken at create; `diff` compares against it, it cannot be deleted.
    Baseline,
    /// Taken on request.
    Named,
}

impl SnapshotKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotKind::Baseline => "baseline",
            SnapshotKind::Named => "named",
        }
    }

    pub fn deletable(self) -> bool {
        self == SnapshotKind::Named
    }
}

macro_rules! display_as_str {
    ($($ty:ty),*) => {$(
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(State, StopReason, NetworkPolicy, SnapshotKind);

/// A workspace as shown.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub state: State,
    pub stop_reason: Option<StopReason>,
    pub last_error: Option<String>,
}

/// What is seen of a workspace's VM on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vm {
    /// Its supervisor is alive.
    Running,
    /// No supervisor; the guest's state is saved beside the disk.
    Paused,
    /// No supervisor; a pause began saving and never finished.
    PauseInterrupted,
    /// No supervisor.
    Gone,
}

/// What the user asked for (`desired`, with the reason and error stored
/// beside it), and what is seen of the VM, give the state shown.
pub fn observe(
    desired: State,
    stop_reason: Option<StopReason>,
    last_error: Option<&str>,
    vm: Vm,
    exit: Option<&VmExit>,
) -> Observed {
    let last_error = last_error.map(str::to_owned);
    match (desired, vm) {
        (_, Vm::Running) => Observed {
            state: State::Started,
            stop_reason: None,
            last_error,
        },
        // Paused, by a request or by the idle timeout.
        (State::Started | State::Paused, Vm::Paused) => Observed {
            state: State::Paused,
            stop_reason: None,
            last_error,
        },
        (State::Started | State::Paused, Vm::PauseInterrupted) => Observed {
            state: State::Stopped,
            stop_reason: Some(StopReason::PauseInterrupted),
            last_error: Some(match exit {
                Some(exit) => format!("the VM ended while pausing: {exit}"),
                None => "the VM ended while pausing (its supervisor died)".into(),
            }),
        },
        (State::Stopped, _) => Observed {
            state: State::Stopped,
            stop_reason,
            last_error,
        },
        // Asked to run, but nothing runs: say why.
        (State::Started | State::Paused, Vm::Gone) => match exit {
            Some(exit) if exit.reason == ExitReason::TtlExpired => Observed {
                state: State::Stopped,
                stop_reason: Some(StopReason::TtlExpired),
                last_error,
            },
            Some(exit) => Observed {
                state: State::Stopped,
                stop_reason: Some(StopReason::VmExited),
                last_error: Some(exit.to_string()),
            },
            None => Observed {
                state: State::Stopped,
                stop_reason: Some(StopReason::Crashed),
                last_error: Some("the workspace's supervisor died".into()),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(reason: ExitReason) -> VmExit {
        VmExit::new(reason, None)
    }

    #[test]
    fn what_is_shown_follows_the_vm_and_the_request() {
        let shown = |desired, vm, e: Option<VmExit>| {
            let o = observe(desired, None, None, vm, e.as_ref());
            (o.state, o.stop_reason)
        };
        use State::*;
        assert_eq!(shown(Started, Vm::Running, None), (Started, None));
        // A stopped record with a live VM (stop in flight) shows it running.
        assert_eq!(shown(Stopped, Vm::Running, None), (Started, None));
        assert_eq!(shown(Stopped, Vm::Gone, None), (Stopped, None));
        assert_eq!(
            shown(Started, Vm::Gone, Some(exit(ExitReason::TtlExpired))),
            (Stopped, Some(StopReason::TtlExpired))
        );
        assert_eq!(
            shown(Started, Vm::Gone, Some(exit(ExitReason::AgentClosed))),
            (Stopped, Some(StopReason::VmExited))
        );
        assert_eq!(
            shown(Started, Vm::Gone, None),
            (Stopped, Some(StopReason::Crashed))
        );
        // The idle timeout pauses a started workspace; a stop wins.
        assert_eq!(
            shown(Started, Vm::Paused, Some(exit(ExitReason::Paused))),
            (Paused, None)
        );
        assert_eq!(shown(Paused, Vm::Paused, None), (Paused, None));
        assert_eq!(shown(Stopped, Vm::Paused, None), (Stopped, None));
        assert_eq!(
            shown(Paused, Vm::PauseInterrupted, None),
            (Stopped, Some(StopReason::PauseInterrupted))
        );
        let o = observe(
            Started,
            None,
            None,
            Vm::Gone,
            Some(&exit(ExitReason::AgentClosed)),
        );
        assert_eq!(
            o.last_error.as_deref(),
            Some("the guest agent connection closed")
        );
        let o = observe(
            Stopped,
            Some(StopReason::Stopped),
            Some("x"),
            Vm::Gone,
            None,
        );
        assert_eq!(
            (o.stop_reason, o.last_error.as_deref()),
            (Some(StopReason::Stopped), Some("x"))
        );
    }

    #[test]
    fn guards() {
        assert!(State::Started.can_exec() && !State::Stopped.can_exec());
        assert!(!State::Paused.can_exec() && State::Paused.needs_resume());
        assert!(State::Stopped.can_inspect_disk() && !State::Started.can_inspect_disk());
        assert!(State::Paused.can_inspect_disk());
        assert!(SnapshotKind::Named.deletable() && !SnapshotKind::Baseline.deletable());
        assert!(NetworkPolicy::EgressPublishedPorts
            .check_publishing()
            .is_ok());
        let e = NetworkPolicy::Egress.check_publishing().unwrap_err();
        assert!(e.to_string().contains("egress+published-ports"), "{e}");
        assert!(!NetworkPolicy::Off.has_network());
    }

    #[test]
    fn names_are_those_of_the_public_contract() {
        for p in [
            NetworkPolicy::Off,
            NetworkPolicy::Egress,
            NetworkPolicy::EgressPublishedPorts,
        ] {
            assert_eq!(p.as_str().parse::<NetworkPolicy>().unwrap(), p);
            assert_eq!(
                serde_json::to_value(p).unwrap(),
                serde_json::json!(p.as_str())
            );
        }
        assert!("open".parse::<NetworkPolicy>().is_err());
        for r in [
            StopReason::Stopped,
            StopReason::TtlExpired,
            StopReason::VmExited,
            StopReason::Crashed,
            StopReason::PauseInterrupted,
        ] {
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::json!(r.as_str())
            );
        }
        for k in [SnapshotKind::Baseline, SnapshotKind::Named] {
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(k.as_str())
            );
        }
        for s in [State::Started, State::Stopped, State::Paused] {
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
    }
}
