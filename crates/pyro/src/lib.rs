//! pyro: disposable, isolated Linux sandboxes that are real microVMs.
//!
//! [`Pyro`] is the façade: every front end (the `pyro` CLI, the MCP server,
//! Rust programs) makes one call on it per operation, with plain data in and
//! out. It keeps no state between calls: directories on disk are the truth,
//! so separate processes see the same VMs and workspaces.
//!
//! Behind it, from the top down (a module imports only from below it; a
//! test keeps the graph free of cycles):
//!
//! - `run` (one-shot runs), `vms` (VMs with a create/start/exec/stop/delete
//!   lifecycle), `workspace` (persistent workspaces: lifecycle, exec and
//!   history, files, checkpoints, diff and patch, offline disk reads,
//!   services, shells, secrets), `doctor` (host diagnosis);
//! - `vmm`: the VM machinery — QEMU's command line, a VM's directory and
//!   records, boot and restore, the per-VM supervisor and its client,
//!   fast-start templates, admission;
//! - `assets` (guest kernel, modules and the initramfs with the agent
//!   embedded in this crate) and `environments` (the catalog and its root
//!   filesystem images);
//! - `contract` (the typed [`Command`], [`ExecutionMode`], every
//!   parameter's [`defaults`], shared limits), `error` (errors with a
//!   [`ErrorKind`] and a [`Remedy`] for front ends to word), `paths`,
//!   `progress`, and `host` (facts read from the host, tools run on it, and
//!   every `unsafe` call).

mod assets;
mod contract;
mod density;
mod doctor;
mod environments;
mod error;
mod host;
mod paths;
mod pool;
mod progress;
mod registry;
mod run;
mod vmm;
mod vms;
mod workspace;

#[cfg(test)]
mod golden;

use std::path::{Path, PathBuf};

pub use contract::{defaults, Command, ExecutionMode, IdleAction, BASELINE};
pub use doctor::DoctorReport;
pub use environments::oci::{ImageDefaults, ImageInfo, ImageRecord, LayerRecord, PruneLimits};
pub use environments::{
    CatalogEntry, EnvironmentManifest, ExportReport, PruneReport, Pruned, PublishReport, CATALOG,
    CATALOG_VERSION,
};
pub use error::{Entity, Error, ErrorKind, Remedy, Result};
pub use paths::Paths;
pub use progress::{Progress, Silent};
pub use pyro_protocol::{ServiceStatus, ServiceStopReason, ShellStatus};
pub use run::{Cleanup, CleanupReason, RunParams, RunResult, RunTimings};
pub use vmm::client::{Discard, OutputSink};
pub use vmm::control::PortBinding;
pub use vms::{CreateVm, Reaped, VmDeleted, VmInfo, VmNetworkInfo, VmState};
pub use workspace::{
    ArtifactType, ChangeStatus, CommandEntry, CreateWorkspace, Deleted, DiffEntry, DiffResult,
    DiffSummary, DiskExport, DiskList, DiskRead, ExportResult, FileEntry, FileListResult,
    FileReadResult, FileWriteResult, ForkResult, ForkWorkspace, LastCommand, NetworkPolicy,
    OpenShell, PatchEntry, PatchResult, PatchSummary, PauseReport, PauseResult, PublishedPort,
    ReadShell, ReadinessCheck, ResetInfo, ResetResult, ResumeReport, ResumeResult, SecretInfo,
    SecretInput, SecretSource, ServiceInfo, ServiceList, ServiceLogs, ShellInfo, SnapshotInfo,
    SnapshotKind, SnapshotList, SourceMode, StartService, State, StopReason, SyncInfo, SyncResult,
    UpdateWorkspace, WorkspaceExec, WorkspaceInfo, WorkspaceList, WorkspaceLogs, WorkspaceSeed,
    MAX_FILE_BYTES,
};

