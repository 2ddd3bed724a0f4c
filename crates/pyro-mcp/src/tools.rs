//! The tools: one façade call each. Parameter structs (`params`) are the
//! tools' input schemas; the façade's result types are their output
//! schemas.

use pyro::{CreateWorkspace, Discard, Pyro, Remedy, Silent, UpdateWorkspace};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{tool, tool_handler, tool_router, ServerHandler};

use crate::params::*;

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

type ToolResult<T> = Result<Json<T>, String>;

/// Runs a façade call on a blocking thread; a failure becomes a tool error
/// whose remedy names this server's tools and parameters.
async fn call<T, F>(pyro: &Pyro, f: F) -> ToolResult<T>
where
    T: Send + 'static,
    F: FnOnce(Pyro) -> pyro::Result<T> + Send + 'static,
{
    let pyro = pyro.clone();
    match tokio::task::spawn_blocking(move || f(pyro)).await {
        Ok(Ok(v)) => Ok(Json(v)),
        Ok(Err(e)) => Err(message(&e)),
        Err(e) => Err(format!("internal error: {e}")),
    }
}

/// The error and its causes, then what the client can do about it, in
/// this server's words.
pub(crate) fn message(e: &pyro::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    let remedy = match e.remedy() {
        None => return s,
        Some(Remedy::StartWorkspace { workspace_id }) => {
            format!("call workspace_start with workspace_id {workspace_id} first")
        }
        Some(Remedy::StopWorkspace { workspace_id }) => {
            format!("call workspace_stop with workspace_id {workspace_id} first")
        }
        Some(Remedy::Overwrite) => "choose an output_path that does not exist".into(),
        Some(Remedy::ListWorkspaces) => "workspace_list shows them".into(),
        Some(Remedy::ListEnvironments) => "vm_list_environments shows the catalog".into(),
        Some(Remedy::PullEnvironment { environment }) => {
            format!("pull {environment} again on the host to repair it")
        }
        Some(Remedy::AllowHostCompat) => {
            "or set allow_host_compat to run the command on the host, without isolation".into()
        }
        Some(Remedy::NetworkPolicy { policy }) => {
            format!("create the workspace with network_policy {policy}")
        }
    };
    format!("{s}; {remedy}")
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
                command: p.command.into(),
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
            pyro.create_workspace(&CreateWorkspace::from(p), &Silent)
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
            let mut e = pyro::WorkspaceExec::new(p.command.into());
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
            let mut params = CreateWorkspace::from(p.core);
            params.network_policy = p.network_policy.parse()?;
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
                command: p.exec.command.into(),
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
                command: p.command.into(),
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
                &p.command.into(),
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
