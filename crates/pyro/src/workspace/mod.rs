//! Persistent workspaces: a VM that stays across many calls, with its own
//! disk, a create-time baseline, command history and disk checkpoints.
//!
//! On disk, `$PYRO_HOME/workspaces/<id>/` holds:
//!
//! | path | what |
//! |---|---|
//! | `workspace.json` | the record ([`Record`]), written atomically under `.lock` |
//! | `disk.qcow2` | the workspace's disk, a copy-on-write overlay on the environment image; checkpoints are qcow2 internal snapshots inside it |
//! | `baseline.tar` | the seed as it was pushed at create, immutable: what `diff` compares against |
//! | `commands/NNNNNN.json` | one entry of command history each |
//! | `secrets/` | secret values, 0600 files in a 0700 directory |
//! | `vm/` | the running VM's directory (see `vmm::dir`); `vm/exit.json` says why it last stopped; `vm/paused/` the saved guest of a paused workspace (see `vmm::saved`) |
//!
//! The record is the truth; whether the VM runs is derived from its
//! supervisor being alive (see `state`), so a killed supervisor shows as
//! stopped with the reason, and `start` brings the same disk back.
//!
//! One module per operation group: `lifecycle` (create, list, status,
//! update, start, stop, delete), `live` (pause, resume, fork), `exec` (commands and history), `files`
//! (sync, export, file list/read/write), `snapshots` (checkpoints and
//! reset), `vm` (the workspace's VM: boot, checkpoint), `changes` (diff and patch), `disk` (offline reads of a stopped
//! disk), `services`, `shells`, `secrets`; `archive` validates what crosses
//! between host and guest.

pub(crate) mod archive;
pub(crate) mod changes;
pub(crate) mod disk;
pub(crate) mod exec;
pub(crate) mod files;
pub(crate) mod lifecycle;
pub(crate) mod live;
pub(crate) mod record;
pub(crate) mod secrets;
pub(crate) mod services;
pub(crate) mod shells;
pub(crate) mod snapshots;
pub(crate) mod state;
pub(crate) mod vm;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use crate::error::{Entity, Error, IoContext, Remedy, Result};
use crate::host::{self, FileLock};
use crate::paths::Paths;
use crate::vmm::client::VmClient;
use crate::vmm::dir::VmDir;
use crate::vmm::saved::Paused;

pub use archive::SourceMode;
pub use changes::{
    ChangeStatus, DiffEntry, DiffResult, DiffSummary, PatchEntry, PatchResult, PatchSummary,
};
pub use disk::{DiskExport, DiskList, DiskRead};
pub use exec::{CommandEntry, WorkspaceExec, WorkspaceLogs};
pub use files::{
    ArtifactType, ExportResult, FileEntry, FileListResult, FileReadResult, FileWriteResult,
    SyncInfo, SyncResult, MAX_FILE_BYTES,
};
pub use lifecycle::{CreateWorkspace, UpdateWorkspace, WorkspaceList};
pub use live::{ForkResult, ForkWorkspace, PauseReport, PauseResult, ResumeReport, ResumeResult};
pub use record::{Deleted, LastCommand, Record, SnapshotInfo, WorkspaceInfo, WorkspaceSeed};
pub use secrets::{SecretInfo, SecretInput, SecretSource};
pub use services::{
    PublishedPort, ReadinessCheck, ServiceInfo, ServiceList, ServiceLogs, StartService,
};
pub use shells::{OpenShell, ReadShell, ShellInfo};
pub use snapshots::{ResetInfo, ResetResult, SnapshotList};
pub use state::{NetworkPolicy, SnapshotKind, State, StopReason};

/// A workspace's directory and the handles to it.
pub struct Workspace {
    pub id: String,
    pub dir: PathBuf,
}

impl Workspace {
    /// The workspace `id`, which must exist.
    pub fn locate(paths: &Paths, id: &str) -> Result<Workspace> {
        let ws = Workspace::at(paths, id);
        if id.is_empty()
            || !id.chars().all(|c| c.is_ascii_hexdigit())
            || !ws.record_path().is_file()
        {
            return Err(Error::not_found(Entity::Workspace, id));
        }
        Ok(ws)
    }

    /// Where workspace `id` lives (or will).
    pub(crate) fn at(paths: &Paths, id: &str) -> Workspace {
        Workspace {
            id: id.to_string(),
            dir: paths.workspaces().join(id),
        }
    }

