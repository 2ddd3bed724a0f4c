//! The tools. Parameter structs are the tools' input schemas; the façade's
//! result types are their output schemas.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pyro::{CreateWorkspace, OutputSink, Pyro, Silent, UpdateWorkspace};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{tool, tool_handler, tool_router, ServerHandler};
use schemars::JsonSchema;
use serde::Deserialize;

/// Which tools a client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    VmRun,
    WorkspaceCore,
    WorkspaceFull,
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vm-run" => Ok(Profile::VmRun),
            "workspace-core" => Ok(Profile::WorkspaceCore),
            "workspace-full" => Ok(Profile::WorkspaceFull),
            other => Err(format!(
                "unknown profile {other:?}; use vm-run, workspace-core or workspace-full"
            )),
        }
    }
}

#[derive(Clone)]
pub struct PyroServer {
    pyro: Pyro,
    tool_router: ToolRouter<Self>,
}

impl PyroServer {
    pub fn new(pyro: Pyro, profile: Profile) -> PyroServer {
        let tool_router = match profile {
            Profile::VmRun => Self::run_router(),
            Profile::WorkspaceCore => Self::run_router() + Self::core_router(),
            Profile::WorkspaceFull => {
                let mut core = Self::core_router();
                core.remove_route("workspace_create");
                core.remove_route("workspace_exec");
                Self::run_router() + core + Self::full_router()
            }
        };
        PyroServer { pyro, tool_router }
    }
}

struct Discard;
impl OutputSink for Discard {
    fn stdout(&mut self, _: &[u8]) {}
    fn stderr(&mut self, _: &[u8]) {}
}

type ToolResult<T> = Result<Json<T>, String>;

