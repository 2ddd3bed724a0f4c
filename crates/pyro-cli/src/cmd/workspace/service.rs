//! `workspace service ...`: long-running services with readiness checks.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use pyro::{defaults, Pyro, ServiceInfo, ServiceStatus};

use crate::cmd::{command, secret_env};
use crate::human::service_line;
use crate::render::{self, show};

#[derive(Subcommand)]
pub enum ServiceCommand {
    /// Start a service and wait until it is ready.
    Start(StartArgs),
    List {
        workspace_id: String,
    },
    Status {
        workspace_id: String,
        name: String,
    },
    Logs {
        workspace_id: String,
        name: String,
        #[arg(long, default_value_t = defaults::tail_lines(), conflicts_with = "all")]
        tail_lines: u64,
        /// Everything kept, not just the tail.
        #[arg(long)]
        all: bool,
    },
    Stop {
        workspace_id: String,
        name: String,
    },
}

#[derive(Args)]
pub struct StartArgs {
    workspace_id: String,
    name: String,
    #[arg(long, default_value_t = defaults::workspace_path())]
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
    #[arg(long, default_value_t = defaults::ready_timeout_seconds())]
    ready_timeout_seconds: u64,
    #[arg(long, default_value_t = defaults::ready_interval_ms())]
    ready_interval_ms: u64,
    /// Pass a secret as an environment variable: SECRET or SECRET=ENV (repeatable).
    #[arg(long = "secret-env")]
    secret_env: Vec<String>,
    /// Publish a guest port on host 127.0.0.1: GUEST or HOST:GUEST (repeatable).
    #[arg(long = "publish", value_parser = parse_publish)]
    publish: Vec<pyro::PublishedPort>,
    /// One argument: a shell command string; several: an argv.
    #[arg(last = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

fn parse_publish(s: &str) -> Result<pyro::PublishedPort, String> {
    let port = |p: &str| p.parse::<u16>().map_err(|_| format!("bad port in {s:?}"));
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

/// The service as JSON, or its line.
fn one(json: bool, verb: &str, s: &ServiceInfo) -> anyhow::Result<ExitCode> {
    if json {
        render::json(s)?;
    } else {
        service_line(verb, s);
    }
    Ok(ExitCode::SUCCESS)
}

fn start(pyro: &Pyro, a: StartArgs, json: bool) -> anyhow::Result<ExitCode> {
    use pyro::ReadinessCheck::*;
    let readiness = [
        a.ready_file.map(|path| File { path }),
        a.ready_tcp.map(|address| Tcp { address }),
        a.ready_http.map(|url| Http { url }),
        a.ready_command.map(|command| Command { command }),
    ]
    .into_iter()
    .flatten()
    .next();
    let params = pyro::StartService {
        command: command(a.command),
        cwd: a.cwd,
        readiness,
        ready_timeout_seconds: a.ready_timeout_seconds,
        ready_interval_ms: a.ready_interval_ms,
        secret_env: secret_env(&a.secret_env),
        published_ports: a.publish,
    };
    let s = pyro.start_service(&a.workspace_id, &a.name, &params)?;
    one(json, "start", &s)?;
    Ok(if s.state == ServiceStatus::Running {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn dispatch(pyro: &Pyro, c: ServiceCommand, json: bool) -> anyhow::Result<ExitCode> {
    match c {
        ServiceCommand::Start(a) => start(pyro, a, json),
        ServiceCommand::List { workspace_id } => show(json, &pyro.list_services(&workspace_id)?),
        ServiceCommand::Status { workspace_id, name } => {
            one(json, "status", &pyro.status_service(&workspace_id, &name)?)
        }
        ServiceCommand::Logs {
            workspace_id,
            name,
            tail_lines,
            all,
        } => show(
            json,
            &pyro.logs_service(&workspace_id, &name, (!all).then_some(tail_lines))?,
        ),
        ServiceCommand::Stop { workspace_id, name } => {
            one(json, "stop", &pyro.stop_service(&workspace_id, &name)?)
        }
    }
}
