//! `pyro workspace ...`: one module per noun.

mod disk;
mod exec;
mod files;
mod lifecycle;
mod service;
mod shell;
mod snapshot;

use std::process::ExitCode;

use clap::{Args, Subcommand};
use pyro::Pyro;

#[derive(Subcommand)]
pub enum WorkspaceCommand {
    /// Create a workspace and boot it; optionally seed /workspace.
    Create(lifecycle::CreateArgs),
    /// List workspaces, most recently active first.
    List,
    /// Change a workspace's name or labels.
    Update(lifecycle::UpdateArgs),
    /// Show a workspace.
    Status(Id),
    /// Show the command history.
    Logs(Id),
    /// Stop the VM; disk, baseline and snapshots stay.
    Stop(Id),
    /// Boot a stopped workspace again (a paused one is resumed).
    Start(Id),
    /// Save the guest's memory beside its disk and end its VM; any later
    /// call resumes it with processes, shells, services and ports intact.
    Pause(Id),
    /// Resume a paused workspace.
    Resume(Id),
    /// New workspaces from a running one's memory and disk at one instant.
    Fork(lifecycle::ForkArgs),
    /// Delete a workspace and everything in it.
    Delete(Id),
    /// Run a command in /workspace; exits with its exit code.
    Exec(exec::ExecArgs),
    /// Copy files from the host into the workspace.
    #[command(subcommand)]
    Sync(files::SyncCommand),
    /// Copy a file, directory or symlink out of the workspace.
    Export(files::ExportArgs),
    /// Files in /workspace.
    #[command(subcommand)]
    File(files::FileCommand),
    /// Whole-disk checkpoints.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Roll the whole disk back to a snapshot (default: the create-time baseline).
    Reset(snapshot::ResetArgs),
    /// Compare /workspace with its create-time baseline.
    Diff(Id),
    /// Apply a unified or git diff to /workspace (all or nothing).
    #[command(subcommand)]
    Patch(files::PatchCommand),
    /// Inspect a stopped workspace's disk without booting it.
    #[command(subcommand)]
    Disk(disk::DiskCommand),
    /// Interactive shells that keep their state between calls.
    #[command(subcommand)]
    Shell(shell::ShellCommand),
    /// Long-running services with readiness checks.
    #[command(subcommand)]
    Service(service::ServiceCommand),
}

/// A workspace named by its id.
#[derive(Args)]
pub struct Id {
    workspace_id: String,
}

pub fn dispatch(pyro: &Pyro, cmd: WorkspaceCommand, json: bool) -> anyhow::Result<ExitCode> {
    use WorkspaceCommand::*;
    match cmd {
        Create(a) => lifecycle::create(pyro, a, json),
        List => lifecycle::list(pyro, json),
        Update(a) => lifecycle::update(pyro, a, json),
        Status(a) => lifecycle::status(pyro, a, json),
        Logs(a) => lifecycle::logs(pyro, a, json),
        Stop(a) => lifecycle::stop(pyro, a, json),
        Start(a) => lifecycle::start(pyro, a, json),
        Pause(a) => lifecycle::pause(pyro, a, json),
        Resume(a) => lifecycle::resume(pyro, a, json),
        Fork(a) => lifecycle::fork(pyro, a, json),
        Delete(a) => lifecycle::delete(pyro, a, json),
        Exec(a) => exec::exec(pyro, a, json),
        Sync(c) => files::sync(pyro, c, json),
        Export(a) => files::export(pyro, a, json),
        File(c) => files::file(pyro, c, json),
        Diff(a) => files::diff(pyro, a, json),
        Patch(c) => files::patch(pyro, c, json),
        Snapshot(c) => snapshot::dispatch(pyro, c, json),
        Reset(a) => snapshot::reset(pyro, a, json),
        Disk(c) => disk::dispatch(pyro, c, json),
        Shell(c) => shell::dispatch(pyro, c, json),
        Service(c) => service::dispatch(pyro, c, json),
    }
}
