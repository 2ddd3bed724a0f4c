//! pyro: disposable, isolated Linux sandboxes that are real microVMs.
//!
//! [`Pyro`] is the façade: every front end (the `pyro` CLI, the MCP server,
//! Rust programs) makes one call on it per operation, with plain data in and
//! out. Behind it:
//!
//! - `assets`: the guest kernel, its modules and the initramfs with the
//!   agent embedded in this crate;
//! - `environments`: the catalog and the root filesystem images;
//! - `qemu`: the QEMU command line, a pure function of a spec; `qmp`: the
//!   client for QEMU's machine protocol;
//! - `vm` and `supervisor`: one detached supervisor process per VM, owning
//!   QEMU and the agent connection, serving a control socket;
//! - `client`: the control-socket client;
//! - `templates`: saved guests to restore instead of booting (fast start);
//! - `run`: one-shot runs; `vms`: VMs with a create/start/exec/stop/delete
//!   lifecycle; `doctor`: host diagnosis;
//! - `host`: every fact read from, and tool run on, the host.
//!
//! The façade keeps no state between calls: VM directories on disk are the
//! truth, so separate processes see the same VMs.

mod archive;
mod assets;
mod changes;
mod client;
mod disk;
mod doctor;
mod environments;
mod error;
mod host;
mod paths;
mod progress;
mod qemu;
mod qmp;
mod run;
mod secrets;
mod services;
mod shells;
mod supervisor;
mod templates;
mod vm;
mod vms;
mod workspace;

use std::path::{Path, PathBuf};

pub use changes::{
    ChangeStatus, DiffEntry, DiffResult, DiffSummary, PatchEntry, PatchResult, PatchSummary,
};
pub use client::OutputSink;
pub use disk::{DiskExport, DiskList, DiskRead};
pub use doctor::DoctorReport;
pub use environments::{
    CatalogEntry, EnvironmentManifest, ExportReport, PruneReport, Pruned, CATALOG, CATALOG_VERSION,
};
pub use error::{Error, Result};
pub use paths::Paths;
pub use progress::{Progress, Silent};
pub use run::{command_from_args, Cleanup, ExecutionMode, RunParams, RunResult, RunTimings};
pub use secrets::{SecretInfo, SecretInput};
pub use services::{
    PortBinding, PublishedPort, ReadinessCheck, ServiceInfo, ServiceList, ServiceLogs, StartService,
};
pub use shells::{OpenShell, ReadShell, ShellInfo};
pub use vms::{CreateVm, Reaped, VmDeleted, VmInfo, VmNetworkInfo};
pub use workspace::{
    ArtifactType, CommandEntry, CreateWorkspace, Deleted, ExportResult, FileEntry, FileListResult,
    FileReadResult, FileWriteResult, ResetResult, SnapshotInfo, SnapshotList, State, SyncResult,
    UpdateWorkspace, WorkspaceExec, WorkspaceInfo, WorkspaceList, WorkspaceLogs,
};

/// The entry point of the library.
#[derive(Debug, Clone)]
pub struct Pyro {
    paths: Paths,
    /// The `pyro` binary, started in its hidden supervisor mode for each VM.
    program: PathBuf,
}

/// An environment as `env list`/`pull`/`inspect` show it.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, serde::Serialize)]
pub struct EnvironmentInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub distribution: String,
    pub default_packages: Vec<String>,
    pub installed: bool,
    pub install_dir: String,
    pub manifest: Option<EnvironmentManifest>,
}

impl Pyro {
    /// Locations from the environment (`PYRO_HOME`, XDG dirs,
    /// `PYRO_ENVIRONMENT_CACHE_DIR`); the supervisor program from `PYRO_BIN`
    /// or, failing that, the running executable.
    pub fn new() -> Pyro {
        let program = std::env::var_os("PYRO_BIN")
            .map(PathBuf::from)
            .or_else(|| std::env::current_exe().ok())
            .unwrap_or_else(|| PathBuf::from("pyro"));
        Pyro {
            paths: Paths::from_env(),
            program,
        }
    }

