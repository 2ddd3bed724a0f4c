//! The rest of the workspace tools (the `workspace-full` profile):
//! networks and secrets at create, lifecycle, snapshots, offline disk
//! reads, shells and services.

use pyro::{CreateWorkspace, Discard, Silent};
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{tool, tool_router};

use super::{call, PyroServer};
use crate::params::*;

#[tool_router(router = full_router, vis = "pub(super)")]
impl PyroServer {
    #[tool(
        name = "workspace_create",
        description = "Create a persistent workspace (a microVM that stays), optionally seeded from a host directory or tar archive into /workspace."
    )]
    async fn workspace_create_full(
        &self,
        Parameters(mut p): Parameters<CreateFullParams>,
    ) -> Result<Json<pyro::WorkspaceInfo>, String> {
        p.core.seed_path = self.seed(p.core.seed_path.as_deref())?;
        let mut secrets = p.secrets.unwrap_or_default();
        for s in &mut secrets {
            if let Some(f) = &s.file_path {
                let f = f.to_string_lossy().into_owned();
                s.file_path = Some(self.access.readable(&f, "secrets[].file_path")?);
            }
        }
        call(&self.pyro, move |pyro| {
            let mut params = CreateWorkspace::from(p.core);
            params.network_policy = p.network_policy.parse()?;
            params.on_idle = p.on_idle.parse()?;
            params.secrets = secrets;
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

    #[tool(
        description = "Pause a workspace: its guest's memory is saved beside its disk and its VM ends (no memory, no CPU). Any later call on it resumes it with processes, shells, services and published ports intact."
    )]
    async fn workspace_pause(
        &self,
        Parameters(p): Parameters<IdParams>,
    ) -> Result<Json<pyro::PauseResult>, String> {
        call(&self.pyro, move |pyro| {
            pyro.pause_workspace(&p.workspace_id)
        })
        .await
    }

    #[tool(description = "Resume a paused workspace (a running one is left as it is).")]
    async fn workspace_resume(
        &self,
        Parameters(p): Parameters<IdParams>,
    ) -> Result<Json<pyro::ResumeResult>, String> {
        call(&self.pyro, move |pyro| {
            pyro.resume_workspace(&p.workspace_id, &Silent)
        })
        .await
    }

    #[tool(
        description = "Fork a running workspace: count new workspaces from its memory and disk at one instant (running processes included), each with its own id, hostname and random seed; the parent runs on."
    )]
    async fn workspace_fork(
        &self,
        Parameters(p): Parameters<ForkParams>,
    ) -> Result<Json<pyro::ForkResult>, String> {
        call(&self.pyro, move |pyro| {
            let params = pyro::ForkWorkspace {
                count: p.count,
                names: p.names.unwrap_or_default(),
            };
            pyro.fork_workspace(&p.workspace_id, &params, &Silent)
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
        let output = self.access.writable(&p.output_path, "output_path")?;
        call(&self.pyro, move |pyro| {
            pyro.export_workspace_disk(&p.workspace_id, &output, false)
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
}