/// The entry point of the library.
#[derive(Debug, Clone)]
pub struct Pyro {
    ctx: paths::Context,
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
    /// For a container image: its reference, digest, size, defaults and
    /// last use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageInfo>,
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
            ctx: paths::Context {
                paths: Paths::from_env(),
                program,
                max_running_vms: None,
            },
        }
    }

    pub fn with_paths(mut self, paths: Paths) -> Pyro {
        self.ctx.paths = paths;
        self
    }

    /// The `pyro` binary to start as each VM's supervisor.
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> Pyro {
        self.ctx.program = program.into();
        self
    }

    /// At most `limit` VMs run at once (one-shot runs, lifecycle VMs and
    /// running workspaces of this home together), whatever
    /// `PYRO_MAX_RUNNING_VMS` says.
    pub fn with_max_running_vms(mut self, limit: u64) -> Pyro {
        self.ctx.max_running_vms = Some(limit);
        self
    }

    pub fn paths(&self) -> &Paths {
        &self.ctx.paths
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
        run::run_in_vm(&self.ctx, params, progress, output)
    }

    /// Creates a VM without booting it; it is deleted once `ttl_seconds`
    /// have passed since creation.
    pub fn create_vm(&self, params: &CreateVm, progress: &dyn Progress) -> Result<VmInfo> {
        vms::create(&self.ctx, params, progress)
    }

    /// Boots a created or stopped VM (a started one is left as it is).
    pub fn start_vm(&self, id: &str, progress: &dyn Progress) -> Result<VmInfo> {
        vms::start(&self.ctx, id, progress)
    }

    /// Runs one command in the VM, starting it if needed, then deletes the
    /// VM. A non-zero exit code is a result, not an error.
    pub fn exec_vm(
        &self,
        id: &str,
        command: &Command,
        timeout_seconds: u64,
        progress: &dyn Progress,
        output: &mut dyn OutputSink,
    ) -> Result<RunResult> {
        vms::exec(&self.ctx, id, command, timeout_seconds, progress, output)
    }

    /// Stops the VM gracefully, keeping its disk.
    pub fn stop_vm(&self, id: &str) -> Result<VmInfo> {
        vms::stop(&self.ctx, id)
    }

    pub fn delete_vm(&self, id: &str) -> Result<VmDeleted> {
        vms::delete(&self.ctx, id)
    }

    pub fn status_vm(&self, id: &str) -> Result<VmInfo> {
        vms::status(&self.ctx, id)
    }

    pub fn network_info_vm(&self, id: &str) -> Result<VmNetworkInfo> {
        vms::network_info(&self.ctx, id)
    }

    /// Deletes every VM past its TTL.
    pub fn reap_expired(&self) -> Reaped {
        vms::reap_expired(&self.ctx)
    }

    pub fn doctor(&self) -> DoctorReport {
        doctor::doctor(&self.ctx.paths)
    }

    /// The catalog, then every image environment (pulled or imported).
    pub fn list_environments(&self) -> Vec<EnvironmentInfo> {
        let images = environments::oci::list(&self.ctx.paths);
        CATALOG
            .iter()
            .map(|e| self.info(e))
            .chain(images.into_iter().map(image_info))
            .collect()
    }

    pub fn inspect_environment(&self, name: &str) -> Result<EnvironmentInfo> {
        match environments::resolve(&self.ctx.paths, name)? {
            environments::Named::Catalog(e) => Ok(self.info(e)),
            environments::Named::Image(r) => environments::oci::inspect(&self.ctx.paths, &r)
                .map(image_info)
                .ok_or_else(|| Error::not_found(Entity::Environment, name)),
        }
    }

    /// Installs an environment (and the guest kernel): a catalog one is
    /// pulled from `PYRO_ENVIRONMENT_REGISTRY` if that is set and built
    /// from Debian packages otherwise; an image reference is pulled from
    /// its registry (again, so a moved tag is followed).
    pub fn pull_environment(&self, name: &str, progress: &dyn Progress) -> Result<EnvironmentInfo> {
        assets::ensure(&self.ctx.paths, progress)?;
        match environments::resolve(&self.ctx.paths, name)? {
            environments::Named::Catalog(entry) => {
                environments::ensure(&self.ctx.paths, entry, true, progress)?;
                Ok(self.info(entry))
            }
            environments::Named::Image(r) => {
                environments::oci::pull(&self.ctx.paths, &r, &[], progress)?;
                self.inspect_environment(&r)
            }
        }
    }

    /// Pushes an installed catalog environment, with the guest kernel, to
    /// a registry as an OCI artifact (`registry/repo:tag`).
    pub fn publish_environment(
        &self,
        name: &str,
        destination: &str,
        progress: &dyn Progress,
    ) -> Result<PublishReport> {
        let entry = environments::lookup(name)?;
        environments::publish(&self.ctx.paths, entry, destination, &[], progress)
    }

    /// Removes partial builds and pulls, incomplete installs, directories
    /// that belong to no catalog entry, and images and layers nothing
    /// refers to from the environment cache.
    pub fn prune_environments(&self) -> Result<PruneReport> {
        self.prune_environments_with(PruneLimits::default())
    }

    /// `prune_environments`, and also image environments unused for
    /// `limits.unused_for` or beyond `limits.max_bytes` (least recently
    /// used first). An image a workspace's or VM's disk is built on stays.
    pub fn prune_environments_with(&self, limits: PruneLimits) -> Result<PruneReport> {
        let mut report = environments::prune(&self.ctx.paths)?;
        let in_use = vmm::dir::images_in_use(&self.ctx.paths);
        environments::oci::prune(&self.ctx.paths, limits, &in_use, &mut report)?;
        // Templates of what is gone go with it.
        vmm::templates::prune(&self.ctx.paths, &mut report)?;
        Ok(report)
    }

    /// Writes an installed environment and the guest kernel to one archive.
    pub fn export_environment(
        &self,
        name: &str,
        output: &Path,
        force: bool,
    ) -> Result<ExportReport> {
        environments::export(&self.ctx.paths, environments::lookup(name)?, output, force)
    }

    /// Installs an environment from an archive made by
    /// `export_environment`, or a container image from a `docker save`
    /// tarball or an OCI layout (directory or tarball), named `name` or as
    /// the archive names it.
    pub fn import_environment(
        &self,
        archive: &Path,
        name: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<EnvironmentInfo> {
        if archive.is_dir() || environments::oci::is_image_archive(archive) {
            let (_, record) =
                environments::oci::import_image(&self.ctx.paths, archive, name, progress)?;
            return self.inspect_environment(&record.reference);
        }
        let entry = environments::import(&self.ctx.paths, archive, progress)?;
        Ok(self.info(entry))
    }

    fn info(&self, e: &CatalogEntry) -> EnvironmentInfo {
        let installed = environments::installed(&self.ctx.paths, e);
        EnvironmentInfo {
            name: e.name.into(),
            version: e.version.into(),
            description: e.description.into(),
            distribution: e.distribution.into(),
            default_packages: e.packages.iter().map(|s| s.to_string()).collect(),
            installed: installed.is_some(),
            install_dir: environments::install_dir(&self.ctx.paths, e)
                .display()
                .to_string(),
            manifest: installed.map(|i| i.manifest),
            image: None,
        }
    }
}