    pub(crate) fn record_path(&self) -> PathBuf {
        self.dir.join("workspace.json")
    }
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
    pub(crate) fn baseline(&self) -> PathBuf {
        self.dir.join("baseline.tar")
    }
    fn commands(&self) -> PathBuf {
        self.dir.join("commands")
    }
    /// The VM's directory; the VM is named after the workspace.
    pub fn vm(&self) -> VmDir {
        VmDir {
            id: self.id.clone(),
            path: self.dir.join("vm"),
        }
    }

    pub fn lock(&self) -> Result<FileLock> {
        FileLock::acquire(&self.dir.join(".lock"))
    }

    pub fn read(&self) -> Result<Record> {
        let bytes = fs::read(self.record_path())
            .ctx(|| format!("read {}", self.record_path().display()))?;
        let r: Record = serde_json::from_slice(&bytes).map_err(|e| Error::Io {
            context: format!("parse {}", self.record_path().display()),
            source: std::io::Error::other(e),
        })?;
        if r.format_version != record::RECORD_VERSION {
            return Err(Error::conflict(format!(
                "workspace {} has record format {}, this pyro reads {}",
                self.id,
                r.format_version,
                record::RECORD_VERSION
            )));
        }
        Ok(r)
    }

    pub fn write(&self, r: &Record) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(r).expect("records serialize");
        host::write_atomic(&self.record_path(), &bytes)
    }

    /// Read-modify-write under the workspace lock.
    pub fn update<T>(&self, f: impl FnOnce(&mut Record) -> Result<T>) -> Result<T> {
        let _lock = self.lock()?;
        let mut r = self.read()?;
        let out = f(&mut r)?;
        self.write(&r)?;
        Ok(out)
    }

    /// Its VM runs: a supervisor is alive and has not yet recorded how
    /// the VM ended (it writes `exit.json` before it tells anyone and
    /// exits, so a caller told of the end never sees it running).
    pub fn running(&self) -> bool {
        let vm = self.vm();
        vm.live_supervisor().is_some() && !vm.exit_record().exists()
    }

    /// The guest's state saved by a pause.
    pub(crate) fn paused(&self) -> Paused {
        Paused::of(&self.vm())
    }

    /// What is seen of the VM on the host.
    fn seen(&self) -> state::Vm {
        if self.running() {
            state::Vm::Running
        } else if self.paused().exists() {
            state::Vm::Paused
        } else if self.paused().interrupted() {
            state::Vm::PauseInterrupted
        } else {
            state::Vm::Gone
        }
    }

    /// The record as shown, with what is observed of the VM.
    pub fn info(&self, r: &Record) -> WorkspaceInfo {
        let seen = state::observe(
            r.state,
            r.stop_reason,
            r.last_error.as_deref(),
            self.seen(),
            self.vm().read_exit().as_ref(),
        );
        WorkspaceInfo::new(r, seen)
    }

    /// The workspace's secret values (for the guest and for redaction).
    pub fn secret_values(&self, r: &Record) -> Result<BTreeMap<String, String>> {
        secrets::load(&self.dir, &r.secrets)
    }

    /// Secret values, longest first, for redaction.
    pub fn redactions(&self) -> Result<Vec<String>> {
        Ok(secrets::redaction_list(&self.secret_values(&self.read()?)?))
    }

    pub(crate) fn state(&self) -> State {
        match self.seen() {
            state::Vm::Running => State::Started,
            state::Vm::Paused => State::Paused,
            state::Vm::PauseInterrupted | state::Vm::Gone => State::Stopped,
        }
    }

    /// A connection to the running VM, or a clear error if it is not
    /// running (`vm::connect` resumes a paused one first).
    pub(crate) fn connect_running(&self) -> Result<VmClient> {
        if !self.state().can_exec() {
            return Err(Error::conflict_with(
                format!("workspace {} is stopped", self.id),
                Remedy::StartWorkspace {
                    workspace_id: self.id.clone(),
                },
            ));
        }
        let mut c = VmClient::connect(&self.vm())?;
        c.attach(false)?;
        Ok(c)
    }

    /// Refuses `op` on the disk while the VM may write it.
    pub fn require_stopped(&self, op: &str) -> Result<()> {
        if !self.state().can_inspect_disk() {
            return Err(Error::conflict_with(
                format!("workspace {} must be stopped before {op}", self.id),
                Remedy::StopWorkspace {
                    workspace_id: self.id.clone(),
                },
            ));
        }
        Ok(())
    }

    pub fn touch(&self) -> Result<()> {
        self.update(|r| {
            r.touch();
            Ok(())
        })
    }
}
