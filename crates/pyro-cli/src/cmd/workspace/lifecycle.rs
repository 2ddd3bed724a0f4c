//! `workspace create/list/update/status/logs/stop/start/pause/resume/fork/delete`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use pyro::{defaults, CreateWorkspace, Pyro, SecretInput, UpdateWorkspace};

use super::Id;
use crate::cmd::key_value;
use crate::render::{self, show};

#[derive(Args)]
pub struct CreateArgs {
    environment: String,
    #[arg(long, default_value_t = defaults::vcpu_count())]
    vcpu_count: u32,
    #[arg(long, default_value_t = defaults::mem_mib())]
    mem_mib: u32,
    /// Idle timeout: after this long without activity the workspace is
    /// paused (or stopped, per --on-idle), never deleted.
    #[arg(long, default_value_t = defaults::ttl_seconds())]
    ttl_seconds: u64,
    /// What the idle timeout does: pause (memory saved; the next call
    /// resumes it with everything running), stop, or none.
    #[arg(long, default_value_t = pyro::IdleAction::default())]
    on_idle: pyro::IdleAction,
    /// off, egress or egress+published-ports.
    #[arg(long, default_value_t = pyro::NetworkPolicy::default())]
    network_policy: pyro::NetworkPolicy,
    /// A directory, .tar, .tar.gz or .tgz to copy into /workspace.
    #[arg(long)]
    seed_path: Option<PathBuf>,
    #[arg(long)]
    name: Option<String>,
    #[arg(long = "label", value_parser = key_value)]
    labels: Vec<(String, String)>,
    /// A secret (repeatable): NAME takes the value of the environment
    /// variable NAME, NAME=@PATH reads a host file, NAME=VALUE is the value
    /// itself (visible to other users in the process list: prefer the
    /// others).
    #[arg(long = "secret", value_parser = secret)]
    secrets: Vec<SecretInput>,
    /// A secret read from a host file, NAME=PATH (repeatable).
    #[arg(long = "secret-file", value_parser = key_value)]
    secret_files: Vec<(String, String)>,
    /// Refused: workspaces always run in a guest (accepted for
    /// compatibility; only `pyro run` may fall back to the host).
    #[arg(long, hide = true)]
    allow_host_compat: bool,
    /// Print only the workspace id.
    #[arg(long, conflicts_with = "json")]
    id_only: bool,
}

#[derive(Args)]
pub struct UpdateArgs {
    workspace_id: String,
    #[arg(long, conflicts_with = "clear_name")]
    name: Option<String>,
    #[arg(long)]
    clear_name: bool,
    #[arg(long = "label", value_parser = key_value)]
    labels: Vec<(String, String)>,
    #[arg(long = "clear-label")]
    clear_labels: Vec<String>,
}

pub fn create(pyro: &Pyro, a: CreateArgs, json: bool) -> anyhow::Result<ExitCode> {
    let given = a.secrets.into_iter();
    let files = a.secret_files.into_iter().map(|(name, path)| SecretInput {
        name,
        value: None,
        file_path: Some(path.into()),
    });
    let params = CreateWorkspace {
        environment: a.environment,
        vcpu_count: a.vcpu_count,
        mem_mib: a.mem_mib,
        ttl_seconds: a.ttl_seconds,
        network_policy: a.network_policy,
        seed_path: a.seed_path,
        name: a.name,
        labels: a.labels.into_iter().collect(),
        secrets: given.chain(files).collect(),
        allow_host_compat: a.allow_host_compat,
        on_idle: a.on_idle,
    };
    let w = pyro.create_workspace(&params, &render::Phases::new())?;
    if a.id_only {
        println!("{}", w.workspace_id);
        return Ok(ExitCode::SUCCESS);
    }
    show(json, &w)
}

pub fn list(pyro: &Pyro, json: bool) -> anyhow::Result<ExitCode> {
    show(json, &pyro.list_workspaces()?)
}

