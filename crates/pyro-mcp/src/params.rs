//! The tools' parameters: each struct is a tool's input schema (names,
//! descriptions and defaults as clients see them). Defaults come from
//! `pyro::defaults`, the library's one list of them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pyro::{defaults, Command, CreateWorkspace, NetworkPolicy};
use schemars::JsonSchema;
use serde::Deserialize;

/// A command: one string is run with `/bin/sh -lc`; a list is an argv.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum CommandArg {
    Shell(String),
    Argv(Vec<String>),
}

impl From<CommandArg> for Command {
    /// A string is a shell command; a list is an argv, whatever its length.
    fn from(c: CommandArg) -> Command {
        match c {
            CommandArg::Shell(s) => Command::Shell(s),
            CommandArg::Argv(a) => Command::Argv(a),
        }
    }
}

/// The default network policy, by name (the schema shows the name).
fn network_policy() -> String {
    pyro::NetworkPolicy::default().to_string()
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct VmRunParams {
    /// Environment to boot, e.g. `debian:12`.
    pub environment: String,
    /// The command: one string runs under `/bin/sh -lc`; a list is an argv.
    pub command: CommandArg,
    #[serde(default = "defaults::vcpu_count")]
    pub vcpu_count: u32,
    #[serde(default = "defaults::mem_mib")]
    pub mem_mib: u32,
    /// The command and everything it started are killed after this long (exit code 124).
    #[serde(default = "defaults::timeout_seconds")]
    pub timeout_seconds: u64,
    #[serde(default = "defaults::ttl_seconds")]
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
    #[serde(default = "defaults::vcpu_count")]
    pub vcpu_count: u32,
    #[serde(default = "defaults::mem_mib")]
    pub mem_mib: u32,
    /// The VM is stopped this long after creation and deleted on the next access.
    #[serde(default = "defaults::ttl_seconds")]
    pub ttl_seconds: u64,
    /// Outbound network (user-mode NAT; the host loopback stays unreachable).
    #[serde(default)]
    pub network: bool,
    /// Refused when true: VMs always run in a guest (only vm_run may fall back to the host).
    #[serde(default)]
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
    #[serde(default = "defaults::timeout_seconds")]
    pub timeout_seconds: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CreateCoreParams {
    pub environment: String,
    #[serde(default = "defaults::vcpu_count")]
    pub vcpu_count: u32,
    #[serde(default = "defaults::mem_mib")]
    pub mem_mib: u32,
    /// Idle timeout: after this long without activity the workspace is paused (full profile: or stopped, per on_idle), never deleted.
    #[serde(default = "defaults::ttl_seconds")]
    pub ttl_seconds: u64,
    /// Refused when true: workspaces always run in a guest (only vm_run may fall back to the host).
    #[serde(default)]
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
    #[serde(default = "network_policy")]
    pub network_policy: String,
    /// Secrets: `{name, value}` or `{name, file_path}` (a host file). Values are never shown and are redacted from output.
    #[serde(default)]
    pub secrets: Option<Vec<pyro::SecretInput>>,
    /// What the idle timeout does: `pause` (memory saved, the next call resumes it with processes, shells and services intact), `stop` or `none`.
    #[serde(default = "on_idle")]
    pub on_idle: String,
}

fn on_idle() -> String {
    pyro::IdleAction::default().as_str().into()
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ForkParams {
    pub workspace_id: String,
    /// How many new workspaces (1 to 16).
    #[serde(default = "fork_count")]
    pub count: u32,
    /// Names of the new workspaces, in order.
    #[serde(default)]
    pub names: Option<Vec<String>>,
}

fn fork_count() -> u32 {
    pyro::ForkWorkspace::default().count
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
    #[serde(default = "defaults::workspace_path")]
    pub dest: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ExecParams {
    pub workspace_id: String,
    /// The command: one string runs under `/bin/sh -lc`; a list is an argv.
    pub command: CommandArg,
    #[serde(default = "defaults::timeout_seconds")]
    pub timeout_seconds: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListFilesParams {
    pub workspace_id: String,
    #[serde(default = "defaults::workspace_path")]
    pub path: String,
    #[serde(default)]
    pub recursive: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ReadFileParams {
    pub workspace_id: String,
    pub path: String,
    #[serde(default = "defaults::max_bytes")]
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
    #[serde(default = "defaults::snapshot")]
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

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ServiceStartParams {
    pub workspace_id: String,
    pub service_name: String,
    /// The command: one string runs under `/bin/sh -lc`; a list is an argv.
    pub command: CommandArg,
    #[serde(default = "defaults::workspace_path")]
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
    #[serde(default = "defaults::timeout_seconds")]
    pub ready_timeout_seconds: u64,
    #[serde(default = "defaults::ready_interval_ms")]
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
    #[serde(default = "defaults::tail_lines")]
    pub tail_lines: u64,
    /// Everything kept instead of the last tail_lines.
    #[serde(default)]
    pub all: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ShellOpenParams {
    pub workspace_id: String,
    #[serde(default = "defaults::workspace_path")]
    pub cwd: String,
    #[serde(default = "defaults::cols")]
    pub cols: u16,
    #[serde(default = "defaults::rows")]
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
    #[serde(default = "defaults::max_chars")]
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
    #[serde(default = "defaults::append_newline")]
    pub append_newline: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ShellSignalParams {
    pub workspace_id: String,
    pub shell_id: String,
    /// INT, TERM, HUP or KILL.
    #[serde(default = "defaults::signal")]
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

impl From<CreateCoreParams> for CreateWorkspace {
    fn from(p: CreateCoreParams) -> CreateWorkspace {
        CreateWorkspace {
            environment: p.environment,
            vcpu_count: p.vcpu_count,
            mem_mib: p.mem_mib,
            ttl_seconds: p.ttl_seconds,
            network_policy: NetworkPolicy::default(),
            seed_path: p.seed_path.map(PathBuf::from),
            name: p.name,
            labels: p.labels.unwrap_or_default(),
            secrets: Vec::new(),
            allow_host_compat: p.allow_host_compat,
            on_idle: pyro::IdleAction::default(),
        }
    }
}
