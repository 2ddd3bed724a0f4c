//! `workspace.json` (the [`Record`], a serialized surface of its own with a
//! golden test) and [`WorkspaceInfo`], what status, list and most calls
//! return. The record's transitions are methods here, so every operation
//! changes it the same way.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::contract::{now, ExecutionMode, IdleAction, BASELINE};
use crate::workspace::archive::SourceMode;
use crate::workspace::secrets::SecretInfo;
use crate::workspace::state::{NetworkPolicy, Observed, SnapshotKind, State, StopReason};

pub(crate) const RECORD_VERSION: u32 = 1;

/// Where the workspace's files came from at create.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceSeed {
    pub mode: SourceMode,
    pub seed_path: Option<String>,
    pub destination: String,
    pub entry_count: u64,
    pub bytes_written: u64,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastCommand {
    pub sequence: u64,
    pub command: String,
    pub exit_code: i32,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub snapshot_name: String,
    /// `baseline` (taken at create) or `named`.
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub kind: SnapshotKind,
    pub created_at: f64,
    pub deletable: bool,
}

impl SnapshotInfo {
    pub(crate) fn new(name: &str, kind: SnapshotKind) -> SnapshotInfo {
        SnapshotInfo {
            snapshot_name: name.into(),
            kind,
            created_at: now(),
            deletable: kind.deletable(),
        }
    }
}

/// `workspace.json`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub format_version: u32,
    pub workspace_id: String,
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub environment: String,
    pub vcpu_count: u32,
    pub mem_mib: u32,
    /// Idle timeout: the workspace is stopped (never deleted) this long
    /// after its last activity.
    pub ttl_seconds: u64,
    pub network_policy: NetworkPolicy,
    pub created_at: f64,
    pub last_activity_at: f64,
    /// What the user last asked for.
    pub state: State,
    pub stop_reason: Option<StopReason>,
    pub last_error: Option<String>,
    pub command_count: u64,
    pub last_command: Option<LastCommand>,
    pub workspace_seed: WorkspaceSeed,
    pub reset_count: u64,
    pub last_reset_at: Option<f64>,
    pub snapshots: Vec<SnapshotInfo>,
    #[serde(default)]
    pub secrets: Vec<SecretInfo>,
    /// What the idle timeout does.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub on_idle: IdleAction,
}

/// The parts of a new record that its creator chooses.
pub(crate) struct NewRecord {
    pub workspace_id: String,
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub environment: String,
    pub vcpu_count: u32,
    pub mem_mib: u32,
    pub ttl_seconds: u64,
    pub network_policy: NetworkPolicy,
    pub workspace_seed: WorkspaceSeed,
    pub secrets: Vec<SecretInfo>,
    pub on_idle: IdleAction,
}

impl Record {
    /// A new workspace: started, with its baseline checkpoint.
    pub(crate) fn new(n: NewRecord, at: f64) -> Record {
        Record {
            format_version: RECORD_VERSION,
            workspace_id: n.workspace_id,
            name: n.name,
            labels: n.labels,
            environment: n.environment,
            vcpu_count: n.vcpu_count,
            mem_mib: n.mem_mib,
            ttl_seconds: n.ttl_seconds,
            network_policy: n.network_policy,
            created_at: at,
            last_activity_at: at,
            state: State::Started,
            stop_reason: None,
            last_error: None,
            command_count: 0,
            last_command: None,
            workspace_seed: n.workspace_seed,
            reset_count: 0,
            last_reset_at: None,
            snapshots: vec![SnapshotInfo {
                snapshot_name: BASELINE.into(),
                kind: SnapshotKind::Baseline,
                created_at: at,
                deletable: false,
            }],
            secrets: n.secrets,
            on_idle: n.on_idle,
        }
    }

    pub(crate) fn touch(&mut self) {
        self.last_activity_at = now();
    }

    /// Asked to run (create, start, reset).
    pub(crate) fn mark_started(&mut self) {
        self.state = State::Started;
        self.stop_reason = None;
        self.last_error = None;
        self.touch();
    }

    /// Asked to stop.
    pub(crate) fn mark_stopped(&mut self) {
        self.state = State::Stopped;
        self.stop_reason = Some(StopReason::Stopped);
        self.touch();
    }

    /// Rolled back to a checkpoint: history starts over.
    pub(crate) fn mark_reset(&mut self) {
        self.mark_started();
        self.command_count = 0;
        self.last_command = None;
        self.reset_count += 1;
        self.last_reset_at = Some(now());
    }

    /// Takes the next command's sequence number.
    pub(crate) fn next_command(&mut self) -> u64 {
        self.command_count += 1;
        self.touch();
        self.command_count
    }

    /// Records a finished command, unless a later one already finished.
    pub(crate) fn command_finished(&mut self, last: LastCommand) {
        if self
            .last_command
            .as_ref()
            .is_none_or(|l| l.sequence < last.sequence)
        {
            self.last_command = Some(last);
        }
        self.touch();
    }