/// Runs a façade call on a blocking thread; a failure becomes a tool error
/// with the same message the CLI prints.
async fn call<T, F>(pyro: &Pyro, f: F) -> ToolResult<T>
where
    T: Send + 'static,
    F: FnOnce(Pyro) -> pyro::Result<T> + Send + 'static,
{
    let pyro = pyro.clone();
    match tokio::task::spawn_blocking(move || f(pyro)).await {
        Ok(Ok(v)) => Ok(Json(v)),
        Ok(Err(e)) => Err(chain(&e)),
        Err(e) => Err(format!("internal error: {e}")),
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// A command: one string is run with `/bin/sh -lc`; a list is an argv.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum CommandArg {
    Shell(String),
    Argv(Vec<String>),
}

impl CommandArg {
    fn words(self) -> Vec<String> {
        match self {
            CommandArg::Shell(s) => vec![s],
            CommandArg::Argv(a) => a,
        }
    }
}

fn d_vcpu() -> u32 {
    1
}
fn d_mem() -> u32 {
    1024
}
fn d_timeout() -> u64 {
    30
}
fn d_ttl() -> u64 {
    600
}
fn d_root() -> String {
    "/workspace".into()
}
fn d_max_bytes() -> u64 {
    65536
}
fn d_baseline() -> String {
    "baseline".into()
}
fn d_off() -> String {
    "off".into()
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct VmRunParams {
    /// Environment to boot, e.g. `debian:12`.
    pub environment: String,
    /// The command: one string runs under `/bin/sh -lc`; a list is an argv.
    pub command: CommandArg,
    #[serde(default = "d_vcpu")]
    pub vcpu_count: u32,
    #[serde(default = "d_mem")]
    pub mem_mib: u32,
    /// The command and everything it started are killed after this long (exit code 124).
    #[serde(default = "d_timeout")]
    pub timeout_seconds: u64,
    #[serde(default = "d_ttl")]
    pub ttl_seconds: u64,
    #[serde(default)]
    pub network: bool,
    /// Run on the host without isolation if no guest can boot.
    #[serde(default)]
    pub allow_host_compat: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct VmCreateParams {
    /// Environment to boot, e.g. `debian:12`.
    pub environment: String,
    #[serde(default = "d_vcpu")]
    pub vcpu_count: u32,
    #[serde(default = "d_mem")]
    pub mem_mib: u32,
    /// The VM is stopped this long after creation and deleted on the next access.
    #[serde(default = "d_ttl")]
    pub ttl_seconds: u64,
    /// Outbound network (user-mode NAT; the host loopback stays unreachable).
    #[serde(default)]
    pub network: bool,
    /// Accepted for compatibility; these VMs always run in a guest.
    #[serde(default)]
    #[allow(dead_code)]
    pub allow_host_compat: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct VmIdParams {
    pub vm_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct VmExecParams {
    pub vm_id: String,
    /// The command: one string runs under `/bin/sh -lc`; a list is an argv.
    pub command: CommandArg,
    /// The command and everything it started are killed after this long (exit code 124).
    #[serde(default = "d_timeout")]
    pub timeout_seconds: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CreateCoreParams {
    pub environment: String,
    #[serde(default = "d_vcpu")]
    pub vcpu_count: u32,
    #[serde(default = "d_mem")]
    pub mem_mib: u32,
    /// Idle timeout: the workspace is stopped (never deleted) after this long without activity.
    #[serde(default = "d_ttl")]
    pub ttl_seconds: u64,
    /// Accepted for compatibility; workspaces always run in a guest.
    #[serde(default)]
    #[allow(dead_code)]
    pub allow_host_compat: bool,
    /// A host directory, .tar, .tar.gz or .tgz copied into /workspace.
    #[serde(default)]
    pub seed_path: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CreateFullParams {
    #[serde(flatten)]
    pub core: CreateCoreParams,
    /// `off` (no network device), `egress` (outbound NAT; the host loopback stays unreachable) or `egress+published-ports` (egress, and services may publish ports on host 127.0.0.1).
    #[serde(default = "d_off")]
    pub network_policy: String,
    /// Secrets: `{name, value}` or `{name, file_path}` (a host file). Values are never shown and are redacted from output.
    #[serde(default)]
    pub secrets: Option<Vec<pyro::SecretInput>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ExecFullParams {
    #[serde(flatten)]
    pub exec: ExecParams,
    /// Secrets to pass as environment variables: `{SECRET: ENV}`.
    #[serde(default)]
    pub secret_env: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct IdParams {
    pub workspace_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct UpdateParams {
    pub workspace_id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub clear_name: bool,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub clear_labels: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SyncParams {
    pub workspace_id: String,
    pub source_path: String,
    #[serde(default = "d_root")]
    pub dest: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ExecParams {
    pub workspace_id: String,
    /// The command: one string runs under `/bin/sh -lc`; a list is an argv.
    pub command: CommandArg,
    #[serde(default = "d_timeout")]
    pub timeout_seconds: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListFilesParams {
    pub workspace_id: String,
    #[serde(default = "d_root")]
    pub path: String,
    #[serde(default)]
    pub recursive: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ReadFileParams {
    pub workspace_id: String,
    pub path: String,
    #[serde(default = "d_max_bytes")]
    pub max_bytes: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct WriteFileParams {
    pub workspace_id: String,
    pub path: String,
    pub text: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct PatchParams {
    pub workspace_id: String,
    /// A unified or git diff; nothing changes unless all of it applies.
    pub patch: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ExportParams {
    pub workspace_id: String,
    pub path: String,
    /// Host path to write; must not exist yet.
    pub output_path: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ResetParams {
    pub workspace_id: String,
    #[serde(default = "d_baseline")]
    pub snapshot: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SnapshotParams {
    pub workspace_id: String,
    pub snapshot_name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct DiskExportParams {
    pub workspace_id: String,
    pub output_path: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct EmptyParams {}

fn d_interval() -> u64 {
    500
}
fn d_tail() -> u64 {
    200
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ServiceStartParams {
    pub workspace_id: String,
    pub service_name: String,
    /// The command: one string runs under `/bin/sh -lc`; a list is an argv.
    pub command: CommandArg,
    #[serde(default = "d_root")]
    pub cwd: String,
    /// Ready once this path (relative to cwd) exists. At most one ready_* may be given.
    #[serde(default)]
    pub ready_file: Option<String>,
    /// Ready once HOST:PORT accepts a TCP connection.
    #[serde(default)]
    pub ready_tcp: Option<String>,
    /// Ready once a GET of this URL answers 200-399.
    #[serde(default)]
    pub ready_http: Option<String>,
    /// Ready once this shell command exits 0.
    #[serde(default)]
    pub ready_command: Option<String>,
    #[serde(default = "d_timeout")]
    pub ready_timeout_seconds: u64,
    #[serde(default = "d_interval")]
    pub ready_interval_ms: u64,
    /// Secrets as environment variables: `{SECRET: ENV}`.
    #[serde(default)]
    pub secret_env: Option<BTreeMap<String, String>>,
    /// Guest ports to publish on host 127.0.0.1 while the service runs: `{guest_port, host_port?}` (a free host port when host_port is absent). Needs the egress+published-ports policy.
    #[serde(default)]
    pub published_ports: Option<Vec<pyro::PublishedPort>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ServiceNameParams {
    pub workspace_id: String,
    pub service_name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ServiceLogsParams {
    pub workspace_id: String,
    pub service_name: String,
    #[serde(default = "d_tail")]
    pub tail_lines: u64,
    /// Everything kept instead of the last tail_lines.
    #[serde(default)]
    pub all: bool,
}

fn d_cols() -> u16 {
    120
}
fn d_rows() -> u16 {
    30
}
fn d_max_chars() -> u64 {
    65536
}
fn d_true() -> bool {
    true
}
fn d_int() -> String {
    "INT".into()
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ShellOpenParams {
    pub workspace_id: String,
    #[serde(default = "d_root")]
    pub cwd: String,
    #[serde(default = "d_cols")]
    pub cols: u16,
    #[serde(default = "d_rows")]
    pub rows: u16,
    /// Secrets as environment variables: `{SECRET: ENV}`.
    #[serde(default)]
    pub secret_env: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ShellReadParams {
    pub workspace_id: String,
    pub shell_id: String,
    /// Byte offset to read from: the previous read's `next_cursor`.
    #[serde(default)]
    pub cursor: u64,
    #[serde(default = "d_max_chars")]
    pub max_chars: u64,
    /// Render through a terminal emulator: the text as the screen shows it.
    #[serde(default)]
    pub plain: bool,
    /// Keep reading until the shell has been quiet this long (1-10000 ms).
    #[serde(default)]
    pub wait_for_idle_ms: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ShellWriteParams {
    pub workspace_id: String,
    pub shell_id: String,
    pub input: String,
    #[serde(default = "d_true")]
    pub append_newline: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ShellSignalParams {
    pub workspace_id: String,
    pub shell_id: String,
    /// INT, TERM, HUP or KILL.
    #[serde(default = "d_int")]
    pub signal_name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ShellIdParams {
    pub workspace_id: String,
    pub shell_id: String,
}

#[derive(Debug, serde::Serialize, JsonSchema)]
pub struct EnvironmentList {
    pub catalog_version: String,
    pub environments: Vec<pyro::EnvironmentInfo>,
}

fn create_params(p: CreateCoreParams, network_policy: Option<String>) -> CreateWorkspace {
    CreateWorkspace {
        environment: p.environment,
        vcpu_count: Some(p.vcpu_count),
        mem_mib: Some(p.mem_mib),
        ttl_seconds: Some(p.ttl_seconds),
        network_policy,
        seed_path: p.seed_path.map(PathBuf::from),
        name: p.name,
        labels: p.labels.unwrap_or_default(),
        secrets: Vec::new(),
    }
}

#[tool_router(router = run_router)]
impl PyroServer {
    #[tool(
        description = "Boot a fresh microVM, run one command in it, delete the VM. Returns exit code, stdout and stderr."
    )]
    async fn vm_run(
        &self,
        Parameters(p): Parameters<VmRunParams>,
    ) -> Result<Json<pyro::RunResult>, String> {
        call(&self.pyro, move |pyro| {
            let params = pyro::RunParams {
                environment: p.environment,
                command: p.command.words(),
                vcpu_count: p.vcpu_count,
                mem_mib: p.mem_mib,
                timeout_seconds: p.timeout_seconds,
                ttl_seconds: p.ttl_seconds,
                network: p.network,
                allow_host_compat: p.allow_host_compat,
            };
            pyro.run_in_vm(&params, &Silent, &mut Discard)
        })
        .await
    }
}

#[tool_router(router = core_router)]
impl PyroServer {
    #[tool(
        description = "Create a persistent workspace (a microVM that stays), optionally seeded from a host directory or tar archive into /workspace."
    )]
    async fn workspace_create(
        &self,
        Parameters(p): Parameters<CreateCoreParams>,
    ) -> Result<Json<pyro::WorkspaceInfo>, String> {
        call(&self.pyro, move |pyro| {
            pyro.create_workspace(&create_params(p, None), &Silent)
        })
        .await
    }

    #[tool(description = "List workspaces, most recently active first.")]
    async fn workspace_list(
        &self,
        Parameters(_): Parameters<EmptyParams>,
    ) -> Result<Json<pyro::WorkspaceList>, String> {
        call(&self.pyro, |pyro| pyro.list_workspaces()).await
    }

    #[tool(description = "Change a workspace's name or labels.")]
    async fn workspace_update(
        &self,
        Parameters(p): Parameters<UpdateParams>,
    ) -> Result<Json<pyro::WorkspaceInfo>, String> {
        call(&self.pyro, move |pyro| {
            let u = UpdateWorkspace {
                name: p.name,
                clear_name: p.clear_name,
                labels: p.labels.unwrap_or_default(),
                clear_labels: p.clear_labels.unwrap_or_default(),
            };
            pyro.update_workspace(&p.workspace_id, &u)
        })
        .await
    }

    #[tool(
        description = "Show a workspace: state, why it stopped, when it expires, resources, last command.",
        annotations(read_only_hint = true)
    )]
    async fn workspace_status(
        &self,
        Parameters(p): Parameters<IdParams>,
    ) -> Result<Json<pyro::WorkspaceInfo>, String> {
        call(&self.pyro, move |pyro| {
            pyro.status_workspace(&p.workspace_id)
        })
        .await
    }

    #[tool(
        description = "Copy a host directory or tar archive into the workspace (overwrites files, never deletes)."
    )]
    async fn workspace_sync_push(
        &self,
        Parameters(p): Parameters<SyncParams>,
    ) -> Result<Json<pyro::SyncResult>, String> {
        call(&self.pyro, move |pyro| {
            pyro.push_workspace_sync(
                &p.workspace_id,
                std::path::Path::new(&p.source_path),
                &p.dest,
            )
        })
        .await
    }

    #[tool(
        description = "Run a command in the workspace's /workspace. A non-zero exit code is a result, not an error."
    )]
    async fn workspace_exec(
        &self,
        Parameters(p): Parameters<ExecParams>,
    ) -> Result<Json<pyro::CommandEntry>, String> {
        call(&self.pyro, move |pyro| {
            let mut e = pyro::WorkspaceExec::new(p.command.words());
            e.timeout_seconds = p.timeout_seconds;
            pyro.exec_workspace(&p.workspace_id, &e, &mut Discard)
        })
        .await
    }

    #[tool(
        description = "The workspace's command history with exit codes and output.",
        annotations(read_only_hint = true)
    )]
    async fn workspace_logs(
        &self,
        Parameters(p): Parameters<IdParams>,
    ) -> Result<Json<pyro::WorkspaceLogs>, String> {
        call(&self.pyro, move |pyro| pyro.logs_workspace(&p.workspace_id)).await
    }

    #[tool(
        description = "List files under a path in /workspace.",
        annotations(read_only_hint = true)
    )]
    async fn workspace_file_list(
        &self,
        Parameters(p): Parameters<ListFilesParams>,
    ) -> Result<Json<pyro::FileListResult>, String> {
        call(&self.pyro, move |pyro| {
            pyro.list_workspace_files(&p.workspace_id, &p.path, p.recursive)
        })
        .await
    }

    #[tool(
        description = "Read a file in /workspace (up to max_bytes, at most 1 MiB).",
        annotations(read_only_hint = true)
    )]
    async fn workspace_file_read(
        &self,
        Parameters(p): Parameters<ReadFileParams>,
    ) -> Result<Json<pyro::FileReadResult>, String> {
        call(&self.pyro, move |pyro| {
            pyro.read_workspace_file(&p.workspace_id, &p.path, p.max_bytes)
        })
        .await
    }

    #[tool(description = "Write a text file in /workspace (creates parent directories).")]
    async fn workspace_file_write(
        &self,
        Parameters(p): Parameters<WriteFileParams>,
    ) -> Result<Json<pyro::FileWriteResult>, String> {
        call(&self.pyro, move |pyro| {
            pyro.write_workspace_file(&p.workspace_id, &p.path, &p.text)
        })
        .await
    }

    #[tool(
        description = "Apply a unified or git diff to /workspace; every file is checked first and nothing changes unless all of it applies."
    )]
    async fn workspace_patch_apply(
        &self,
        Parameters(p): Parameters<PatchParams>,
    ) -> Result<Json<pyro::PatchResult>, String> {
        call(&self.pyro, move |pyro| {
            pyro.apply_workspace_patch(&p.workspace_id, &p.patch)
        })
        .await
    }

    #[tool(
        description = "Compare /workspace with its create-time baseline: per-path status and text patches.",
        annotations(read_only_hint = true)
    )]
    async fn workspace_diff(
        &self,
        Parameters(p): Parameters<IdParams>,
    ) -> Result<Json<pyro::DiffResult>, String> {
        call(&self.pyro, move |pyro| pyro.diff_workspace(&p.workspace_id)).await
    }

    #[tool(description = "Copy a file, directory or symlink from /workspace to a new host path.")]
    async fn workspace_export(
        &self,
        Parameters(p): Parameters<ExportParams>,
    ) -> Result<Json<pyro::ExportResult>, String> {
        call(&self.pyro, move |pyro| {
            pyro.export_workspace(
                &p.workspace_id,
                &p.path,
                std::path::Path::new(&p.output_path),
                false,
            )
        })
        .await
    }

    #[tool(
        description = "Roll the whole workspace disk back to a snapshot (default: the create-time baseline)."
    )]
    async fn workspace_reset(
        &self,
        Parameters(p): Parameters<ResetParams>,
    ) -> Result<Json<pyro::ResetResult>, String> {
        call(&self.pyro, move |pyro| {
            pyro.reset_workspace(&p.workspace_id, &p.snapshot, &Silent)
        })
        .await
    }

    #[tool(
        description = "Delete a workspace and everything in it.",
        annotations(destructive_hint = true)
    )]
    async fn workspace_delete(
        &self,
        Parameters(p): Parameters<IdParams>,
    ) -> Result<Json<pyro::Deleted>, String> {
        call(&self.pyro, move |pyro| {
            pyro.delete_workspace(&p.workspace_id)
        })
        .await
    }
}

#[tool_router(router = full_router)]
impl PyroServer {
    #[tool(
        name = "workspace_create",
        description = "Create a persistent workspace (a microVM that stays), optionally seeded from a host directory or tar archive into /workspace."
    )]
    async fn workspace_create_full(
        &self,
        Parameters(p): Parameters<CreateFullParams>,
    ) -> Result<Json<pyro::WorkspaceInfo>, String> {
        call(&self.pyro, move |pyro| {
            let mut params = create_params(p.core, Some(p.network_policy));
            params.secrets = p.secrets.unwrap_or_default();
            pyro.create_workspace(&params, &Silent)
        })
        .await
    }

    #[tool(
        name = "workspace_exec",
        description = "Run a command in the workspace's /workspace, optionally with secrets as environment variables. A non-zero exit code is a result, not an error."
    )]
    async fn workspace_exec_full(
        &self,
        Parameters(p): Parameters<ExecFullParams>,
    ) -> Result<Json<pyro::CommandEntry>, String> {
        call(&self.pyro, move |pyro| {
            let e = pyro::WorkspaceExec {
                command: p.exec.command.words(),
                timeout_seconds: p.exec.timeout_seconds,
                secret_env: p.secret_env.unwrap_or_default(),
            };
            pyro.exec_workspace(&p.exec.workspace_id, &e, &mut Discard)
        })
        .await
    }

    #[tool(description = "Stop a workspace's VM; its disk, baseline and snapshots stay.")]
    async fn workspace_stop(
        &self,
        Parameters(p): Parameters<IdParams>,
    ) -> Result<Json<pyro::WorkspaceInfo>, String> {
        call(&self.pyro, move |pyro| pyro.stop_workspace(&p.workspace_id)).await
    }

    #[tool(description = "Boot a stopped workspace again, on the same disk.")]
    async fn workspace_start(
        &self,
        Parameters(p): Parameters<IdParams>,
    ) -> Result<Json<pyro::WorkspaceInfo>, String> {
        call(&self.pyro, move |pyro| {
            pyro.start_workspace(&p.workspace_id, &Silent)
        })
        .await
    }

    #[tool(description = "Checkpoint the whole workspace disk under a name (copy-on-write).")]
    async fn snapshot_create(
        &self,
        Parameters(p): Parameters<SnapshotParams>,
    ) -> Result<Json<pyro::SnapshotInfo>, String> {
        call(&self.pyro, move |pyro| {
            pyro.create_snapshot(&p.workspace_id, &p.snapshot_name)
        })
        .await
    }

    #[tool(
        description = "List a workspace's snapshots, the baseline first.",
        annotations(read_only_hint = true)
    )]
    async fn snapshot_list(
        &self,
        Parameters(p): Parameters<IdParams>,
    ) -> Result<Json<pyro::SnapshotList>, String> {
        call(&self.pyro, move |pyro| pyro.list_snapshots(&p.workspace_id)).await
    }

    #[tool(description = "Delete a named snapshot (the baseline cannot be deleted).")]
    async fn snapshot_delete(
        &self,
        Parameters(p): Parameters<SnapshotParams>,
    ) -> Result<Json<pyro::Deleted>, String> {
        call(&self.pyro, move |pyro| {
            pyro.delete_snapshot(&p.workspace_id, &p.snapshot_name)
        })
        .await
    }

    #[tool(
        description = "Write a stopped workspace's disk to a new host file as a raw ext4 image."
    )]
    async fn workspace_disk_export(
        &self,
        Parameters(p): Parameters<DiskExportParams>,
    ) -> Result<Json<pyro::DiskExport>, String> {
        call(&self.pyro, move |pyro| {
            pyro.export_workspace_disk(&p.workspace_id, std::path::Path::new(&p.output_path), false)
        })
        .await
    }

    #[tool(
        description = "List files on a stopped workspace's disk without booting it.",
        annotations(read_only_hint = true)
    )]
    async fn workspace_disk_list(
        &self,
        Parameters(p): Parameters<ListFilesParams>,
    ) -> Result<Json<pyro::DiskList>, String> {
        call(&self.pyro, move |pyro| {
            pyro.list_workspace_disk(&p.workspace_id, &p.path, p.recursive)
        })
        .await
    }

    #[tool(
        description = "Read a file from a stopped workspace's disk without booting it.",
        annotations(read_only_hint = true)
    )]
    async fn workspace_disk_read(
        &self,
        Parameters(p): Parameters<ReadFileParams>,
    ) -> Result<Json<pyro::DiskRead>, String> {
        call(&self.pyro, move |pyro| {
            pyro.read_workspace_disk(&p.workspace_id, &p.path, p.max_bytes)
        })
        .await
    }

    #[tool(
        description = "Open an interactive shell (a PTY in the guest) that keeps its state between calls."
    )]
    async fn shell_open(
        &self,
        Parameters(p): Parameters<ShellOpenParams>,
    ) -> Result<Json<pyro::ShellInfo>, String> {
        call(&self.pyro, move |pyro| {
            let params = pyro::OpenShell {
                cwd: p.cwd,
                cols: p.cols,
                rows: p.rows,
                secret_env: p.secret_env.unwrap_or_default(),
            };
            pyro.open_shell(&p.workspace_id, &params)
        })
        .await
    }

    #[tool(
        description = "Read a shell's output from a cursor; plain renders it as the screen would show it.",
        annotations(read_only_hint = true)
    )]
    async fn shell_read(
        &self,
        Parameters(p): Parameters<ShellReadParams>,
    ) -> Result<Json<pyro::ShellInfo>, String> {
        call(&self.pyro, move |pyro| {
            let params = pyro::ReadShell {
                cursor: p.cursor,
                max_chars: p.max_chars,
                plain: p.plain,
                wait_for_idle_ms: p.wait_for_idle_ms,
            };
            pyro.read_shell(&p.workspace_id, &p.shell_id, &params)
        })
        .await
    }

    #[tool(description = "Type into a shell (a newline is added unless append_newline is false).")]
    async fn shell_write(
        &self,
        Parameters(p): Parameters<ShellWriteParams>,
    ) -> Result<Json<pyro::ShellInfo>, String> {
        call(&self.pyro, move |pyro| {
            pyro.write_shell(&p.workspace_id, &p.shell_id, &p.input, p.append_newline)
        })
        .await
    }

    #[tool(description = "Send INT, TERM, HUP or KILL to what runs in a shell's foreground.")]
    async fn shell_signal(
        &self,
        Parameters(p): Parameters<ShellSignalParams>,
    ) -> Result<Json<pyro::ShellInfo>, String> {
        call(&self.pyro, move |pyro| {
            pyro.signal_shell(&p.workspace_id, &p.shell_id, &p.signal_name)
        })
        .await
    }

    #[tool(description = "Close a shell.")]
    async fn shell_close(
        &self,
        Parameters(p): Parameters<ShellIdParams>,
    ) -> Result<Json<pyro::ShellInfo>, String> {
        call(&self.pyro, move |pyro| {
            pyro.close_shell(&p.workspace_id, &p.shell_id)
        })
        .await
    }

    #[tool(
        description = "Start a long-running service in the workspace and wait until it is ready (file, tcp, http or command check, probed in the guest)."
    )]
    async fn service_start(
        &self,
        Parameters(p): Parameters<ServiceStartParams>,
    ) -> Result<Json<pyro::ServiceInfo>, String> {
        let checks = [
            p.ready_file
                .clone()
                .map(|path| pyro::ReadinessCheck::File { path }),
            p.ready_tcp
                .clone()
                .map(|address| pyro::ReadinessCheck::Tcp { address }),
            p.ready_http
                .clone()
                .map(|url| pyro::ReadinessCheck::Http { url }),
            p.ready_command
                .clone()
                .map(|command| pyro::ReadinessCheck::Command { command }),
        ];
        let mut given = checks.into_iter().flatten();
        let readiness = given.next();
        if given.next().is_some() {
            return Err(
                "give at most one of ready_file, ready_tcp, ready_http and ready_command".into(),
            );
        }
        call(&self.pyro, move |pyro| {
            let params = pyro::StartService {
                command: p.command.words(),
                cwd: p.cwd,
                readiness,
                ready_timeout_seconds: p.ready_timeout_seconds,
                ready_interval_ms: p.ready_interval_ms,
                secret_env: p.secret_env.unwrap_or_default(),
                published_ports: p.published_ports.unwrap_or_default(),
            };
            pyro.start_service(&p.workspace_id, &p.service_name, &params)
        })
        .await
    }

    #[tool(
        description = "List a workspace's services.",
        annotations(read_only_hint = true)
    )]
    async fn service_list(
        &self,
        Parameters(p): Parameters<IdParams>,
    ) -> Result<Json<pyro::ServiceList>, String> {
        call(&self.pyro, move |pyro| pyro.list_services(&p.workspace_id)).await
    }

    #[tool(
        description = "A service's state, exit code and stop reason.",
        annotations(read_only_hint = true)
    )]
    async fn service_status(
        &self,
        Parameters(p): Parameters<ServiceNameParams>,
    ) -> Result<Json<pyro::ServiceInfo>, String> {
        call(&self.pyro, move |pyro| {
            pyro.status_service(&p.workspace_id, &p.service_name)
        })
        .await
    }

    #[tool(
        description = "The last lines of a service's stdout and stderr.",
        annotations(read_only_hint = true)
    )]
    async fn service_logs(
        &self,
        Parameters(p): Parameters<ServiceLogsParams>,
    ) -> Result<Json<pyro::ServiceLogs>, String> {
        call(&self.pyro, move |pyro| {
            pyro.logs_service(
                &p.workspace_id,
                &p.service_name,
                (!p.all).then_some(p.tail_lines),
            )
        })
        .await
    }

    #[tool(description = "Stop a service: SIGTERM, then SIGKILL after 5 s.")]
    async fn service_stop(
        &self,
        Parameters(p): Parameters<ServiceNameParams>,
    ) -> Result<Json<pyro::ServiceInfo>, String> {
        call(&self.pyro, move |pyro| {
            pyro.stop_service(&p.workspace_id, &p.service_name)
        })
        .await
    }

    #[tool(
        description = "Create a microVM without booting it (vm_start boots it). It is deleted after ttl_seconds."
    )]
    async fn vm_create(
        &self,
        Parameters(p): Parameters<VmCreateParams>,
    ) -> Result<Json<pyro::VmInfo>, String> {
        call(&self.pyro, move |pyro| {
            let params = pyro::CreateVm {
                environment: p.environment,
                vcpu_count: p.vcpu_count,
                mem_mib: p.mem_mib,
                ttl_seconds: p.ttl_seconds,
                network: p.network,
            };
            pyro.create_vm(&params, &Silent)
        })
        .await
    }

    #[tool(description = "Boot a created or stopped microVM.")]
    async fn vm_start(
        &self,
        Parameters(p): Parameters<VmIdParams>,
    ) -> Result<Json<pyro::VmInfo>, String> {
        call(&self.pyro, move |pyro| pyro.start_vm(&p.vm_id, &Silent)).await
    }

    #[tool(
        description = "Run one command in a microVM (booting it if needed), then delete the VM. A non-zero exit code is a result, not an error.",
        annotations(destructive_hint = true)
    )]
    async fn vm_exec(
        &self,
        Parameters(p): Parameters<VmExecParams>,
    ) -> Result<Json<pyro::RunResult>, String> {
        call(&self.pyro, move |pyro| {
            pyro.exec_vm(
                &p.vm_id,
                &p.command.words(),
                p.timeout_seconds,
                &Silent,
                &mut Discard,
            )
        })
        .await
    }

    #[tool(description = "Stop a microVM; its disk stays for the next vm_start.")]
    async fn vm_stop(
        &self,
        Parameters(p): Parameters<VmIdParams>,
    ) -> Result<Json<pyro::VmInfo>, String> {
        call(&self.pyro, move |pyro| pyro.stop_vm(&p.vm_id)).await
    }

    #[tool(
        description = "Delete a microVM and its disk.",
        annotations(destructive_hint = true)
    )]
    async fn vm_delete(
        &self,
        Parameters(p): Parameters<VmIdParams>,
    ) -> Result<Json<pyro::VmDeleted>, String> {
        call(&self.pyro, move |pyro| pyro.delete_vm(&p.vm_id)).await
    }

    #[tool(
        description = "A microVM's state (created, started or stopped), resources and expiry.",
        annotations(read_only_hint = true)
    )]
    async fn vm_status(
        &self,
        Parameters(p): Parameters<VmIdParams>,
    ) -> Result<Json<pyro::VmInfo>, String> {
        call(&self.pyro, move |pyro| pyro.status_vm(&p.vm_id)).await
    }

    #[tool(
        description = "A microVM's guest network: address, gateway, DNS, and whether outbound traffic is expected to work.",
        annotations(read_only_hint = true)
    )]
    async fn vm_network_info(
        &self,
        Parameters(p): Parameters<VmIdParams>,
    ) -> Result<Json<pyro::VmNetworkInfo>, String> {
        call(&self.pyro, move |pyro| pyro.network_info_vm(&p.vm_id)).await
    }

    #[tool(
        description = "Delete every microVM past its TTL.",
        annotations(destructive_hint = true)
    )]
    async fn vm_reap_expired(
        &self,
        Parameters(_): Parameters<EmptyParams>,
    ) -> Result<Json<pyro::Reaped>, String> {
        call(&self.pyro, |pyro| Ok(pyro.reap_expired())).await
    }

    #[tool(
        description = "The environment catalog and what is installed.",
        annotations(read_only_hint = true)
    )]
    async fn vm_list_environments(
        &self,
        Parameters(_): Parameters<EmptyParams>,
    ) -> Result<Json<EnvironmentList>, String> {
        call(&self.pyro, |pyro| {
            Ok(EnvironmentList {
                catalog_version: pyro::CATALOG_VERSION.into(),
                environments: pyro.list_environments(),
            })
        })
        .await
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for PyroServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("pyro", env!("CARGO_PKG_VERSION")))
            .with_instructions(
            "pyro runs commands in disposable, isolated Linux microVMs. Use vm_run for one command; \
             use workspace_create, then workspace_exec, file and patch tools, workspace_diff and \
             workspace_reset for multi-step work, and workspace_delete when done.",
        )
    }
}
