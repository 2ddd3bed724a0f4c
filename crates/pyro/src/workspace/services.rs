//! Long-running services in a running workspace: started and probed for
//! readiness by the agent in the guest, logs kept on the guest's `/run`
//! (outside `/workspace`), stopped with SIGTERM then SIGKILL. A finished
//! service's name can be used again. Services end with their VM.
//!
//! Published ports belong to the VM's supervisor (see `supervisor::ports`);
//! they are bound before the service starts, so a taken port fails early,
//! and closed when the service is stopped or found ended.

use std::collections::BTreeMap;

use pyro_protocol::{
    Message, Readiness, ServiceSpec, ServiceState, ServiceStatus, ServiceStopReason,
};
use serde::{Deserialize, Serialize};

use crate::contract::{defaults, ms_to_s, valid_name, Command, ExecutionMode};
use crate::error::{Error, Result};
use crate::paths::Context;
use crate::vmm::client::VmClient;
use crate::vmm::control::{PortBinding, ServicePort};
use crate::workspace::files::workspace_path;
use crate::workspace::vm::connect;
use crate::workspace::{secrets, Workspace};

/// When a service counts as ready; probed in the guest.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReadinessCheck {
    /// The path (relative to the service's cwd) exists.
    File { path: String },
    /// `HOST:PORT` accepts a TCP connection.
    Tcp { address: String },
    /// An HTTP GET answers 200-399.
    Http { url: String },
    /// The shell command exits 0.
    Command { command: String },
}

impl From<ReadinessCheck> for Readiness {
    fn from(r: ReadinessCheck) -> Readiness {
        match r {
            ReadinessCheck::File { path } => Readiness::File { path },
            ReadinessCheck::Tcp { address } => Readiness::Tcp { address },
            ReadinessCheck::Http { url } => Readiness::Http { url },
            ReadinessCheck::Command { command } => Readiness::Command { command },
        }
    }
}

impl From<Readiness> for ReadinessCheck {
    fn from(r: Readiness) -> ReadinessCheck {
        match r {
            Readiness::File { path } => ReadinessCheck::File { path },
            Readiness::Tcp { address } => ReadinessCheck::Tcp { address },
            Readiness::Http { url } => ReadinessCheck::Http { url },
            Readiness::Command { command } => ReadinessCheck::Command { command },
        }
    }
}

/// A port to publish: guest port, and a host port (auto when absent).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishedPort {
    pub guest_port: u16,
    #[serde(default)]
    pub host_port: Option<u16>,
}

/// Parameters of [`Pyro::start_service`](crate::Pyro::start_service).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartService {
    pub command: Command,
    pub cwd: String,
    pub readiness: Option<ReadinessCheck>,
    pub ready_timeout_seconds: u64,
    pub ready_interval_ms: u64,
    pub secret_env: BTreeMap<String, String>,
    pub published_ports: Vec<PublishedPort>,
}

