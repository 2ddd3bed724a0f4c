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
//! | `vm/` | the running VM's directory (sockets, logs, supervisor pid); `vm/exit.json` says why it last stopped |
//!
//! The record is the truth; whether the VM runs is derived from its
//! supervisor being alive, so a killed supervisor shows as stopped with the
//! reason, and `start` brings the same disk back.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use pyro_protocol::{Command, ExecRequest, Message, PutArchive, WORKSPACE_ROOT};
use serde::{Deserialize, Serialize};

use crate::archive::{self, SourceMode};
use crate::client::{Capture, OutputSink, VmClient};
use crate::error::{Error, IoContext, Result};
use crate::host::{self, FileLock};
use crate::progress::Progress;
use crate::run::{command_from_args, ExecutionMode};
use crate::secrets::{self, SecretInfo, SecretInput};
use crate::vm::{self, VmDir};
use crate::{assets, environments, qemu, templates, Pyro};

const RECORD_VERSION: u32 = 1;

/// What a path in a workspace is.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactType {
    File,
    Directory,
    Symlink,
    Other,
}

impl From<pyro_protocol::ArtifactType> for ArtifactType {
    fn from(t: pyro_protocol::ArtifactType) -> Self {
        match t {
            pyro_protocol::ArtifactType::File => ArtifactType::File,
            pyro_protocol::ArtifactType::Directory => ArtifactType::Directory,
            pyro_protocol::ArtifactType::Symlink => ArtifactType::Symlink,
            pyro_protocol::ArtifactType::Other => ArtifactType::Other,
        }
    }
}

/// One path of a listing.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub artifact_type: ArtifactType,
    pub size_bytes: u64,
    pub link_target: Option<String>,
}

impl From<pyro_protocol::FileEntry> for FileEntry {
    fn from(e: pyro_protocol::FileEntry) -> Self {
        FileEntry {
            path: e.path,
            artifact_type: e.artifact_type.into(),
            size_bytes: e.size_bytes,
            link_target: e.link_target,
        }
    }
}
/// The reserved name of the create-time checkpoint.
pub const BASELINE: &str = "baseline";
/// Largest file `file read` returns and `file write` or a patch writes.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Started,
    Stopped,
}

/// Where the workspace's files came from at create.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceSeed {
    pub mode: SourceMode,
    pub seed_path: Option<String>,
    pub destination: String,
    pub entry_count: u64,
    pub bytes_written: u64,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastCommand {
    pub sequence: u64,
    pub command: String,
    pub exit_code: i32,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub snapshot_name: String,
    /// `baseline` (taken at create) or `named`.
    pub kind: String,
    pub created_at: f64,
    pub deletable: bool,
}

/// `workspace.json`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    pub network_policy: String,
    pub created_at: f64,
    pub last_activity_at: f64,
    /// What the user last asked for: `started` or `stopped`.
    pub state: State,
    pub stop_reason: Option<String>,
    pub last_error: Option<String>,
    pub command_count: u64,
    pub last_command: Option<LastCommand>,
    pub workspace_seed: WorkspaceSeed,
    pub reset_count: u64,
    pub last_reset_at: Option<f64>,
    pub snapshots: Vec<SnapshotInfo>,
    #[serde(default)]
    pub secrets: Vec<SecretInfo>,
}

/// A workspace as status, list and most commands show it.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceInfo {
    pub workspace_id: String,
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub environment: String,
    /// `started` while its VM runs, else `stopped`.
    pub state: State,
    /// Why it is stopped: `stopped` (asked), `ttl_expired`, `crashed`, ...
    pub stop_reason: Option<String>,
    pub last_error: Option<String>,
    pub workspace_path: String,
    pub vcpu_count: u32,
    pub mem_mib: u32,
    pub ttl_seconds: u64,
    pub network_policy: String,
    pub created_at: f64,
    pub last_activity_at: f64,
    /// When an idle running workspace will be stopped.
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

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateWorkspace {
    pub environment: String,
    pub vcpu_count: Option<u32>,
    pub mem_mib: Option<u32>,
    pub ttl_seconds: Option<u64>,
    pub network_policy: Option<String>,
    pub seed_path: Option<PathBuf>,
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub secrets: Vec<SecretInput>,
}

/// Parameters of [`Pyro::exec_workspace`](crate::Pyro::exec_workspace).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceExec {
    /// One element: a shell command string; several: an argv.
    pub command: Vec<String>,
    pub timeout_seconds: u64,
    /// Secrets to pass as environment variables: secret name → variable
    /// name (empty: the secret's own name).
    pub secret_env: BTreeMap<String, String>,
}