fn image_info(i: ImageInfo) -> EnvironmentInfo {
    let record = i.record.as_ref();
    EnvironmentInfo {
        name: i.reference.clone(),
        version: i.digest.clone(),
        description: "container image".into(),
        distribution: record.map_or_else(String::new, |r| format!("{}/{}", r.os, r.architecture)),
        default_packages: Vec::new(),
        installed: i.installed,
        install_dir: i.install_dir.clone(),
        manifest: None,
        image: Some(i),
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
        workspace::lifecycle::create(&self.ctx, params, progress)
    }
    pub fn list_workspaces(&self) -> Result<WorkspaceList> {
        workspace::lifecycle::list(&self.ctx)
    }
    pub fn status_workspace(&self, id: &str) -> Result<WorkspaceInfo> {
        workspace::lifecycle::status(&self.ctx, id)
    }
    pub fn update_workspace(&self, id: &str, update: &UpdateWorkspace) -> Result<WorkspaceInfo> {
        workspace::lifecycle::update(&self.ctx, id, update)
    }
    pub fn logs_workspace(&self, id: &str) -> Result<WorkspaceLogs> {
        workspace::exec::logs(&self.ctx, id)
    }
    /// Stops the VM; disk, baseline and checkpoints stay.
    pub fn stop_workspace(&self, id: &str) -> Result<WorkspaceInfo> {
        workspace::lifecycle::stop(&self.ctx, id)
    }
    pub fn start_workspace(&self, id: &str, progress: &dyn Progress) -> Result<WorkspaceInfo> {
        workspace::lifecycle::start(&self.ctx, id, progress)
    }
    /// Saves the running guest's memory beside its disk and ends its VM:
    /// no memory, no CPU until it resumes, with everything intact. Any
    /// call that needs the VM resumes it.
    pub fn pause_workspace(&self, id: &str) -> Result<PauseResult> {
        workspace::live::pause(&self.ctx, id)
    }
    /// Restores a paused workspace's guest (a running one is left be).
    pub fn resume_workspace(&self, id: &str, progress: &dyn Progress) -> Result<ResumeResult> {
        workspace::live::resume_workspace(&self.ctx, id, progress)
    }
    /// New workspaces from a running one's memory and disk at one instant,
    /// each with its own id, hostname and random seed.
    pub fn fork_workspace(
        &self,
        id: &str,
        params: &ForkWorkspace,
        progress: &dyn Progress,
    ) -> Result<ForkResult> {
        workspace::live::fork(&self.ctx, id, params, progress)
    }
    /// Removes the workspace and everything it holds.
    pub fn delete_workspace(&self, id: &str) -> Result<Deleted> {
        workspace::lifecycle::delete(&self.ctx, id)
    }
    /// Runs a command in `/workspace`, streaming its output (with secret
    /// values redacted) into `output`.
    pub fn exec_workspace(
        &self,
        id: &str,
        params: &WorkspaceExec,
        output: &mut dyn OutputSink,
    ) -> Result<CommandEntry> {
        workspace::exec::exec(&self.ctx, id, params, output)
    }
    pub fn push_workspace_sync(&self, id: &str, source: &Path, dest: &str) -> Result<SyncResult> {
        workspace::files::sync_push(&self.ctx, id, source, dest)
    }
    pub fn export_workspace(
        &self,
        id: &str,
        path: &str,
        output: &Path,
        force: bool,
    ) -> Result<ExportResult> {
        workspace::files::export(&self.ctx, id, path, output, force)
    }
    pub fn list_workspace_files(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<FileListResult> {
        workspace::files::file_list(&self.ctx, id, path, recursive)
    }
    pub fn read_workspace_file(
        &self,
        id: &str,
        path: &str,
        max_bytes: u64,
    ) -> Result<FileReadResult> {
        workspace::files::file_read(&self.ctx, id, path, max_bytes)
    }
    pub fn write_workspace_file(
        &self,
        id: &str,
        path: &str,
        text: &str,
    ) -> Result<FileWriteResult> {
        workspace::files::file_write(&self.ctx, id, path, text)
    }
    /// Compares live `/workspace` with the create-time baseline.
    pub fn diff_workspace(&self, id: &str) -> Result<DiffResult> {
        workspace::changes::diff(&self.ctx, id)
    }
    /// Applies a unified or git diff; every file is checked first, and
    /// nothing changes unless all of it applies.
    pub fn apply_workspace_patch(&self, id: &str, patch: &str) -> Result<PatchResult> {
        workspace::changes::apply(&self.ctx, id, patch)
    }
    /// Writes a stopped workspace's disk as a raw ext4 image.
    pub fn export_workspace_disk(
        &self,
        id: &str,
        output: &Path,
        force: bool,
    ) -> Result<DiskExport> {
        workspace::disk::export(&self.ctx, id, output, force)
    }
    /// Lists files on a stopped workspace's disk, without booting it.
    pub fn list_workspace_disk(&self, id: &str, path: &str, recursive: bool) -> Result<DiskList> {
        workspace::disk::list(&self.ctx, id, path, recursive)
    }
    /// Reads a file from a stopped workspace's disk, without booting it.
    pub fn read_workspace_disk(&self, id: &str, path: &str, max_bytes: u64) -> Result<DiskRead> {
        workspace::disk::read(&self.ctx, id, path, max_bytes)
    }
    /// Opens an interactive shell (a PTY in the guest) in a running workspace.
    pub fn open_shell(&self, id: &str, params: &OpenShell) -> Result<ShellInfo> {
        workspace::shells::open(&self.ctx, id, params)
    }
    /// Reads a shell's output from a cursor.
    pub fn read_shell(&self, id: &str, shell_id: &str, params: &ReadShell) -> Result<ShellInfo> {
        workspace::shells::read(&self.ctx, id, shell_id, params)
    }
    /// Types into a shell; a newline is added unless `append_newline` is false.
    pub fn write_shell(
        &self,
        id: &str,
        shell_id: &str,
        input: &str,
        append_newline: bool,
    ) -> Result<ShellInfo> {
        workspace::shells::write(&self.ctx, id, shell_id, input, append_newline)
    }
    /// Sends INT, TERM, HUP or KILL to what runs in the shell's foreground.
    pub fn signal_shell(&self, id: &str, shell_id: &str, signal: &str) -> Result<ShellInfo> {
        workspace::shells::signal(&self.ctx, id, shell_id, signal)
    }
    pub fn close_shell(&self, id: &str, shell_id: &str) -> Result<ShellInfo> {
        workspace::shells::close(&self.ctx, id, shell_id)
    }
    /// Starts a long-running service and waits until it is ready (or
    /// failed: exited early, or not ready in time).
    pub fn start_service(
        &self,
        id: &str,
        name: &str,
        params: &StartService,
    ) -> Result<ServiceInfo> {
        workspace::services::start(&self.ctx, id, name, params)
    }
    pub fn list_services(&self, id: &str) -> Result<ServiceList> {
        workspace::services::list(&self.ctx, id)
    }
    pub fn status_service(&self, id: &str, name: &str) -> Result<ServiceInfo> {
        workspace::services::status(&self.ctx, id, name)
    }
    /// The last `tail_lines` lines of stdout and stderr (`None`: all kept).
    pub fn logs_service(
        &self,
        id: &str,
        name: &str,
        tail_lines: Option<u64>,
    ) -> Result<ServiceLogs> {
        workspace::services::logs(&self.ctx, id, name, tail_lines)
    }
    /// SIGTERM, then SIGKILL after 5 s, to every process of the service.
    pub fn stop_service(&self, id: &str, name: &str) -> Result<ServiceInfo> {
        workspace::services::stop(&self.ctx, id, name)
    }
    pub fn create_snapshot(&self, id: &str, name: &str) -> Result<SnapshotInfo> {
        workspace::snapshots::create(&self.ctx, id, name)
    }
    pub fn list_snapshots(&self, id: &str) -> Result<SnapshotList> {
        workspace::snapshots::list(&self.ctx, id)
    }
    pub fn delete_snapshot(&self, id: &str, name: &str) -> Result<Deleted> {
        workspace::snapshots::delete(&self.ctx, id, name)
    }
    /// Rolls the whole disk back to `snapshot` (`baseline` by default).
    pub fn reset_workspace(
        &self,
        id: &str,
        snapshot: &str,
        progress: &dyn Progress,
    ) -> Result<ResetResult> {
        workspace::snapshots::reset(&self.ctx, id, snapshot, progress)
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
    vmm::supervisor::main(dir)
}

/// The hidden run-pool filler of the `pyro` binary: `pyro __pool-fill ENV
/// VCPUS MEM` starts warm guests of that shape until the pool is full.
/// Never returns.
pub fn fill_pool(environment: String, vcpu_count: u32, mem_mib: u32) -> ! {
    let pyro = Pyro::new();
    pool::fill_main(
        pyro.ctx.paths.clone(),
        pyro.ctx.program.clone(),
        pool::FillRequest {
            environment,
            vcpu_count,
            mem_mib,
        },
    )
}