pub fn update(pyro: &Pyro, a: UpdateArgs, json: bool) -> anyhow::Result<ExitCode> {
    let u = UpdateWorkspace {
        name: a.name,
        clear_name: a.clear_name,
        labels: a.labels.into_iter().collect(),
        clear_labels: a.clear_labels,
    };
    show(json, &pyro.update_workspace(&a.workspace_id, &u)?)
}

pub fn status(pyro: &Pyro, a: Id, json: bool) -> anyhow::Result<ExitCode> {
    show(json, &pyro.status_workspace(&a.workspace_id)?)
}

pub fn logs(pyro: &Pyro, a: Id, json: bool) -> anyhow::Result<ExitCode> {
    show(json, &pyro.logs_workspace(&a.workspace_id)?)
}

pub fn stop(pyro: &Pyro, a: Id, json: bool) -> anyhow::Result<ExitCode> {
    show(json, &pyro.stop_workspace(&a.workspace_id)?)
}

pub fn start(pyro: &Pyro, a: Id, json: bool) -> anyhow::Result<ExitCode> {
    let progress = render::Phases::new();
    show(json, &pyro.start_workspace(&a.workspace_id, &progress)?)
}

pub fn pause(pyro: &Pyro, a: Id, json: bool) -> anyhow::Result<ExitCode> {
    show(json, &pyro.pause_workspace(&a.workspace_id)?)
}

pub fn resume(pyro: &Pyro, a: Id, json: bool) -> anyhow::Result<ExitCode> {
    let progress = render::Phases::new();
    show(json, &pyro.resume_workspace(&a.workspace_id, &progress)?)
}

#[derive(Args)]
pub struct ForkArgs {
    workspace_id: String,
    /// How many new workspaces (1 to 16).
    #[arg(long, default_value_t = pyro::ForkWorkspace::default().count)]
    count: u32,
    /// A name for the next new workspace (repeatable, in order).
    #[arg(long = "name")]
    names: Vec<String>,
}

pub fn fork(pyro: &Pyro, a: ForkArgs, json: bool) -> anyhow::Result<ExitCode> {
    let params = pyro::ForkWorkspace {
        count: a.count,
        names: a.names,
    };
    let progress = render::Phases::new();
    show(
        json,
        &pyro.fork_workspace(&a.workspace_id, &params, &progress)?,
    )
}

pub fn delete(pyro: &Pyro, a: Id, json: bool) -> anyhow::Result<ExitCode> {
    show(json, &pyro.delete_workspace(&a.workspace_id)?)
}

/// `NAME`, `NAME=@PATH` or `NAME=VALUE`.
fn secret(s: &str) -> Result<SecretInput, String> {
    let (name, value, file_path) = match s.split_once('=') {
        None => {
            let value = std::env::var(s)
                .map_err(|_| format!("--secret {s}: the environment variable {s} is not set"))?;
            (s, Some(value), None)
        }
        Some((name, path)) if path.starts_with('@') => (name, None, Some(path[1..].into())),
        Some((name, value)) => (name, Some(value.to_string()), None),
    };
    if name.is_empty() {
        return Err(format!("{s:?} names no secret"));
    }
    Ok(SecretInput {
        name: name.into(),
        value,
        file_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_the_environment_a_file_or_the_argument() {
        // Nothing else reads this variable.
        std::env::set_var("PYRO_TEST_SECRET_ENV", "from-env");
        let s = secret("PYRO_TEST_SECRET_ENV").unwrap();
        assert_eq!(s.value.as_deref(), Some("from-env"));
        let s = secret("T=@/run/t").unwrap();
        assert_eq!((s.value, s.file_path), (None, Some("/run/t".into())));
        let s = secret("T=v=w").unwrap();
        assert_eq!(s.value.as_deref(), Some("v=w"));
        assert!(secret("PYRO_TEST_SECRET_UNSET").is_err());
        assert!(secret("=x").is_err());
    }
}