impl WorkspaceExec {
    pub fn new(command: Vec<String>) -> WorkspaceExec {
        WorkspaceExec {
            command,
            timeout_seconds: 30,
            secret_env: BTreeMap::new(),
        }
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdateWorkspace {
    pub name: Option<String>,
    pub clear_name: bool,
    pub labels: BTreeMap<String, String>,
    pub clear_labels: Vec<String>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceList {
    pub count: usize,
    pub workspaces: Vec<WorkspaceInfo>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deleted {
    pub workspace_id: String,
    pub deleted: bool,
}

/// One command of the history; also what `exec` returns.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandEntry {
    pub workspace_id: String,
    pub sequence: u64,
    pub command: String,
    pub cwd: String,
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub duration_ms: u64,
    pub started_at: f64,
    pub stdout: String,
    pub stderr: String,
    pub execution_mode: ExecutionMode,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceLogs {
    pub workspace_id: String,
    pub count: usize,
    pub entries: Vec<CommandEntry>,
}

fn now() -> f64 {
    host::now_unix_ms() as f64 / 1000.0
}

pub(crate) fn valid_name(kind: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars().next().unwrap().is_ascii_alphanumeric()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{kind} {s:?} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )))
    }
}

fn valid_text(kind: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.chars().count() > 120 || s.contains('\n') {
        return Err(Error::InvalidArgument(format!(
            "{kind} must be 1-120 characters on one line"
        )));
    }
    Ok(())
}

/// A path the user gave, made absolute under `/workspace` and normalized.
pub fn workspace_path(path: &str) -> Result<String> {
    let joined = if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        Path::new(WORKSPACE_ROOT).join(path)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::ParentDir => {
                return Err(Error::InvalidArgument(format!(
                    "{path}: `..` is not allowed"
                )))
            }
            _ => {}
        }
    }
    if !out.starts_with(WORKSPACE_ROOT) {
        return Err(Error::InvalidArgument(format!(
            "{path}: outside {WORKSPACE_ROOT}"
        )));
    }
    Ok(out.display().to_string())
}

/// A workspace's directory and the handles to it.
pub struct Workspace {
    pub id: String,
    pub dir: PathBuf,
}