impl StartService {
    pub fn new(command: Command) -> StartService {
        StartService {
            command,
            cwd: defaults::workspace_path(),
            readiness: None,
            ready_timeout_seconds: defaults::ready_timeout_seconds(),
            ready_interval_ms: defaults::ready_interval_ms(),
            secret_env: BTreeMap::new(),
            published_ports: Vec::new(),
        }
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub workspace_id: String,
    pub service_name: String,
    /// `running`, `exited` (with `exit_code`), `stopped` or `failed` (with
    /// `stop_reason`: `process_exited_before_ready` or `readiness_timeout`).
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub state: ServiceStatus,
    pub command: String,
    pub cwd: String,
    pub pid: Option<u32>,
    pub exit_code: Option<i32>,
    pub started_at: f64,
    pub ready_at: Option<f64>,
    pub ended_at: Option<f64>,
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub stop_reason: Option<ServiceStopReason>,
    pub readiness: Option<ReadinessCheck>,
    /// Host ports (on 127.0.0.1) relaying to the service's guest ports,
    /// while it runs.
    pub published_ports: Vec<PortBinding>,
    pub execution_mode: ExecutionMode,
}

fn info(id: &str, s: ServiceState, hide: &[String], ports: &[ServicePort]) -> ServiceInfo {
    let published_ports = ports
        .iter()
        .filter(|p| p.service == s.name)
        .map(|p| p.binding.clone())
        .collect();
    ServiceInfo {
        workspace_id: id.into(),
        service_name: s.name,
        state: s.state,
        command: secrets::redact(&s.command, hide),
        cwd: s.cwd,
        pid: s.pid,
        exit_code: s.exit_code,
        started_at: ms_to_s(s.started_at_unix_ms),
        ready_at: s.ready_at_unix_ms.map(ms_to_s),
        ended_at: s.ended_at_unix_ms.map(ms_to_s),
        stop_reason: s.stop_reason,
        readiness: s.readiness.map(Into::into),
        published_ports,
        execution_mode: ExecutionMode::GuestVirtioSerial,
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceList {
    pub workspace_id: String,
    pub count: usize,
    pub running_count: usize,
    pub services: Vec<ServiceInfo>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceLogs {
    pub workspace_id: String,
    pub service_name: String,
    pub tail_lines: Option<u64>,
    pub stdout: String,
    pub stderr: String,
    /// Older output exists that was not returned.
    pub truncated: bool,
}

fn call(c: &mut VmClient, m: Message) -> Result<Message> {
    c.request(&m, None, &mut |_| {})
}

/// The services' published ports, after closing those of services that no
/// longer run.
fn live_ports(c: &mut VmClient, services: &[&ServiceState]) -> Result<Vec<ServicePort>> {
    let mut ports = c.ports()?;
    for s in services {
        if s.state != ServiceStatus::Running && ports.iter().any(|p| p.service == s.name) {
            c.unpublish(&s.name)?;
            ports.retain(|p| p.service != s.name);
        }
    }
    Ok(ports)
}

fn one(c: &mut VmClient, id: &str, ws: &Workspace, reply: Message) -> Result<ServiceInfo> {
    match reply {
        Message::Service(s) => {
            let ports = live_ports(c, &[&s])?;
            Ok(info(id, s, &ws.redactions()?, &ports))
        }
        other => Err(Error::unexpected(&other)),
    }
}

pub fn start(ctx: &Context, id: &str, name: &str, p: &StartService) -> Result<ServiceInfo> {
    valid_name("service name", name)?;
    p.command.validate()?;
    if p.ready_timeout_seconds == 0 || p.ready_interval_ms == 0 {
        return Err(Error::invalid(
            "ready_timeout_seconds and ready_interval_ms must be at least 1",
        ));
    }
    let ws = Workspace::locate(&ctx.paths, id)?;
    let record = ws.read()?;
    if !p.published_ports.is_empty() {
        record.network_policy.check_publishing()?;
    }
    for (i, port) in p.published_ports.iter().enumerate() {
        if port.guest_port == 0 || port.host_port == Some(0) {
            return Err(Error::invalid(
                "published ports must be between 1 and 65535",
            ));
        }
        if p.published_ports[..i]
            .iter()
            .any(|q| q.host_port.is_some() && q.host_port == port.host_port)
        {
            return Err(Error::invalid(format!(
                "host port {} is published twice",
                port.host_port.unwrap_or_default()
            )));
        }
    }
    let cwd = workspace_path(&p.cwd)?;
    let env = secrets::environment(&ws.secret_values(&record)?, &p.secret_env)?;
    // The agent answers once the service is ready or has failed.
    let mut c = connect(ctx, &ws)?.with_deadline(
        std::time::Duration::from_secs(p.ready_timeout_seconds) + crate::vmm::client::EXEC_GRACE,
    );
    // Ports left by an ended service of the same name are released here;
    // the new ones are bound before the service starts, so a host port in
    // use fails the call with nothing started. A running service of that
    // name keeps its ports: the agent refuses the start.
    let publish = !p.published_ports.is_empty()
        && !matches!(
            call(&mut c, Message::ServiceStatus { name: name.into() }),
            Ok(Message::Service(s)) if s.state == ServiceStatus::Running
        );
    if publish {
        c.unpublish(name)?;
        for port in &p.published_ports {
            if let Err(e) = c.publish(name, port.guest_port, port.host_port) {
                let _ = c.unpublish(name);
                return Err(e);
            }
        }
    }
    let reply = call(
        &mut c,
        Message::ServiceStart(ServiceSpec {
            name: name.into(),
            command: p.command.clone().into(),
            cwd,
            env,
            readiness: p.readiness.clone().map(Into::into),
            ready_timeout_ms: p.ready_timeout_seconds * 1000,
            ready_interval_ms: p.ready_interval_ms,
        }),
    );
    match reply {
        Ok(reply) => one(&mut c, id, &ws, reply),
        Err(e) => {
            // Not started: the ports bound for this call go.
            if publish {
                let _ = c.unpublish(name);
            }
            Err(e)
        }
    }
}

pub fn status(ctx: &Context, id: &str, name: &str) -> Result<ServiceInfo> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    let mut c = connect(ctx, &ws)?;
    let reply = call(&mut c, Message::ServiceStatus { name: name.into() })?;
    one(&mut c, id, &ws, reply)
}

pub fn stop(ctx: &Context, id: &str, name: &str) -> Result<ServiceInfo> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    let mut c = connect(ctx, &ws)?;
    let reply = call(&mut c, Message::ServiceStop { name: name.into() })?;
    one(&mut c, id, &ws, reply)
}

pub fn list(ctx: &Context, id: &str) -> Result<ServiceList> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    let mut c = connect(ctx, &ws)?;
    match call(&mut c, Message::ServiceList)? {
        Message::Services { services } => {
            let hide = ws.redactions()?;
            let ports = live_ports(&mut c, &services.iter().collect::<Vec<_>>())?;
            let services: Vec<ServiceInfo> = services
                .into_iter()
                .map(|s| info(id, s, &hide, &ports))
                .collect();
            Ok(ServiceList {
                workspace_id: id.into(),
                count: services.len(),
                running_count: services
                    .iter()
                    .filter(|s| s.state == ServiceStatus::Running)
                    .count(),
                services,
            })
        }
        other => Err(Error::unexpected(&other)),
    }
}

pub fn logs(ctx: &Context, id: &str, name: &str, tail_lines: Option<u64>) -> Result<ServiceLogs> {
    if tail_lines == Some(0) {
        return Err(Error::invalid("tail_lines must be at least 1"));
    }
    let ws = Workspace::locate(&ctx.paths, id)?;
    // Reading logs never touches published ports.
    match call(
        &mut connect(ctx, &ws)?,
        Message::ServiceLogs {
            name: name.into(),
            tail_lines,
        },
    )? {
        Message::ServiceLog {
            stdout,
            stderr,
            truncated,
        } => {
            let hide = ws.redactions()?;
            Ok(ServiceLogs {
                workspace_id: id.into(),
                service_name: name.into(),
                tail_lines,
                stdout: secrets::redact(&stdout, &hide),
                stderr: secrets::redact(&stderr, &hide),
                truncated,
            })
        }
        other => Err(Error::unexpected(&other)),
    }
}