    pub(crate) fn snapshot(&self, name: &str) -> Option<&SnapshotInfo> {
        self.snapshots.iter().find(|s| s.snapshot_name == name)
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deleted {
    pub workspace_id: String,
    pub deleted: bool,
}

/// A workspace as status, list and most commands show it.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceInfo {
    pub workspace_id: String,
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub environment: String,
    /// `started` while its VM runs, `paused` while its guest is saved
    /// (any call resumes it), else `stopped`.
    pub state: State,
    /// Why it is stopped: `stopped` (asked), `ttl_expired`, `crashed`, ...
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub stop_reason: Option<StopReason>,
    pub last_error: Option<String>,
    pub workspace_path: String,
    pub vcpu_count: u32,
    pub mem_mib: u32,
    pub ttl_seconds: u64,
    /// What the idle timeout does: `pause`, `stop` or `none`.
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub on_idle: IdleAction,
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub network_policy: NetworkPolicy,
    pub created_at: f64,
    pub last_activity_at: f64,
    /// When an idle running workspace will be paused or stopped.
    pub expires_at: Option<f64>,
    pub execution_mode: ExecutionMode,
    pub command_count: u64,
    pub last_command: Option<LastCommand>,
    pub workspace_seed: WorkspaceSeed,
    pub reset_count: u64,
    pub last_reset_at: Option<f64>,
    pub snapshot_count: usize,
    /// Names and sources only, never values.
    pub secrets: Vec<SecretInfo>,
    /// Services in the guest and how many run; counted by `status` and
    /// `list` (null elsewhere; services end when the VM stops).
    pub service_count: Option<usize>,
    pub running_service_count: Option<usize>,
}

impl WorkspaceInfo {
    /// The record as shown, given what is observed of its VM.
    pub(crate) fn new(r: &Record, seen: Observed) -> WorkspaceInfo {
        let running = seen.state == State::Started;
        WorkspaceInfo {
            workspace_id: r.workspace_id.clone(),
            name: r.name.clone(),
            labels: r.labels.clone(),
            environment: r.environment.clone(),
            state: seen.state,
            stop_reason: seen.stop_reason,
            last_error: seen.last_error,
            workspace_path: pyro_protocol::WORKSPACE_ROOT.into(),
            vcpu_count: r.vcpu_count,
            mem_mib: r.mem_mib,
            ttl_seconds: r.ttl_seconds,
            on_idle: r.on_idle,
            network_policy: r.network_policy,
            created_at: r.created_at,
            last_activity_at: r.last_activity_at,
            expires_at: (running && r.on_idle != IdleAction::None)
                .then_some(r.last_activity_at + r.ttl_seconds as f64),
            execution_mode: ExecutionMode::GuestVirtioSerial,
            command_count: r.command_count,
            last_command: r.last_command.clone(),
            workspace_seed: r.workspace_seed.clone(),
            reset_count: r.reset_count,
            last_reset_at: r.last_reset_at,
            snapshot_count: r.snapshots.len(),
            secrets: r.secrets.clone(),
            service_count: None,
            running_service_count: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::secrets::SecretSource;

    /// `workspace.json` is a commitment: a change to its encoding shows
    /// here. Regenerate with `PYRO_BLESS=1 cargo test -p pyro`.
    #[test]
    fn the_record_format_is_unchanged() {
        let mut r = Record::new(
            NewRecord {
                workspace_id: "0123456789ab".into(),
                name: Some("repro".into()),
                labels: BTreeMap::from([("owner".to_string(), "codex".to_string())]),
                environment: "debian:12".into(),
                vcpu_count: 1,
                mem_mib: 1024,
                ttl_seconds: 600,
                network_policy: NetworkPolicy::EgressPublishedPorts,
                workspace_seed: WorkspaceSeed {
                    mode: SourceMode::Directory,
                    seed_path: Some("/src/repo".into()),
                    destination: "/workspace".into(),
                    entry_count: 3,
                    bytes_written: 42,
                },
                secrets: vec![SecretInfo {
                    name: "API_TOKEN".into(),
                    source_kind: SecretSource::Literal,
                }],
                on_idle: IdleAction::Pause,
            },
            1_700_000_000.5,
        );
        r.command_finished(LastCommand {
            sequence: 1,
            command: "make test".into(),
            exit_code: 2,
        });
        r.last_activity_at = 1_700_000_100.25;
        r.command_count = 1;
        r.mark_stopped();
        r.last_activity_at = 1_700_000_200.0;
        r.snapshots.push(SnapshotInfo {
            snapshot_name: "before-fix".into(),
            kind: SnapshotKind::Named,
            created_at: 1_700_000_050.0,
            deletable: true,
        });
        crate::golden::check("workspace.json", &r);
        let back: Record = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