impl Workspace {
    pub fn locate(pyro: &Pyro, id: &str) -> Result<Workspace> {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::InvalidArgument(format!("no workspace {id:?}")));
        }
        let dir = pyro.paths.home.join("workspaces").join(id);
        if !dir.join("workspace.json").is_file() {
            return Err(Error::InvalidArgument(format!(
                "no workspace {id:?}; `pyro workspace list` shows them"
            )));
        }
        Ok(Workspace {
            id: id.to_string(),
            dir,
        })
    }

    fn record_path(&self) -> PathBuf {
        self.dir.join("workspace.json")
    }
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
    fn baseline(&self) -> PathBuf {
        self.dir.join("baseline.tar")
    }
    fn commands(&self) -> PathBuf {
        self.dir.join("commands")
    }
    pub fn vm(&self) -> VmDir {
        VmDir::from_path(&self.dir.join("vm"))
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
        if r.format_version != RECORD_VERSION {
            return Err(Error::InvalidArgument(format!(
                "workspace {} has record format {}, this pyro reads {RECORD_VERSION}",
                self.id, r.format_version
            )));
        }
        Ok(r)
    }

    pub fn write(&self, r: &Record) -> Result<()> {
        host::write_atomic(&self.record_path(), &serde_json::to_vec_pretty(r).unwrap())
    }

    /// Read-modify-write under the workspace lock.
    pub fn update<T>(&self, f: impl FnOnce(&mut Record) -> Result<T>) -> Result<T> {
        let _lock = self.lock()?;
        let mut r = self.read()?;
        let out = f(&mut r)?;
        self.write(&r)?;
        Ok(out)
    }

    pub fn running(&self) -> bool {
        self.vm().live_supervisor().is_some()
    }

    pub fn info(&self, r: &Record) -> WorkspaceInfo {
        let running = self.running();
        let (state, stop_reason, last_error) = match (r.state, running) {
            (_, true) => (State::Started, None, r.last_error.clone()),
            (State::Stopped, false) => {
                (State::Stopped, r.stop_reason.clone(), r.last_error.clone())
            }
            // Asked to run, but nothing runs: say why.
            (State::Started, false) => match self.vm().read_exit() {
                Some(exit) if exit.reason == "ttl_expired" => (
                    State::Stopped,
                    Some("ttl_expired".into()),
                    r.last_error.clone(),
                ),
                Some(exit) => (State::Stopped, Some("vm_exited".into()), Some(exit.reason)),
                None => (
                    State::Stopped,
                    Some("crashed".into()),
                    Some(
                        "the workspace's supervisor died; `pyro workspace start` brings it back"
                            .into(),
                    ),
                ),
            },
        };
        WorkspaceInfo {
            workspace_id: r.workspace_id.clone(),
            name: r.name.clone(),
            labels: r.labels.clone(),
            environment: r.environment.clone(),
            state,
            stop_reason,
            last_error,
            workspace_path: WORKSPACE_ROOT.into(),
            vcpu_count: r.vcpu_count,
            mem_mib: r.mem_mib,
            ttl_seconds: r.ttl_seconds,
            network_policy: r.network_policy.clone(),
            created_at: r.created_at,
            last_activity_at: r.last_activity_at,
            expires_at: running.then(|| r.last_activity_at + r.ttl_seconds as f64),
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

    /// `info` with its services counted, without it counting as activity.
    fn info_with_services(&self, r: &Record) -> WorkspaceInfo {
        let mut info = self.info(r);
        let counts = if info.state != State::Started {
            Ok((0, 0))
        } else {
            (|| -> Result<(usize, usize)> {
                let mut c = VmClient::connect(&self.vm())?;
                c.attach_passive()?;
                match c.request(&Message::ServiceList, None, &mut |_| {})? {
                    Message::Services { services } => Ok((
                        services.len(),
                        services.iter().filter(|s| s.state == "running").count(),
                    )),
                    other => Err(Error::Guest(format!("unexpected reply {other:?}"))),
                }
            })()
        };
        match counts {
            Ok((total, running)) => {
                info.service_count = Some(total);
                info.running_service_count = Some(running);
            }
            // It may have stopped meanwhile (an idle timeout); say so.
            Err(_) => {
                info = self.info(r);
                if info.state == State::Stopped {
                    info.service_count = Some(0);
                    info.running_service_count = Some(0);
                }
            }
        }
        info
    }

    /// The workspace's secret values (for the guest and for redaction).
    pub fn secret_values(&self, r: &Record) -> Result<BTreeMap<String, String>> {
        secrets::load(&self.dir, &r.secrets)
    }

    /// A connection to the running VM, or a clear error if it is stopped.
    pub fn connect(&self) -> Result<VmClient> {
        if !self.running() {
            return Err(Error::InvalidArgument(format!(
                "workspace {} is stopped; run `pyro workspace start {}` first",
                self.id, self.id
            )));
        }
        let mut c = VmClient::connect(&self.vm())?;
        c.attach(false)?;
        Ok(c)
    }

    fn touch(&self) -> Result<()> {
        self.update(|r| {
            r.last_activity_at = now();
            Ok(())
        })
    }
}

/// How many VMs may run at once: `PYRO_MAX_RUNNING_VMS`, or what host
/// memory allows at 1 GiB and some overhead each.
pub fn running_limit() -> usize {
    if let Some(n) = std::env::var("PYRO_MAX_RUNNING_VMS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(4 << 20);
    ((total_kib / 1024 * 3 / 4) / 1152).max(1) as usize
}

/// Live VMs: one-shot runs and running workspaces.
fn running_vms(pyro: &Pyro) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(pyro.paths.vms()) {
        for e in entries.flatten() {
            if VmDir::from_path(&e.path()).live_supervisor().is_some() {
                out.push(format!("vm {}", e.file_name().to_string_lossy()));
            }
        }
    }
    if let Ok(entries) = fs::read_dir(pyro.paths.home.join("workspaces")) {
        for e in entries.flatten() {
            if VmDir::from_path(&e.path().join("vm"))
                .live_supervisor()
                .is_some()
            {
                out.push(format!("workspace {}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// Takes the capacity lock and checks there is room for one more running
/// VM; hold the lock until the VM has started.
pub(crate) fn admit(pyro: &Pyro) -> Result<FileLock> {
    fs::create_dir_all(&pyro.paths.home).ctx(|| "create state dir".into())?;
    let lock = FileLock::acquire(&pyro.paths.home.join(".capacity.lock"))?;
    let running = running_vms(pyro);
    let limit = running_limit();
    if running.len() >= limit {
        return Err(Error::InvalidArgument(format!(
            "{} VMs are running, the limit (PYRO_MAX_RUNNING_VMS) is {limit}; stop one first: {}",
            running.len(),
            running.join(", ")
        )));
    }
    Ok(lock)
}

/// Boots the workspace's VM on its disk. Holds the capacity lock while
/// counting and starting, so concurrent starts cannot overshoot.
/// The VM a workspace runs in.
fn vm_spec(ws: &Workspace, r: &Record, assets: &assets::RuntimeAssets) -> qemu::VmSpec {
    let dir = ws.vm();
    qemu::VmSpec {
        accel: host::choose_accel().accel,
        vcpu_count: r.vcpu_count,
        mem_mib: r.mem_mib,
        kernel: assets.kernel.clone(),
        initramfs: assets.initramfs.clone(),
        disk: ws.disk(),
        disk_cache_unsafe: false,
        tsc_khz: host::tsc_khz(),
        agent_socket: dir.agent_socket(),
        qmp_socket: dir.qmp_socket(),
        console_log: dir.console_log(),
        network_socket: (r.network_policy != "off").then(|| host::network_socket(&ws.id)),
        snapshot: None,
    }
}

/// Boots the workspace's VM on its disk, or restores `template` (whose
/// disk the workspace's must be a copy of). Holds the capacity lock while
/// counting and starting, so concurrent starts cannot overshoot.
fn boot(
    pyro: &Pyro,
    ws: &Workspace,
    r: &Record,
    template: Option<&templates::Template>,
    progress: &dyn Progress,
) -> Result<()> {
    let entry = environments::lookup(&r.environment)?;
    let assets = assets::ensure(&pyro.paths, progress)?;
    environments::ensure(&pyro.paths, entry, false, progress)?;
    let _capacity = admit(pyro)?;
    let dir = ws.vm();
    let mut spec = vm_spec(ws, r, &assets);
    spec.snapshot = template.map(|t| t.state.clone());
    let record = vm::new_record(&ws.id, &r.environment, false, r.ttl_seconds, spec);
    vm::write_record(&dir, &record)?;
    vm::start_supervisor(&pyro.program, &dir)?;
    if !r.secrets.is_empty() {
        let secrets = ws.secret_values(r)?;
        let mut c = ws.connect()?;
        c.request(&Message::InstallSecrets { secrets }, None, &mut |_| {})?;
    }
    Ok(())
}

/// Stops the VM gracefully (the guest syncs and powers off).
fn halt(ws: &Workspace) -> Result<()> {
    vm::halt(&ws.vm())
}

pub fn create(pyro: &Pyro, p: &CreateWorkspace, progress: &dyn Progress) -> Result<WorkspaceInfo> {
    let entry = environments::lookup(&p.environment)?;
    let vcpu_count = p.vcpu_count.unwrap_or(1);
    let mem_mib = p.mem_mib.unwrap_or(1024);
    let ttl_seconds = p.ttl_seconds.unwrap_or(600);
    crate::run::validate_resources(vcpu_count, mem_mib, ttl_seconds)?;
    let network_policy = p.network_policy.clone().unwrap_or_else(|| "off".into());
    match network_policy.as_str() {
        "off" | "egress" | crate::services::PUBLISHING_POLICY => {}
        other => {
            return Err(Error::InvalidArgument(format!(
                "network policy {other:?}: use off, egress or egress+published-ports"
            )))
        }
    }
    if let Some(n) = &p.name {
        valid_text("name", n)?;
    }
    for (k, v) in &p.labels {
        valid_name("label key", k)?;
        valid_text("label value", v)?;
    }
    let secret_values = secrets::resolve(&p.secrets)?;

    let id = host::random_id(6);
    let ws = Workspace {
        id: id.clone(),
        dir: pyro.paths.home.join("workspaces").join(&id),
    };
    fs::create_dir_all(ws.commands()).ctx(|| format!("create {}", ws.dir.display()))?;
    let result = (|| -> Result<WorkspaceInfo> {
        secrets::store(&ws.dir, &secret_values)?;
        // Validate and capture the seed before anything boots.
        let seed_file = fs::File::create(ws.baseline()).ctx(|| "create baseline".into())?;
        let (mode, summary) = match &p.seed_path {
            Some(path) => archive::build(path, std::io::BufWriter::new(seed_file))?,
            None => {
                tar::Builder::new(seed_file)
                    .finish()
                    .ctx(|| "write baseline".into())?;
                (SourceMode::Empty, archive::Summary::default())
            }
        };
        let base = environments::ensure(&pyro.paths, entry, false, progress)?;
        let t = now();
        let record = Record {
            format_version: RECORD_VERSION,
            workspace_id: id.clone(),
            name: p.name.clone(),
            labels: p.labels.clone(),
            environment: entry.name.into(),
            vcpu_count,
            mem_mib,
            ttl_seconds,
            network_policy,
            created_at: t,
            last_activity_at: t,
            state: State::Started,
            stop_reason: None,
            last_error: None,
            command_count: 0,
            last_command: None,
            workspace_seed: WorkspaceSeed {
                mode,
                seed_path: p.seed_path.as_ref().map(|s| s.display().to_string()),
                destination: WORKSPACE_ROOT.into(),
                entry_count: summary.entry_count,
                bytes_written: summary.bytes,
            },
            reset_count: 0,
            last_reset_at: None,
            snapshots: vec![SnapshotInfo {
                snapshot_name: BASELINE.into(),
                kind: "baseline".into(),
                created_at: t,
                deletable: false,
            }],
            secrets: secret_values.iter().map(|(i, _)| i.clone()).collect(),
        };
        let assets = assets::ensure(&pyro.paths, progress)?;
        let template = templates::first_disk(
            &pyro.paths,
            &vm_spec(&ws, &record, &assets),
            &base,
            progress,
        )?;
        ws.write(&record)?;
        progress.phase("workspace", &format!("phase=start workspace_id={id}"));
        boot(pyro, &ws, &record, template.as_ref(), progress)?;
        let mut client = ws.connect()?;
        if mode != SourceMode::Empty {
            progress.phase("workspace", &format!("phase=seed workspace_id={id}"));
        }
        push(&mut client, &ws.baseline(), WORKSPACE_ROOT)?;
        checkpoint(&mut client, BASELINE)?;
        Ok(ws.info(&record))
    })();
    if result.is_err() {
        let _ = halt(&ws);
        let _ = fs::remove_dir_all(&ws.dir);
    }
    result
}

/// Streams a tar file into the guest at `dest`.
fn push(client: &mut VmClient, tar_path: &Path, dest: &str) -> Result<(u64, u64)> {
    let mut f = fs::File::open(tar_path).ctx(|| format!("open {}", tar_path.display()))?;
    let reply = client.request(
        &Message::PutArchive(PutArchive {
            dest: dest.into(),
            remove: Vec::new(),
            atomic: false,
        }),
        Some(&mut f),
        &mut |_| {},
    )?;
    match reply {
        Message::ArchivePut {
            entry_count,
            bytes_written,
        } => Ok((entry_count, bytes_written)),
        other => Err(Error::Guest(format!("unexpected reply {other:?}"))),
    }
}

/// A whole-disk checkpoint of a running workspace: the guest filesystem is
/// frozen (flushed and quiesced) while QEMU takes a qcow2 internal
/// snapshot, which is copy-on-write and costs no copy.
fn checkpoint(client: &mut VmClient, name: &str) -> Result<()> {
    client.request(&Message::Freeze, None, &mut |_| {})?;
    let snap = client.qmp(
        "blockdev-snapshot-internal-sync",
        serde_json::json!({ "device": "root", "name": name }),
    );
    let thaw = client.request(&Message::Thaw, None, &mut |_| {});
    snap?;
    thaw?;
    Ok(())
}

pub fn list(pyro: &Pyro) -> Result<WorkspaceList> {
    let mut workspaces = Vec::new();
    if let Ok(entries) = fs::read_dir(pyro.paths.home.join("workspaces")) {
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if let Ok(ws) = Workspace::locate(pyro, &id) {
                if let Ok(r) = ws.read() {
                    workspaces.push(ws.info_with_services(&r));
                }
            }
        }
    }
    // Most recently active first.
    workspaces.sort_by(|a, b| {
        b.last_activity_at
            .total_cmp(&a.last_activity_at)
            .then(b.created_at.total_cmp(&a.created_at))
            .then(a.workspace_id.cmp(&b.workspace_id))
    });
    Ok(WorkspaceList {
        count: workspaces.len(),
        workspaces,
    })
}

pub fn status(pyro: &Pyro, id: &str) -> Result<WorkspaceInfo> {
    let ws = Workspace::locate(pyro, id)?;
    let r = ws.read()?;
    Ok(ws.info_with_services(&r))
}

pub fn update(pyro: &Pyro, id: &str, u: &UpdateWorkspace) -> Result<WorkspaceInfo> {
    let ws = Workspace::locate(pyro, id)?;
    if let Some(n) = &u.name {
        valid_text("name", n)?;
    }
    for (k, v) in &u.labels {
        valid_name("label key", k)?;
        valid_text("label value", v)?;
    }
    let r = ws.update(|r| {
        if u.clear_name {
            r.name = None;
        }
        if let Some(n) = &u.name {
            r.name = Some(n.clone());
        }
        for k in &u.clear_labels {
            r.labels.remove(k);
        }
        r.labels.extend(u.labels.clone());
        r.last_activity_at = now();
        Ok(r.clone())
    })?;
    Ok(ws.info(&r))
}

pub fn stop(pyro: &Pyro, id: &str) -> Result<WorkspaceInfo> {
    let ws = Workspace::locate(pyro, id)?;
    halt(&ws)?;
    let r = ws.update(|r| {
        r.state = State::Stopped;
        r.stop_reason = Some("stopped".into());
        r.last_activity_at = now();
        Ok(r.clone())
    })?;
    Ok(ws.info(&r))
}

pub fn start(pyro: &Pyro, id: &str, progress: &dyn Progress) -> Result<WorkspaceInfo> {
    let ws = Workspace::locate(pyro, id)?;
    if !ws.running() {
        let r = ws.read()?;
        boot(pyro, &ws, &r, None, progress)?;
    }
    let r = ws.update(|r| {
        r.state = State::Started;
        r.stop_reason = None;
        r.last_error = None;
        r.last_activity_at = now();
        Ok(r.clone())
    })?;
    Ok(ws.info(&r))
}

pub fn delete(pyro: &Pyro, id: &str) -> Result<Deleted> {
    let ws = Workspace::locate(pyro, id)?;
    if let Some(pid) = ws.vm().live_supervisor() {
        // Its disk is about to go: no need to stop gently.
        host::signal(pid, libc::SIGKILL);
        let start = Instant::now();
        while host::process_alive(pid) && start.elapsed().as_secs() < 10 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    fs::remove_dir_all(&ws.dir).ctx(|| format!("remove {}", ws.dir.display()))?;
    Ok(Deleted {
        workspace_id: id.into(),
        deleted: true,
    })
}

pub fn exec(
    pyro: &Pyro,
    id: &str,
    p: &WorkspaceExec,
    sink: &mut dyn OutputSink,
) -> Result<CommandEntry> {
    let ws = Workspace::locate(pyro, id)?;
    let cmd = command_from_args(&p.command)?;
    if p.timeout_seconds == 0 {
        return Err(Error::InvalidArgument(
            "timeout_seconds must be at least 1".into(),
        ));
    }
    let record = ws.read()?;
    let values = ws.secret_values(&record)?;
    let env = secrets::environment(&values, &p.secret_env)?;
    let hide = secrets::redaction_list(&values);
    let mut client = ws.connect()?;
    // The sequence number is taken up front, so concurrent commands get
    // distinct entries.
    let sequence = ws.update(|r| {
        r.command_count += 1;
        r.last_activity_at = now();
        Ok(r.command_count)
    })?;
    let started_at = now();
    let started = Instant::now();
    let mut redactor = secrets::Redactor::new(sink, &hide);
    let mut capture = Capture::new(&mut redactor);
    let status = client.exec(
        ExecRequest {
            command: cmd.clone(),
            env,
            cwd: Some(WORKSPACE_ROOT.into()),
            timeout_ms: Some(p.timeout_seconds * 1000),
            sync_after: true,
        },
        &mut capture,
    );
    let (stdout, stderr) = (capture.stdout, capture.stderr);
    redactor.finish();
    let status = status?;
    let shown = secrets::redact(
        &match &cmd {
            Command::Shell(s) => s.clone(),
            Command::Argv(a) => a.join(" "),
        },
        &hide,
    );
    let entry = CommandEntry {
        workspace_id: id.into(),
        sequence,
        command: shown.clone(),
        cwd: WORKSPACE_ROOT.into(),
        exit_code: status.exit_code,
        signal: status.signal,
        timed_out: status.timed_out,
        duration_ms: started.elapsed().as_millis() as u64,
        started_at,
        stdout: secrets::redact(&String::from_utf8_lossy(&stdout), &hide),
        stderr: secrets::redact(&String::from_utf8_lossy(&stderr), &hide),
        execution_mode: ExecutionMode::GuestVirtioSerial,
    };
    host::write_atomic(
        &ws.commands().join(format!("{sequence:06}.json")),
        &serde_json::to_vec(&entry).unwrap(),
    )?;
    ws.update(|r| {
        let newer = r
            .last_command
            .as_ref()
            .is_none_or(|l| l.sequence < sequence);
        if newer {
            r.last_command = Some(LastCommand {
                sequence,
                command: shown,
                exit_code: status.exit_code,
            });
        }
        r.last_activity_at = now();
        Ok(())
    })?;
    Ok(entry)
}

pub fn logs(pyro: &Pyro, id: &str) -> Result<WorkspaceLogs> {
    let ws = Workspace::locate(pyro, id)?;
    let mut files: Vec<PathBuf> = fs::read_dir(ws.commands())
        .ctx(|| "read history".into())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let entries: Vec<CommandEntry> = files
        .iter()
        .filter_map(|p| serde_json::from_slice(&fs::read(p).ok()?).ok())
        .collect();
    Ok(WorkspaceLogs {
        workspace_id: id.into(),
        count: entries.len(),
        entries,
    })
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncResult {
    pub workspace_id: String,
    pub workspace_sync: SyncInfo,
    pub execution_mode: ExecutionMode,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncInfo {
    pub mode: SourceMode,
    pub source_path: String,
    pub destination: String,
    pub entry_count: u64,
    pub bytes_written: u64,
}

pub fn sync_push(pyro: &Pyro, id: &str, source: &Path, dest: &str) -> Result<SyncResult> {
    let ws = Workspace::locate(pyro, id)?;
    let dest = workspace_path(dest)?;
    let mut client = ws.connect()?;
    let tmp = ws.dir.join(format!(".sync-{}.tar", host::random_id(4)));
    let result = (|| {
        let f = fs::File::create(&tmp).ctx(|| "create sync archive".into())?;
        let (mode, summary) = archive::build(source, std::io::BufWriter::new(f))?;
        push(&mut client, &tmp, &dest)?;
        Ok(SyncResult {
            workspace_id: id.into(),
            workspace_sync: SyncInfo {
                mode,
                source_path: source.display().to_string(),
                destination: dest.clone(),
                entry_count: summary.entry_count,
                bytes_written: summary.bytes,
            },
            execution_mode: ExecutionMode::GuestVirtioSerial,
        })
    })();
    let _ = fs::remove_file(&tmp);
    ws.touch()?;
    result
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportResult {
    pub workspace_id: String,
    pub workspace_path: String,
    pub output_path: String,
    pub artifact_type: ArtifactType,
    pub entry_count: u64,
    pub bytes_written: u64,
    pub execution_mode: ExecutionMode,
}

/// Fetches `path` from the guest as a tar archive, in memory.
fn fetch(client: &mut VmClient, path: &str) -> Result<(Vec<u8>, Message)> {
    let mut data = Vec::new();
    let reply = client.request(&Message::GetArchive { path: path.into() }, None, &mut |b| {
        data.extend_from_slice(b)
    })?;
    Ok((data, reply))
}

pub fn export(
    pyro: &Pyro,
    id: &str,
    path: &str,
    output: &Path,
    force: bool,
) -> Result<ExportResult> {
    let ws = Workspace::locate(pyro, id)?;
    let path = workspace_path(path)?;
    let mut client = ws.connect()?;
    let (data, reply) = fetch(&mut client, &path)?;
    let Message::ArchiveSent {
        artifact_type,
        entry_count,
        bytes_written,
    } = reply
    else {
        return Err(Error::Guest(format!("unexpected reply {reply:?}")));
    };
    archive::unpack_export(&data[..], artifact_type, output, force)?;
    Ok(ExportResult {
        workspace_id: id.into(),
        workspace_path: path,
        output_path: output.display().to_string(),
        artifact_type: artifact_type.into(),
        entry_count,
        bytes_written,
        execution_mode: ExecutionMode::GuestVirtioSerial,
    })
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileListResult {
    pub workspace_id: String,
    pub path: String,
    pub artifact_type: ArtifactType,
    pub recursive: bool,
    pub entries: Vec<FileEntry>,
    pub execution_mode: ExecutionMode,
}

pub fn file_list(pyro: &Pyro, id: &str, path: &str, recursive: bool) -> Result<FileListResult> {
    let ws = Workspace::locate(pyro, id)?;
    let path = workspace_path(path)?;
    let mut client = ws.connect()?;
    match client.request(&Message::ListFiles { path, recursive }, None, &mut |_| {})? {
        Message::FileList {
            path,
            artifact_type,
            entries,
        } => Ok(FileListResult {
            workspace_id: id.into(),
            path,
            artifact_type: artifact_type.into(),
            recursive,
            entries: entries.into_iter().map(FileEntry::from).collect(),
            execution_mode: ExecutionMode::GuestVirtioSerial,
        }),
        other => Err(Error::Guest(format!("unexpected reply {other:?}"))),
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileReadResult {
    pub workspace_id: String,
    pub path: String,
    pub size_bytes: u64,
    pub max_bytes: u64,
    pub content: String,
    pub truncated: bool,
    pub execution_mode: ExecutionMode,
}

fn check_max_bytes(max_bytes: u64) -> Result<()> {
    if max_bytes == 0 || max_bytes > MAX_FILE_BYTES {
        return Err(Error::InvalidArgument(format!(
            "max_bytes must be 1 to {MAX_FILE_BYTES}"
        )));
    }
    Ok(())
}

/// Reads a file's bytes (up to `max_bytes`) from a running workspace.
pub(crate) fn read_bytes(
    client: &mut VmClient,
    path: &str,
    max_bytes: u64,
) -> Result<(Vec<u8>, u64, bool)> {
    let mut data = Vec::new();
    match client.request(
        &Message::ReadFile {
            path: path.into(),
            max_bytes,
        },
        None,
        &mut |b| data.extend_from_slice(b),
    )? {
        Message::FileRead {
            size_bytes,
            truncated,
        } => Ok((data, size_bytes, truncated)),
        other => Err(Error::Guest(format!("unexpected reply {other:?}"))),
    }
}

pub fn file_read(pyro: &Pyro, id: &str, path: &str, max_bytes: u64) -> Result<FileReadResult> {
    check_max_bytes(max_bytes)?;
    let ws = Workspace::locate(pyro, id)?;
    let path = workspace_path(path)?;
    let mut client = ws.connect()?;
    let (data, size_bytes, truncated) = read_bytes(&mut client, &path, max_bytes)?;
    Ok(FileReadResult {
        workspace_id: id.into(),
        path,
        size_bytes,
        max_bytes,
        content: String::from_utf8_lossy(&data).into_owned(),
        truncated,
        execution_mode: ExecutionMode::GuestVirtioSerial,
    })
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileWriteResult {
    pub workspace_id: String,
    pub path: String,
    pub size_bytes: u64,
    pub bytes_written: u64,
    pub execution_mode: ExecutionMode,
}

/// Writes files (and removes others) in one all-or-nothing guest request.
pub(crate) fn write_files(
    client: &mut VmClient,
    files: &[(String, Vec<u8>, u32)],
    remove: Vec<String>,
) -> Result<u64> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        let rel = path
            .trim_start_matches(WORKSPACE_ROOT)
            .trim_start_matches('/');
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, rel, &data[..])
            .ctx(|| "build archive".into())?;
    }
    let tar = b.into_inner().ctx(|| "build archive".into())?;
    match client.request(
        &Message::PutArchive(PutArchive {
            dest: WORKSPACE_ROOT.into(),
            remove,
            atomic: true,
        }),
        Some(&mut &tar[..]),
        &mut |_| {},
    )? {
        Message::ArchivePut { bytes_written, .. } => Ok(bytes_written),
        other => Err(Error::Guest(format!("unexpected reply {other:?}"))),
    }
}

pub fn file_write(pyro: &Pyro, id: &str, path: &str, text: &str) -> Result<FileWriteResult> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::InvalidArgument(format!(
            "text is {} bytes; the limit is {MAX_FILE_BYTES}",
            text.len()
        )));
    }
    let ws = Workspace::locate(pyro, id)?;
    let path = workspace_path(path)?;
    if path == WORKSPACE_ROOT {
        return Err(Error::InvalidArgument(
            "cannot write the workspace root".into(),
        ));
    }
    let mut client = ws.connect()?;
    let written = write_files(
        &mut client,
        &[(path.clone(), text.as_bytes().to_vec(), 0o644)],
        Vec::new(),
    )?;
    Ok(FileWriteResult {
        workspace_id: id.into(),
        path,
        size_bytes: text.len() as u64,
        bytes_written: written,
        execution_mode: ExecutionMode::GuestVirtioSerial,
    })
}

/// The create-time baseline's tree, and the live `/workspace`'s.
pub(crate) fn trees(
    ws: &Workspace,
    client: &mut VmClient,
) -> Result<(
    BTreeMap<PathBuf, archive::Artifact>,
    BTreeMap<PathBuf, archive::Artifact>,
)> {
    let base = archive::read_tree(fs::File::open(ws.baseline()).ctx(|| "open baseline".into())?)
        .ctx(|| "read baseline".into())?;
    let (data, _) = fetch(client, WORKSPACE_ROOT)?;
    let live = archive::read_tree(&data[..]).ctx(|| "read workspace".into())?;
    Ok((base, live))
}

pub fn snapshot_create(pyro: &Pyro, id: &str, name: &str) -> Result<SnapshotInfo> {
    valid_name("snapshot name", name)?;
    if name == BASELINE {
        return Err(Error::InvalidArgument("`baseline` is reserved".into()));
    }
    let ws = Workspace::locate(pyro, id)?;
    let _lock = ws.lock()?;
    let mut r = ws.read()?;
    if r.snapshots.iter().any(|s| s.snapshot_name == name) {
        return Err(Error::InvalidArgument(format!(
            "snapshot {name:?} already exists"
        )));
    }
    if ws.running() {
        let mut c = VmClient::connect(&ws.vm())?;
        checkpoint(&mut c, name)?;
    } else {
        host::tool(
            std::process::Command::new("qemu-img")
                .args(["snapshot", "-c", name])
                .arg(ws.disk()),
        )?;
    }
    let info = SnapshotInfo {
        snapshot_name: name.into(),
        kind: "named".into(),
        created_at: now(),
        deletable: true,
    };
    r.snapshots.push(info.clone());
    r.last_activity_at = now();
    ws.write(&r)?;
    Ok(info)
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotList {
    pub workspace_id: String,
    pub count: usize,
    pub snapshots: Vec<SnapshotInfo>,
}

pub fn snapshot_list(pyro: &Pyro, id: &str) -> Result<SnapshotList> {
    let ws = Workspace::locate(pyro, id)?;
    let r = ws.read()?;
    // The baseline first, then the newest first.
    let mut snaps = r.snapshots.clone();
    snaps.sort_by(|a, b| {
        (a.kind != "baseline")
            .cmp(&(b.kind != "baseline"))
            .then(b.created_at.total_cmp(&a.created_at))
    });
    Ok(SnapshotList {
        workspace_id: id.into(),
        count: snaps.len(),
        snapshots: snaps,
    })
}

pub fn snapshot_delete(pyro: &Pyro, id: &str, name: &str) -> Result<Deleted> {
    if name == BASELINE {
        return Err(Error::InvalidArgument(
            "the baseline cannot be deleted".into(),
        ));
    }
    let ws = Workspace::locate(pyro, id)?;
    let _lock = ws.lock()?;
    let mut r = ws.read()?;
    if !r.snapshots.iter().any(|s| s.snapshot_name == name) {
        return Err(Error::InvalidArgument(format!("no snapshot {name:?}")));
    }
    if ws.running() {
        let mut c = VmClient::connect(&ws.vm())?;
        c.qmp(
            "blockdev-snapshot-delete-internal-sync",
            serde_json::json!({ "device": "root", "name": name }),
        )?;
    } else {
        host::tool(
            std::process::Command::new("qemu-img")
                .args(["snapshot", "-d", name])
                .arg(ws.disk()),
        )?;
    }
    r.snapshots.retain(|s| s.snapshot_name != name);
    r.last_activity_at = now();
    ws.write(&r)?;
    Ok(Deleted {
        workspace_id: id.into(),
        deleted: true,
    })
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResetInfo {
    pub snapshot_name: String,
    pub kind: String,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResetResult {
    #[serde(flatten)]
    pub workspace: WorkspaceInfo,
    pub workspace_reset: ResetInfo,
}

/// Rolls the whole disk back to a checkpoint: the VM stops, the qcow2
/// snapshot is applied, the VM boots again. Packages installed and files
/// changed since the checkpoint are gone; command history is cleared.
pub fn reset(
    pyro: &Pyro,
    id: &str,
    snapshot: &str,
    progress: &dyn Progress,
) -> Result<ResetResult> {
    let ws = Workspace::locate(pyro, id)?;
    let r = ws.read()?;
    let snap = r
        .snapshots
        .iter()
        .find(|s| s.snapshot_name == snapshot)
        .cloned()
        .ok_or_else(|| Error::InvalidArgument(format!("no snapshot {snapshot:?}")))?;
    halt(&ws)?;
    host::tool(
        std::process::Command::new("qemu-img")
            .args(["snapshot", "-a", snapshot])
            .arg(ws.disk()),
    )?;
    let _ = fs::remove_dir_all(ws.commands());
    fs::create_dir_all(ws.commands()).ctx(|| "create history".into())?;
    boot(pyro, &ws, &r, None, progress)?;
    let r = ws.update(|r| {
        r.state = State::Started;
        r.stop_reason = None;
        r.command_count = 0;
        r.last_command = None;
        r.reset_count += 1;
        r.last_reset_at = Some(now());
        r.last_activity_at = now();
        Ok(r.clone())
    })?;
    Ok(ResetResult {
        workspace: ws.info(&r),
        workspace_reset: ResetInfo {
            snapshot_name: snap.snapshot_name,
            kind: snap.kind,
        },
    })
}
