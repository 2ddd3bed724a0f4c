//! `pyro workspace ...`: each subcommand is one façade call and a render.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use pyro::{CreateWorkspace, Pyro, SecretInput, UpdateWorkspace, WorkspaceExec, WorkspaceInfo};

use crate::render;

#[derive(Subcommand)]
pub enum WorkspaceCommand {
    /// Create a workspace and boot it; optionally seed /workspace.
    Create(CreateArgs),
    /// List workspaces, most recently active first.
    List(JsonArg),
    /// Change a workspace's name or labels.
    Update(UpdateArgs),
    /// Show a workspace.
    Status(IdArgs),
    /// Show the command history.
    Logs(IdArgs),
    /// Stop the VM; disk, baseline and snapshots stay.
    Stop(IdArgs),
    /// Boot a stopped workspace again.
    Start(IdArgs),
    /// Delete a workspace and everything in it.
    Delete(IdArgs),
    /// Run a command in /workspace; exits with its exit code.
    Exec(ExecArgs),
    /// Copy files from the host into the workspace.
    #[command(subcommand)]
    Sync(SyncCommand),
    /// Copy a file, directory or symlink out of the workspace.
    Export(ExportArgs),
    /// Files in /workspace.
    #[command(subcommand)]
    File(FileCommand),
    /// Whole-disk checkpoints.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Roll the whole disk back to a snapshot (default: the create-time baseline).
    Reset(ResetArgs),
    /// Compare /workspace with its create-time baseline.
    Diff(IdArgs),
    /// Apply a unified or git diff to /workspace (all or nothing).
    #[command(subcommand)]
    Patch(PatchCommand),
    /// Inspect a stopped workspace's disk without booting it.
    #[command(subcommand)]
    Disk(DiskCommand),
    /// Interactive shells that keep their state between calls.
    #[command(subcommand)]
    Shell(ShellCommand),
    /// Long-running services with readiness checks.
    #[command(subcommand)]
    Service(ServiceCommand),
}
#[derive(Subcommand)]
pub enum ServiceCommand {
    /// Start a service and wait until it is ready.
    Start(ServiceStartArgs),
    List(IdArgs),
    Status {
        workspace_id: String,
        name: String,
        #[arg(long)]
        json: bool,
    },
    Logs {
        workspace_id: String,
        name: String,
        #[arg(long, default_value_t = 200, conflicts_with = "all")]
        tail_lines: u64,
        /// Everything kept, not just the tail.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    Stop {
        workspace_id: String,
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct ServiceStartArgs {
    workspace_id: String,
    name: String,
    #[arg(long, default_value = "/workspace")]
    cwd: String,
    /// Ready once this path (relative to --cwd) exists.
    #[arg(long, group = "ready")]
    ready_file: Option<String>,
    /// Ready once HOST:PORT accepts a connection.
    #[arg(long, group = "ready")]
    ready_tcp: Option<String>,
    /// Ready once a GET of this URL answers 200-399.
    #[arg(long, group = "ready")]
    ready_http: Option<String>,
    /// Ready once this shell command exits 0.
    #[arg(long, group = "ready")]
    ready_command: Option<String>,
    #[arg(long, default_value_t = 30)]
    ready_timeout_seconds: u64,
    #[arg(long, default_value_t = 500)]
    ready_interval_ms: u64,
    /// Pass a secret as an environment variable: SECRET or SECRET=ENV (repeatable).
    #[arg(long = "secret-env")]
    secret_env: Vec<String>,
    /// Publish a guest port on host 127.0.0.1: GUEST or HOST:GUEST (repeatable).
    #[arg(long = "publish")]
    publish: Vec<String>,
    #[arg(long)]
    json: bool,
    /// One argument: a shell command string; several: an argv.
    #[arg(last = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

fn parse_publish(s: &str) -> anyhow::Result<pyro::PublishedPort> {
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| anyhow::anyhow!("bad port in --publish {s:?}"))
    };
    Ok(match s.split_once(':') {
        Some((h, g)) => pyro::PublishedPort {
            guest_port: port(g)?,
            host_port: Some(port(h)?),
        },
        None => pyro::PublishedPort {
            guest_port: port(s)?,
            host_port: None,
        },
    })
}

fn service_line(tag: &str, s: &pyro::ServiceInfo) {
    let mut line = format!(
        "[workspace-service-{tag}] workspace_id={} service_name={} state={} cwd={} execution_mode={}",
        s.workspace_id,
        s.service_name,
        s.state,
        s.cwd,
        render::mode(s.execution_mode)
    );
    if let Some(r) = &s.stop_reason {
        line.push_str(&format!(" stop_reason={r}"));
    }
    if let Some(c) = s.exit_code {
        line.push_str(&format!(" exit_code={c}"));
    }
    if !s.published_ports.is_empty() {
        line.push_str(&format!(" published_ports={}", ports(s)));
    }
    eprintln!("{line}");
}

/// `127.0.0.1:H->G/tcp`, comma-separated.
fn ports(s: &pyro::ServiceInfo) -> String {
    s.published_ports
        .iter()
        .map(|p| {
            format!(
                "{}:{}->{}/{}",
                p.host, p.host_port, p.guest_port, p.protocol
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[derive(Subcommand)]
pub enum ShellCommand {
    Open {
        workspace_id: String,
        #[arg(long, default_value = "/workspace")]
        cwd: String,
        #[arg(long, default_value_t = 120)]
        cols: u16,
        #[arg(long, default_value_t = 30)]
        rows: u16,
        /// Pass a secret as an environment variable: SECRET or SECRET=ENV (repeatable).
        #[arg(long = "secret-env")]
        secret_env: Vec<String>,
        #[arg(long, conflicts_with = "json")]
        id_only: bool,
        #[arg(long)]
        json: bool,
    },
    Read {
        workspace_id: String,
        shell_id: String,
        #[arg(long, default_value_t = 0)]
        cursor: u64,
        #[arg(long, default_value_t = 65536)]
        max_chars: u64,
        /// Render as the screen would show it (a terminal emulator, not escape stripping).
        #[arg(long)]
        plain: bool,
        /// Keep reading until the shell has been quiet this long.
        #[arg(long)]
        wait_for_idle_ms: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    Write {
        workspace_id: String,
        shell_id: String,
        #[arg(long, allow_hyphen_values = true)]
        input: String,
        #[arg(long)]
        no_newline: bool,
        #[arg(long)]
        json: bool,
    },
    Signal {
        workspace_id: String,
        shell_id: String,
        #[arg(long, default_value = "INT")]
        signal: String,
        #[arg(long)]
        json: bool,
    },
    Close {
        workspace_id: String,
        shell_id: String,
        #[arg(long)]
        json: bool,
    },
}

fn parse_secret_env(items: &[String]) -> BTreeMap<String, String> {
    items
        .iter()
        .map(|s| match s.split_once('=') {
            Some((secret, var)) => (secret.to_string(), var.to_string()),
            None => (s.clone(), s.clone()),
        })
        .collect()
}

fn shell_line(tag: &str, s: &pyro::ShellInfo) {
    eprintln!(
        "[workspace-shell-{tag}] workspace_id={} shell_id={} state={} cwd={} cols={} rows={} next_cursor={}",
        s.workspace_id, s.shell_id, s.state, s.cwd, s.cols, s.rows, s.next_cursor
    );
}

#[derive(Subcommand)]
pub enum PatchCommand {
    Apply {
        workspace_id: String,
        #[arg(
            long,
            required_unless_present = "patch_file",
            conflicts_with = "patch_file",
            allow_hyphen_values = true
        )]
        patch: Option<String>,
        /// Read the patch from this (UTF-8) file.
        #[arg(long)]
        patch_file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum DiskCommand {
    /// Write the disk as a raw ext4 image.
    Export {
        workspace_id: String,
        #[arg(long)]
        output: PathBuf,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    List {
        workspace_id: String,
        #[arg(default_value = "/workspace")]
        path: String,
        #[arg(long)]
        recursive: bool,
        #[arg(long)]
        json: bool,
    },
    Read {
        workspace_id: String,
        path: String,
        #[arg(long, default_value_t = 65536)]
        max_bytes: u64,
        #[arg(long, conflicts_with = "json")]
        content_only: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct JsonArg {
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct IdArgs {
    workspace_id: String,
    #[arg(long)]
    json: bool,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.into(), v.into())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

#[derive(Args)]
pub struct CreateArgs {
    environment: String,
    #[arg(long, default_value_t = 1)]
    vcpu_count: u32,
    #[arg(long, default_value_t = 1024)]
    mem_mib: u32,
    /// Stop (never delete) the workspace after this long without activity.
    #[arg(long, default_value_t = 600)]
    ttl_seconds: u64,
    #[arg(long, default_value = "off")]
    network_policy: String,
    /// A directory, .tar, .tar.gz or .tgz to copy into /workspace.
    #[arg(long)]
    seed_path: Option<PathBuf>,
    #[arg(long)]
    name: Option<String>,
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// A secret, NAME=VALUE (repeatable).
    #[arg(long = "secret", value_parser = parse_label)]
    secrets: Vec<(String, String)>,
    /// A secret read from a host file, NAME=PATH (repeatable).
    #[arg(long = "secret-file", value_parser = parse_label)]
    secret_files: Vec<(String, String)>,
    /// Print only the workspace id.
    #[arg(long, conflicts_with = "json")]
    id_only: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct UpdateArgs {
    workspace_id: String,
    #[arg(long, conflicts_with = "clear_name")]
    name: Option<String>,
    #[arg(long)]
    clear_name: bool,
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    #[arg(long = "clear-label")]
    clear_labels: Vec<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ExecArgs {
    workspace_id: String,
    #[arg(long, default_value_t = 30)]
    timeout_seconds: u64,
    /// Pass a secret as an environment variable: SECRET or SECRET=ENV (repeatable).
    #[arg(long = "secret-env")]
    secret_env: Vec<String>,
    #[arg(long)]
    json: bool,
    /// One argument: a shell command string; several: an argv.
    #[arg(last = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

#[derive(Subcommand)]
pub enum SyncCommand {
    /// Copy a directory or archive into the workspace (overwrites, never deletes).
    Push {
        workspace_id: String,
        source: PathBuf,
        #[arg(long, default_value = "/workspace")]
        dest: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct ExportArgs {
    workspace_id: String,
    path: String,
    #[arg(long)]
    output: PathBuf,
    /// Overwrite OUTPUT if it exists.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum FileCommand {
    List {
        workspace_id: String,
        #[arg(default_value = "/workspace")]
        path: String,
        #[arg(long)]
        recursive: bool,
        #[arg(long)]
        json: bool,
    },
    Read {
        workspace_id: String,
        path: String,
        #[arg(long, default_value_t = 65536)]
        max_bytes: u64,
        /// Print only the content.
        #[arg(long, conflicts_with = "json")]
        content_only: bool,
        #[arg(long)]
        json: bool,
    },
    Write {
        workspace_id: String,
        path: String,
        #[arg(
            long,
            required_unless_present = "text_file",
            conflicts_with = "text_file",
            allow_hyphen_values = true
        )]
        text: Option<String>,
        /// Read the text from this (UTF-8) file.
        #[arg(long)]
        text_file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum SnapshotCommand {
    Create {
        workspace_id: String,
        name: String,
        #[arg(long)]
        json: bool,
    },
    List(IdArgs),
    Delete {
        workspace_id: String,
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct ResetArgs {
    workspace_id: String,
    #[arg(long, default_value = "baseline")]
    snapshot: String,
    #[arg(long)]
    json: bool,
}

impl WorkspaceCommand {
    pub fn json(&self) -> bool {
        use WorkspaceCommand::*;
        match self {
            Create(a) => a.json,
            List(a) => a.json,
            Update(a) => a.json,
            Status(a) | Logs(a) | Stop(a) | Start(a) | Delete(a) => a.json,
            Exec(a) => a.json,
            Sync(SyncCommand::Push { json, .. }) => *json,
            Export(a) => a.json,
            File(
                FileCommand::List { json, .. }
                | FileCommand::Read { json, .. }
                | FileCommand::Write { json, .. },
            ) => *json,
            Snapshot(
                SnapshotCommand::Create { json, .. } | SnapshotCommand::Delete { json, .. },
            ) => *json,
            Snapshot(SnapshotCommand::List(a)) => a.json,
            Reset(a) => a.json,
            Diff(a) => a.json,
            Patch(PatchCommand::Apply { json, .. }) => *json,
            Disk(
                DiskCommand::Export { json, .. }
                | DiskCommand::List { json, .. }
                | DiskCommand::Read { json, .. },
            ) => *json,
            Shell(
                ShellCommand::Open { json, .. }
                | ShellCommand::Read { json, .. }
                | ShellCommand::Write { json, .. }
                | ShellCommand::Signal { json, .. }
                | ShellCommand::Close { json, .. },
            ) => *json,
            Service(ServiceCommand::Start(a)) => a.json,
            Service(ServiceCommand::List(a)) => a.json,
            Service(
                ServiceCommand::Status { json, .. }
                | ServiceCommand::Logs { json, .. }
                | ServiceCommand::Stop { json, .. },
            ) => *json,
        }
    }
}

fn summary(w: &WorkspaceInfo) {
    println!("Workspace ID: {}", w.workspace_id);
    println!("Name: {}", w.name.as_deref().unwrap_or("-"));
    let labels: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "Labels: {}",
        if labels.is_empty() {
            "-".into()
        } else {
            labels.join(", ")
        }
    );
    println!("Environment: {}", w.environment);
    let state = serde_json::to_value(w.state).unwrap();
    match &w.stop_reason {
        Some(reason) => println!("State: {} ({reason})", state.as_str().unwrap_or("")),
        None => println!("State: {}", state.as_str().unwrap_or("")),
    }
    if let Some(e) = &w.last_error {
        println!("Last error: {e}");
    }
    println!("Workspace: {}", w.workspace_path);
    println!("Last activity at: {}", w.last_activity_at);
    if let Some(t) = w.expires_at {
        println!("Expires at: {t} (idle timeout {}s)", w.ttl_seconds);
    }
    println!("Network policy: {}", w.network_policy);
    let seed = &w.workspace_seed;
    println!(
        "Workspace seed: {}{}",
        serde_json::to_value(seed.mode)
            .unwrap()
            .as_str()
            .unwrap_or(""),
        seed.seed_path
            .as_ref()
            .map(|p| format!(" from {p}"))
            .unwrap_or_default()
    );
    println!("Execution mode: {}", render::mode(w.execution_mode));
    println!("Resources: {} vCPU / {} MiB", w.vcpu_count, w.mem_mib);
    println!("Command count: {}", w.command_count);
    println!("Reset count: {}", w.reset_count);
    println!("Snapshots: {}", w.snapshot_count);
    if !w.secrets.is_empty() {
        let names: Vec<String> = w
            .secrets
            .iter()
            .map(|s| format!("{} ({})", s.name, s.source_kind))
            .collect();
        println!("Secrets: {}", names.join(", "));
    }
    if w.service_count.is_some() {
        println!("Services: {} running", services(w));
    }
    if let Some(c) = &w.last_command {
        println!("Last command: {} (exit_code={})", c.command, c.exit_code);
    }
}

/// `R/T`: running and total services, `-` when not counted.
fn services(w: &pyro::WorkspaceInfo) -> String {
    match (w.running_service_count, w.service_count) {
        (Some(r), Some(t)) => format!("{r}/{t}"),
        _ => "-".into(),
    }
}

fn show<T: serde::Serialize>(
    json: bool,
    value: &T,
    human: impl FnOnce(&T),
) -> anyhow::Result<ExitCode> {
    if json {
        render::json(value)?;
    } else {
        human(value);
    }
    Ok(ExitCode::SUCCESS)
}

fn read_utf8(path: &PathBuf, what: &str) -> anyhow::Result<String> {
    if path.is_dir() {
        bail!("{what} {} is a directory", path.display());
    }
    let bytes = std::fs::read(path).with_context(|| format!("read {what} {}", path.display()))?;
    String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{what} {} is not UTF-8 text", path.display()))
}

pub fn dispatch(pyro: &Pyro, cmd: WorkspaceCommand) -> anyhow::Result<ExitCode> {
    use WorkspaceCommand::*;
    match cmd {
        Create(a) => {
            let params = CreateWorkspace {
                environment: a.environment,
                vcpu_count: Some(a.vcpu_count),
                mem_mib: Some(a.mem_mib),
                ttl_seconds: Some(a.ttl_seconds),
                network_policy: Some(a.network_policy),
                seed_path: a.seed_path,
                name: a.name,
                labels: a.labels.into_iter().collect::<BTreeMap<_, _>>(),
                secrets: a
                    .secrets
                    .into_iter()
                    .map(|(name, value)| SecretInput {
                        name,
                        value: Some(value),
                        file_path: None,
                    })
                    .chain(a.secret_files.into_iter().map(|(name, path)| SecretInput {
                        name,
                        value: None,
                        file_path: Some(path.into()),
                    }))
                    .collect(),
            };
            let w = pyro.create_workspace(&params, &render::Phases::new())?;
            if a.id_only {
                println!("{}", w.workspace_id);
                return Ok(ExitCode::SUCCESS);
            }
            show(a.json, &w, summary)
        }
        List(a) => show(a.json, &pyro.list_workspaces()?, |l| {
            for w in &l.workspaces {
                let labels: Vec<String> =
                    w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "[workspace] workspace_id={} name={:?} state={} environment={} labels={} last_activity_at={} expires_at={} commands={} services={}",
                    w.workspace_id,
                    w.name.clone().unwrap_or_default(),
                    serde_json::to_value(w.state).unwrap().as_str().unwrap_or(""),
                    w.environment,
                    labels.join(","),
                    w.last_activity_at,
                    w.expires_at.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                    w.command_count,
                    services(w)
                );
            }
        }),
        Update(a) => {
            let u = UpdateWorkspace {
                name: a.name,
                clear_name: a.clear_name,
                labels: a.labels.into_iter().collect(),
                clear_labels: a.clear_labels,
            };
            show(
                a.json,
                &pyro.update_workspace(&a.workspace_id, &u)?,
                summary,
            )
        }
        Status(a) => show(a.json, &pyro.status_workspace(&a.workspace_id)?, summary),
        Logs(a) => show(a.json, &pyro.logs_workspace(&a.workspace_id)?, |l| {
            for e in &l.entries {
                println!(
                    "[{}] exit_code={} duration_ms={} $ {}",
                    e.sequence, e.exit_code, e.duration_ms, e.command
                );
                print!("{}", e.stdout);
                eprint!("{}", e.stderr);
            }
        }),
        Stop(a) => show(a.json, &pyro.stop_workspace(&a.workspace_id)?, summary),
        Start(a) => show(
            a.json,
            &pyro.start_workspace(&a.workspace_id, &render::Phases::new())?,
            summary,
        ),
        Delete(a) => show(a.json, &pyro.delete_workspace(&a.workspace_id)?, |d| {
            println!("Deleted workspace: {}", d.workspace_id)
        }),
        Exec(a) => {
            let params = WorkspaceExec {
                command: a.command,
                timeout_seconds: a.timeout_seconds,
                secret_env: parse_secret_env(&a.secret_env),
            };
            let e = if a.json {
                let e = pyro.exec_workspace(&a.workspace_id, &params, &mut render::Discard)?;
                render::json(&e)?;
                e
            } else {
                let e = pyro.exec_workspace(&a.workspace_id, &params, &mut render::Stream)?;
                let _ = std::io::stdout().flush();
                eprintln!(
                    "[workspace-exec] workspace_id={} sequence={} cwd={} execution_mode={} exit_code={} duration_ms={}",
                    e.workspace_id,
                    e.sequence,
                    e.cwd,
                    render::mode(e.execution_mode),
                    e.exit_code,
                    e.duration_ms
                );
                e
            };
            Ok(ExitCode::from(e.exit_code.clamp(0, 255) as u8))
        }
        Sync(SyncCommand::Push {
            workspace_id,
            source,
            dest,
            json,
        }) => show(
            json,
            &pyro.push_workspace_sync(&workspace_id, &source, &dest)?,
            |r| {
                let s = &r.workspace_sync;
                println!(
                "[workspace-sync] workspace_id={} mode={} source={} destination={} entry_count={} bytes_written={}",
                r.workspace_id,
                serde_json::to_value(s.mode).unwrap().as_str().unwrap_or(""),
                s.source_path,
                s.destination,
                s.entry_count,
                s.bytes_written
            )
            },
        ),
        Export(a) => show(
            a.json,
            &pyro.export_workspace(&a.workspace_id, &a.path, &a.output, a.force)?,
            |r| {
                println!(
                    "[workspace-export] workspace_id={} workspace_path={} output_path={} artifact_type={} entry_count={} bytes_written={}",
                    r.workspace_id,
                    r.workspace_path,
                    r.output_path,
                    serde_json::to_value(r.artifact_type).unwrap().as_str().unwrap_or(""),
                    r.entry_count,
                    r.bytes_written
                )
            },
        ),
        File(FileCommand::List {
            workspace_id,
            path,
            recursive,
            json,
        }) => show(
            json,
            &pyro.list_workspace_files(&workspace_id, &path, recursive)?,
            |r| render::entries(&r.entries),
        ),
        File(FileCommand::Read {
            workspace_id,
            path,
            max_bytes,
            content_only,
            json,
        }) => {
            let r = pyro.read_workspace_file(&workspace_id, &path, max_bytes)?;
            if json {
                render::json(&r)?;
            } else {
                render::file_content(
                    "workspace-file-read",
                    &r.workspace_id,
                    &r.path,
                    &r.content,
                    r.size_bytes,
                    r.truncated,
                    content_only,
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        File(FileCommand::Write {
            workspace_id,
            path,
            text,
            text_file,
            json,
        }) => {
            let text = match (text, text_file) {
                (Some(t), _) => t,
                (None, Some(f)) => read_utf8(&f, "text file")?,
                (None, None) => bail!("--text or --text-file is required"),
            };
            show(
                json,
                &pyro.write_workspace_file(&workspace_id, &path, &text)?,
                |r| {
                    println!(
                        "[workspace-file-write] workspace_id={} path={} bytes_written={}",
                        r.workspace_id, r.path, r.bytes_written
                    )
                },
            )
        }
        Snapshot(SnapshotCommand::Create {
            workspace_id,
            name,
            json,
        }) => show(json, &pyro.create_snapshot(&workspace_id, &name)?, |s| {
            println!("Created snapshot: {}", s.snapshot_name)
        }),
        Snapshot(SnapshotCommand::List(a)) => {
            show(a.json, &pyro.list_snapshots(&a.workspace_id)?, |l| {
                for s in &l.snapshots {
                    println!(
                        "{} ({}) created_at={}",
                        s.snapshot_name, s.kind, s.created_at
                    );
                }
            })
        }
        Snapshot(SnapshotCommand::Delete {
            workspace_id,
            name,
            json,
        }) => show(json, &pyro.delete_snapshot(&workspace_id, &name)?, |_| {
            println!("Deleted snapshot: {name}")
        }),
        Diff(a) => show(a.json, &pyro.diff_workspace(&a.workspace_id)?, |d| {
            let s = &d.summary;
            if !d.changed {
                println!("No workspace changes.");
                return;
            }
            println!(
                "[workspace-diff] workspace_id={} total={} added={} modified={} deleted={} type_changed={} text_patched={} non_text={}",
                d.workspace_id, s.total, s.added, s.modified, s.deleted, s.type_changed, s.text_patched, s.non_text
            );
            for e in d.entries.iter().filter(|e| e.text_patch.is_none()) {
                let status = serde_json::to_value(e.status).unwrap();
                println!("{} {}", status.as_str().unwrap_or(""), e.path);
            }
            print!("{}", d.patch);
        }),
        Patch(PatchCommand::Apply {
            workspace_id,
            patch,
            patch_file,
            json,
        }) => {
            let text = match (patch, patch_file) {
                (Some(t), _) => t,
                (None, Some(f)) => read_utf8(&f, "patch file")?,
                (None, None) => bail!("--patch or --patch-file is required"),
            };
            show(
                json,
                &pyro.apply_workspace_patch(&workspace_id, &text)?,
                |r| {
                    let s = &r.summary;
                    println!(
                    "[workspace-patch] workspace_id={} total={} added={} modified={} deleted={}",
                    r.workspace_id, s.total, s.added, s.modified, s.deleted
                );
                },
            )
        }
        Disk(DiskCommand::Export {
            workspace_id,
            output,
            force,
            json,
        }) => show(
            json,
            &pyro.export_workspace_disk(&workspace_id, &output, force)?,
            |r| {
                println!(
                "[workspace-disk-export] workspace_id={} output_path={} disk_format={} bytes_written={}",
                r.workspace_id, r.output_path, r.disk_format, r.bytes_written
            )
            },
        ),
        Disk(DiskCommand::List {
            workspace_id,
            path,
            recursive,
            json,
        }) => show(
            json,
            &pyro.list_workspace_disk(&workspace_id, &path, recursive)?,
            |r| render::entries(&r.entries),
        ),
        Disk(DiskCommand::Read {
            workspace_id,
            path,
            max_bytes,
            content_only,
            json,
        }) => {
            let r = pyro.read_workspace_disk(&workspace_id, &path, max_bytes)?;
            if json {
                render::json(&r)?;
            } else {
                render::file_content(
                    "workspace-disk-read",
                    &r.workspace_id,
                    &r.path,
                    &r.content,
                    r.size_bytes,
                    r.truncated,
                    content_only,
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Shell(ShellCommand::Open {
            workspace_id,
            cwd,
            cols,
            rows,
            secret_env,
            id_only,
            json,
        }) => {
            let params = pyro::OpenShell {
                cwd,
                cols,
                rows,
                secret_env: parse_secret_env(&secret_env),
            };
            let s = pyro.open_shell(&workspace_id, &params)?;
            if id_only {
                println!("{}", s.shell_id);
                return Ok(ExitCode::SUCCESS);
            }
            show(json, &s, |s| shell_line("open", s))
        }
        Shell(ShellCommand::Read {
            workspace_id,
            shell_id,
            cursor,
            max_chars,
            plain,
            wait_for_idle_ms,
            json,
        }) => {
            let params = pyro::ReadShell {
                cursor,
                max_chars,
                plain,
                wait_for_idle_ms,
            };
            show(
                json,
                &pyro.read_shell(&workspace_id, &shell_id, &params)?,
                |s| {
                    print!("{}", s.output);
                    if plain && !s.output.is_empty() {
                        println!();
                    }
                    shell_line("read", s);
                },
            )
        }
        Shell(ShellCommand::Write {
            workspace_id,
            shell_id,
            input,
            no_newline,
            json,
        }) => show(
            json,
            &pyro.write_shell(&workspace_id, &shell_id, &input, !no_newline)?,
            |s| shell_line("write", s),
        ),
        Shell(ShellCommand::Signal {
            workspace_id,
            shell_id,
            signal,
            json,
        }) => show(
            json,
            &pyro.signal_shell(&workspace_id, &shell_id, &signal)?,
            |s| shell_line("signal", s),
        ),
        Shell(ShellCommand::Close {
            workspace_id,
            shell_id,
            json,
        }) => show(json, &pyro.close_shell(&workspace_id, &shell_id)?, |s| {
            shell_line("close", s)
        }),
        Service(ServiceCommand::Start(a)) => {
            let readiness = if let Some(path) = a.ready_file {
                Some(pyro::ReadinessCheck::File { path })
            } else if let Some(address) = a.ready_tcp {
                Some(pyro::ReadinessCheck::Tcp { address })
            } else if let Some(url) = a.ready_http {
                Some(pyro::ReadinessCheck::Http { url })
            } else {
                a.ready_command
                    .map(|command| pyro::ReadinessCheck::Command { command })
            };
            let params = pyro::StartService {
                command: a.command,
                cwd: a.cwd,
                readiness,
                ready_timeout_seconds: a.ready_timeout_seconds,
                ready_interval_ms: a.ready_interval_ms,
                secret_env: parse_secret_env(&a.secret_env),
                published_ports: a
                    .publish
                    .iter()
                    .map(|p| parse_publish(p))
                    .collect::<anyhow::Result<_>>()?,
            };
            let s = pyro.start_service(&a.workspace_id, &a.name, &params)?;
            show(a.json, &s, |s| service_line("start", s))?;
            Ok(if s.state == "running" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Service(ServiceCommand::List(a)) => {
            show(a.json, &pyro.list_services(&a.workspace_id)?, |l| {
                for s in &l.services {
                    if s.published_ports.is_empty() {
                        println!("{} {} {}", s.service_name, s.state, s.command);
                    } else {
                        println!("{} {} {} {}", s.service_name, s.state, ports(s), s.command);
                    }
                }
            })
        }
        Service(ServiceCommand::Status {
            workspace_id,
            name,
            json,
        }) => show(json, &pyro.status_service(&workspace_id, &name)?, |s| {
            service_line("status", s)
        }),
        Service(ServiceCommand::Logs {
            workspace_id,
            name,
            tail_lines,
            all,
            json,
        }) => show(
            json,
            &pyro.logs_service(&workspace_id, &name, (!all).then_some(tail_lines))?,
            |l| {
                print!("{}", l.stdout);
                eprint!("{}", l.stderr);
            },
        ),
        Service(ServiceCommand::Stop {
            workspace_id,
            name,
            json,
        }) => show(json, &pyro.stop_service(&workspace_id, &name)?, |s| {
            service_line("stop", s)
        }),
        Reset(a) => show(
            a.json,
            &pyro.reset_workspace(&a.workspace_id, &a.snapshot, &render::Phases::new())?,
            |r| {
                summary(&r.workspace);
                println!(
                    "Reset source: {} ({})",
                    r.workspace_reset.snapshot_name, r.workspace_reset.kind
                );
            },
        ),
    }
}