    pub fn with_paths(mut self, paths: Paths) -> Pyro {
        self.paths = paths;
        self
    }

    /// The `pyro` binary to start as each VM's supervisor.
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> Pyro {
        self.program = program.into();
        self
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// Boots a VM, runs one command in it, deletes the VM. The command's
    /// output streams into `output` as it arrives and is also returned.
    /// A non-zero exit code is a result, not an error.
    pub fn run_in_vm(
        &self,
        params: &RunParams,
        progress: &dyn Progress,
        output: &mut dyn OutputSink,
    ) -> Result<RunResult> {
        run::run_in_vm(self, params, progress, output)
    }

    /// Creates a VM without booting it; it is deleted once `ttl_seconds`
    /// have passed since creation.
    pub fn create_vm(&self, params: &CreateVm, progress: &dyn Progress) -> Result<VmInfo> {
        vms::create(self, params, progress)
    }

    /// Boots a created or stopped VM (a started one is left as it is).
    pub fn start_vm(&self, id: &str, progress: &dyn Progress) -> Result<VmInfo> {
        vms::start(self, id, progress)
    }

    /// Runs one command in the VM, starting it if needed, then deletes the
    /// VM. A non-zero exit code is a result, not an error.
    pub fn exec_vm(
        &self,
        id: &str,
        command: &[String],
        timeout_seconds: u64,
        progress: &dyn Progress,
        output: &mut dyn OutputSink,
    ) -> Result<RunResult> {
        vms::exec(self, id, command, timeout_seconds, progress, output)
    }

    /// Stops the VM gracefully, keeping its disk.
    pub fn stop_vm(&self, id: &str) -> Result<VmInfo> {
        vms::stop(self, id)
    }

    pub fn delete_vm(&self, id: &str) -> Result<VmDeleted> {
        vms::delete(self, id)
    }

    pub fn status_vm(&self, id: &str) -> Result<VmInfo> {
        vms::status(self, id)
    }

    pub fn network_info_vm(&self, id: &str) -> Result<VmNetworkInfo> {
        vms::network_info(self, id)
    }

    /// Deletes every VM past its TTL.
    pub fn reap_expired(&self) -> Reaped {
        vms::reap_expired(self)
    }

    pub fn doctor(&self) -> DoctorReport {
        doctor::doctor(self)
    }

    pub fn list_environments(&self) -> Vec<EnvironmentInfo> {
        CATALOG.iter().map(|e| self.info(e)).collect()
    }

    pub fn inspect_environment(&self, name: &str) -> Result<EnvironmentInfo> {
        Ok(self.info(environments::lookup(name)?))
    }

    /// Installs an environment (and the guest kernel), building it from
    /// Debian packages if it is not installed yet.
    pub fn pull_environment(&self, name: &str, progress: &dyn Progress) -> Result<EnvironmentInfo> {
        let entry = environments::lookup(name)?;
        assets::ensure(&self.paths, progress)?;
        environments::ensure(&self.paths, entry, true, progress)?;
        Ok(self.info(entry))
    }

    /// Removes partial builds, incomplete installs and directories that
    /// belong to no catalog entry from the environment cache.
    pub fn prune_environments(&self) -> Result<PruneReport> {
        environments::prune(&self.paths)
    }

    /// Writes an installed environment and the guest kernel to one archive.
    pub fn export_environment(
        &self,
        name: &str,
        output: &Path,
        force: bool,
    ) -> Result<ExportReport> {
        environments::export(&self.paths, environments::lookup(name)?, output, force)
    }

    /// Installs an environment from an archive made by `export_environment`.
    pub fn import_environment(
        &self,
        archive: &Path,
        progress: &dyn Progress,
    ) -> Result<EnvironmentInfo> {
        let entry = environments::import(&self.paths, archive, progress)?;
        Ok(self.info(entry))
    }

    fn info(&self, e: &CatalogEntry) -> EnvironmentInfo {
        let installed = environments::installed(&self.paths, e);
        EnvironmentInfo {
            name: e.name.into(),
            version: e.version.into(),
            description: e.description.into(),
            distribution: e.distribution.into(),
            default_packages: e.packages.iter().map(|s| s.to_string()).collect(),
            installed: installed.is_some(),
            install_dir: environments::install_dir(&self.paths, e)
                .display()
                .to_string(),
            manifest: installed.map(|i| i.manifest),
        }
    }
}

/// Persistent workspaces. Method names follow the reference SDK.
impl Pyro {
    /// Creates a workspace: validates and captures the seed, boots its VM,
    /// pushes the seed into `/workspace` and takes the `baseline`
    /// checkpoint.
    pub fn create_workspace(
        &self,
        params: &CreateWorkspace,
        progress: &dyn Progress,
    ) -> Result<WorkspaceInfo> {
        workspace::create(self, params, progress)
    }
    pub fn list_workspaces(&self) -> Result<WorkspaceList> {
        workspace::list(self)
    }
    pub fn status_workspace(&self, id: &str) -> Result<WorkspaceInfo> {
        workspace::status(self, id)
    }
    pub fn update_workspace(&self, id: &str, update: &UpdateWorkspace) -> Result<WorkspaceInfo> {
        workspace::update(self, id, update)
    }
    pub fn logs_workspace(&self, id: &str) -> Result<WorkspaceLogs> {
        workspace::logs(self, id)
    }
    /// Stops the VM; disk, baseline and checkpoints stay.
    pub fn stop_workspace(&self, id: &str) -> Result<WorkspaceInfo> {
        workspace::stop(self, id)
    }
    pub fn start_workspace(&self, id: &str, progress: &dyn Progress) -> Result<WorkspaceInfo> {
        workspace::start(self, id, progress)
    }
    /// Removes the workspace and everything it holds.
    pub fn delete_workspace(&self, id: &str) -> Result<Deleted> {
        workspace::delete(self, id)
    }
    /// Runs a command in `/workspace`, streaming its output (with secret
    /// values redacted) into `output`.
    pub fn exec_workspace(
        &self,
        id: &str,
        params: &WorkspaceExec,
        output: &mut dyn OutputSink,
    ) -> Result<CommandEntry> {
        workspace::exec(self, id, params, output)
    }
    pub fn push_workspace_sync(&self, id: &str, source: &Path, dest: &str) -> Result<SyncResult> {
        workspace::sync_push(self, id, source, dest)
    }
    pub fn export_workspace(
        &self,
        id: &str,
        path: &str,
        output: &Path,
        force: bool,
    ) -> Result<ExportResult> {
        workspace::export(self, id, path, output, force)
    }
    pub fn list_workspace_files(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<FileListResult> {
        workspace::file_list(self, id, path, recursive)
    }
    pub fn read_workspace_file(
        &self,
        id: &str,
        path: &str,
        max_bytes: u64,
    ) -> Result<FileReadResult> {
        workspace::file_read(self, id, path, max_bytes)
    }
    pub fn write_workspace_file(
        &self,
        id: &str,
        path: &str,
        text: &str,
    ) -> Result<FileWriteResult> {
        workspace::file_write(self, id, path, text)
    }
    /// Compares live `/workspace` with the create-time baseline.
    pub fn diff_workspace(&self, id: &str) -> Result<DiffResult> {
        changes::diff(self, id)
    }
    /// Applies a unified or git diff; every file is checked first, and
    /// nothing changes unless all of it applies.
    pub fn apply_workspace_patch(&self, id: &str, patch: &str) -> Result<PatchResult> {
        changes::apply(self, id, patch)
    }
    /// Writes a stopped workspace's disk as a raw ext4 image.
    pub fn export_workspace_disk(
        &self,
        id: &str,
        output: &Path,
        force: bool,
    ) -> Result<DiskExport> {
        disk::export(self, id, output, force)
    }
    /// Lists files on a stopped workspace's disk, without booting it.
    pub fn list_workspace_disk(&self, id: &str, path: &str, recursive: bool) -> Result<DiskList> {
        disk::list(self, id, path, recursive)
    }
    /// Reads a file from a stopped workspace's disk, without booting it.
    pub fn read_workspace_disk(&self, id: &str, path: &str, max_bytes: u64) -> Result<DiskRead> {
        disk::read(self, id, path, max_bytes)
    }
    /// Opens an interactive shell (a PTY in the guest) in a running workspace.
    pub fn open_shell(&self, id: &str, params: &OpenShell) -> Result<ShellInfo> {
        shells::open(self, id, params)
    }
    /// Reads a shell's output from a cursor.
    pub fn read_shell(&self, id: &str, shell_id: &str, params: &ReadShell) -> Result<ShellInfo> {
        shells::read(self, id, shell_id, params)
    }
    /// Types into a shell; a newline is added unless `append_newline` is false.
    pub fn write_shell(
        &self,
        id: &str,
        shell_id: &str,
        input: &str,
        append_newline: bool,
    ) -> Result<ShellInfo> {
        shells::write(self, id, shell_id, input, append_newline)
    }
    /// Sends INT, TERM, HUP or KILL to what runs in the shell's foreground.
    pub fn signal_shell(&self, id: &str, shell_id: &str, signal: &str) -> Result<ShellInfo> {
        shells::signal(self, id, shell_id, signal)
    }
    pub fn close_shell(&self, id: &str, shell_id: &str) -> Result<ShellInfo> {
        shells::close(self, id, shell_id)
    }
    /// Starts a long-running service and waits until it is ready (or
    /// failed: exited early, or not ready in time).
    pub fn start_service(
        &self,
        id: &str,
        name: &str,
        params: &StartService,
    ) -> Result<ServiceInfo> {
        services::start(self, id, name, params)
    }
    pub fn list_services(&self, id: &str) -> Result<ServiceList> {
        services::list(self, id)
    }
    pub fn status_service(&self, id: &str, name: &str) -> Result<ServiceInfo> {
        services::status(self, id, name)
    }
    /// The last `tail_lines` lines of stdout and stderr (`None`: all kept).
    pub fn logs_service(
        &self,
        id: &str,
        name: &str,
        tail_lines: Option<u64>,
    ) -> Result<ServiceLogs> {
        services::logs(self, id, name, tail_lines)
    }
    /// SIGTERM, then SIGKILL after 5 s, to every process of the service.
    pub fn stop_service(&self, id: &str, name: &str) -> Result<ServiceInfo> {
        services::stop(self, id, name)
    }
    pub fn create_snapshot(&self, id: &str, name: &str) -> Result<SnapshotInfo> {
        workspace::snapshot_create(self, id, name)
    }
    pub fn list_snapshots(&self, id: &str) -> Result<SnapshotList> {
        workspace::snapshot_list(self, id)
    }
    pub fn delete_snapshot(&self, id: &str, name: &str) -> Result<Deleted> {
        workspace::snapshot_delete(self, id, name)
    }
    /// Rolls the whole disk back to `snapshot` (`baseline` by default).
    pub fn reset_workspace(
        &self,
        id: &str,
        snapshot: &str,
        progress: &dyn Progress,
    ) -> Result<ResetResult> {
        workspace::reset(self, id, snapshot, progress)
    }
}

impl Default for Pyro {
    fn default() -> Self {
        Pyro::new()
    }
}

/// A fresh random secret (128 bits, hex), e.g. an MCP bearer token.
pub fn random_token() -> String {
    host::random_id(16)
}

/// The hidden supervisor mode of the `pyro` binary: `pyro __supervise DIR`.
/// Never returns.
pub fn supervise(dir: &Path) -> ! {
    supervisor::main(dir)
}
