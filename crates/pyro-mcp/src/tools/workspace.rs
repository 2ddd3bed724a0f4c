//! The everyday workspace tools (the `workspace-core` profile).

use pyro::{CreateWorkspace, Discard, Silent, UpdateWorkspace};
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{tool, tool_router};

use super::{call, PyroServer};
use crate::params::*;

#[tool_router(router = core_router, vis = "pub(super)")]
impl PyroServer {
    #[tool(
        description = "Create a persistent workspace (a microVM that stays), optionally seeded from a host directory or tar archive into /workspace."
    )]
    async fn workspace_create(
        &self,
        Parameters(mut p): Parameters<CreateCoreParams>,
    ) -> Result<Json<pyro::WorkspaceInfo>, String> {
        p.seed_path = self.seed(p.seed_path.as_deref())?;
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
        let source = self.access.readable(&p.source_path, "source_path")?;
        call(&self.pyro, move |pyro| {
            pyro.push_workspace_sync(&p.workspace_id, &source, &p.dest)
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
        let output = self.access.writable(&p.output_path, "output_path")?;
        call(&self.pyro, move |pyro| {
            pyro.export_workspace(&p.workspace_id, &p.path, &output, false)
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

impl PyroServer {
    /// A seed path checked against the host access, resolved.
    pub(super) fn seed(&self, seed: Option<&str>) -> Result<Option<String>, String> {
        seed.map(|s| {
            self.access
                .readable(s, "seed_path")
                .map(|p| p.display().to_string())
        })
        .transpose()
    }
}
