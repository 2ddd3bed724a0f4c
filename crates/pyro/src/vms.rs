//! VMs with a lifecycle of their own (`create`, `start`, `exec`, `stop`,
//! `delete`), for callers that manage a bare VM rather than a workspace.
//!
//! They live under `$PYRO_HOME/vms/<id>/` like one-shot runs, but are not
//! one-shot: any process can drive them, and they outlive the process that
//! created them until they are deleted or expire. The TTL is absolute from
//! creation: the supervisor stops an expired VM, and the next access (or
//! [`reap_expired`]) deletes it.

use std::fs;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::contract::{
    defaults, host_compat_refused, ms_to_s, validate_resources, validate_timeout, Command,
    ExecutionMode,
};
use crate::error::{Entity, Error, Result};
use crate::paths::Context;
use crate::progress::Progress;
use crate::run::{exec_once, Cleanup, CleanupReason, RunResult};
use crate::vmm::client::{Capture, OutputSink, VmClient};
use crate::vmm::dir::{self, ExitReason, Shape, VmDir, VmRecord};
use crate::vmm::qemu::net;
use crate::vmm::{admission, launch, templates};
use crate::{assets, environments, host};

/// Parameters of [`Pyro::create_vm`](crate::Pyro::create_vm); defaults
/// match the MCP tool's.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateVm {
    pub environment: String,
    pub vcpu_count: u32,
    pub mem_mib: u32,
    pub ttl_seconds: u64,
    pub network: bool,
    /// Accepted for compatibility and refused when set: a lifecycle VM
    /// always runs in a guest (only one-shot runs may fall back to the
    /// host).
    pub allow_host_compat: bool,
}

impl CreateVm {
    pub fn new(environment: impl Into<String>) -> CreateVm {
        CreateVm {
            environment: environment.into(),
            vcpu_count: defaults::vcpu_count(),
            mem_mib: defaults::mem_mib(),
            ttl_seconds: defaults::ttl_seconds(),
            network: false,
            allow_host_compat: false,
        }
    }
}

/// Where a lifecycle VM is in its life.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Never started.
    Created,
    Started,
    Stopped,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Created => "created",
            VmState::Started => "started",
            VmState::Stopped => "stopped",
        }
    }
}

/// A VM as status and the lifecycle calls show it.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmInfo {
    pub vm_id: String,
    pub environment: String,
    /// `created` (never booted), `started`, or `stopped`.
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub state: VmState,
    /// Why a stopped VM stopped: `stopped` (asked), `ttl_expired`, ...
    pub stop_reason: Option<String>,
    pub vcpu_count: u32,
    pub mem_mib: u32,
    pub ttl_seconds: u64,
    pub network_enabled: bool,
    pub created_at: f64,
    /// When the VM is stopped and becomes deletable (creation + TTL).
    pub expires_at: f64,
    pub execution_mode: ExecutionMode,
}

/// The guest's network as `vm_network_info` reports it.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmNetworkInfo {
    pub vm_id: String,
    pub network_enabled: bool,
    /// `passt` (user-mode NAT, no TAP device or host privileges), or
    /// `none`.
    pub backend: String,
    /// Always null: there is no TAP device on the host.
    pub tap_name: Option<String>,
    pub interface: Option<String>,
    pub guest_ip: Option<String>,
    pub gateway_ip: Option<String>,
    pub subnet_cidr: Option<String>,
    pub mac_address: Option<String>,
    pub dns_servers: Vec<String>,
    /// Whether the guest should reach outside addresses (the host's own
    /// loopback stays unreachable either way).
    pub outbound_connectivity_expected: bool,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmDeleted {
    pub vm_id: String,
    pub deleted: bool,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reaped {
    pub deleted_vm_ids: Vec<String>,
    pub count: usize,
}

fn expired(r: &VmRecord) -> bool {
    host::now_unix_ms() >= r.created_at_unix_ms + r.ttl_seconds * 1000
}

/// The state shown, and why a stopped VM stopped (`stopped` when asked,
/// `ttl_expired`, `vm_exited: ...`, or `crashed` when its supervisor died
/// without a word).
fn observe(dir: &VmDir) -> (VmState, Option<String>) {
    if dir.live_supervisor().is_some() {
        (VmState::Started, None)
    } else if let Some(exit) = dir.read_exit() {
        let reason = match exit.reason {
            ExitReason::Stopped | ExitReason::TtlExpired => exit.reason.as_str().to_string(),
            _ => format!("vm_exited: {exit}"),
        };
        (VmState::Stopped, Some(reason))
    } else if dir.supervisor_pid().exists() {
        (VmState::Stopped, Some("crashed".to_string()))
    } else {
        (VmState::Created, None)
    }
}

fn info(dir: &VmDir, r: &VmRecord) -> VmInfo {
    let (state, stop_reason) = observe(dir);
    VmInfo {
        vm_id: r.vm_id.clone(),
        environment: r.environment.clone(),
        state,
        stop_reason,
        vcpu_count: r.spec.vcpu_count,
        mem_mib: r.spec.mem_mib,
        ttl_seconds: r.ttl_seconds,
        network_enabled: r.spec.network_socket.is_some(),
        created_at: ms_to_s(r.created_at_unix_ms),
        expires_at: ms_to_s(r.created_at_unix_ms + r.ttl_seconds * 1000),
        execution_mode: ExecutionMode::GuestVirtioSerial,
    }
}

/// The VM `id`, deleting it first if it expired.
fn locate(ctx: &Context, id: &str) -> Result<(VmDir, VmRecord)> {
    let unknown = || Error::not_found(Entity::Vm, id);
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(unknown());
    }
    let dir = VmDir::new(&ctx.paths, id);
    let record = dir.read_record().map_err(|_| unknown())?;
    // One-shot runs live here too; they belong to their `run`.
    if record.ephemeral {
        return Err(unknown());
    }
    if expired(&record) {
        launch::destroy(&dir);
        return Err(Error::conflict(format!(
            "vm {id:?} expired and was automatically deleted"
        )));
    }
    Ok((dir, record))
}

pub fn create(ctx: &Context, p: &CreateVm, progress: &dyn Progress) -> Result<VmInfo> {
    if p.allow_host_compat {
        return Err(host_compat_refused("a VM"));
    }
    validate_resources(p.vcpu_count, p.mem_mib, p.ttl_seconds)?;
    environments::canonical_name(&ctx.paths, &p.environment)?;
    reap_expired(ctx);
    let assets = assets::ensure(&ctx.paths, progress)?;
    let env = environments::ensure_named(&ctx.paths, &p.environment, progress)?;
    let id = host::random_id(6);
    let dir = VmDir::new(&ctx.paths, &id);
    let shape = Shape {
        vcpu_count: p.vcpu_count,
        mem_mib: p.mem_mib,
    };
    // The disk is kept across stop and start.
    let spec = dir.spec(&assets, shape, dir.disk(), true, p.network);
    let mut record = dir::new_record(&id, &env.name, false, p.ttl_seconds, spec);
    record.idle_timeout = false;
    let created = host::private_dir(&dir.path)
        .and_then(|()| templates::first_disk(&ctx.paths, &record.spec, &env, progress))
        .and_then(|template| {
            // The first start restores the template; later ones boot.
            record.spec.snapshot = template.map(|t| t.state);
            dir.write_record(&record)
        });
    if let Err(e) = created {
        launch::destroy(&dir);
        return Err(e);
    }
    Ok(info(&dir, &record))
}

pub fn start(ctx: &Context, id: &str, progress: &dyn Progress) -> Result<VmInfo> {
    let (dir, record) = locate(ctx, id)?;
    if dir.live_supervisor().is_some() {
        return Ok(info(&dir, &record));
    }
    // The kernel cache may have been pruned since the VM was created.
    assets::ensure(&ctx.paths, progress)?;
    let _admission = admission::admit(ctx, record.spec.mem_mib)?;
    progress.phase("vm", &format!("phase=start vm_id={id}"));
    let _ = fs::remove_file(dir.supervisor_pid());
    dir.write_record(&record)?;
    launch::start_supervisor(&ctx.program, &dir)?;
    if record.spec.snapshot.is_some() {
        // From now on the disk has moved on from the saved state.
        let mut record = record.clone();
        record.spec.snapshot = None;
        dir.write_record(&record)?;
    }
    Ok(info(&dir, &record))
}

pub fn status(ctx: &Context, id: &str) -> Result<VmInfo> {
    let (dir, record) = locate(ctx, id)?;
    Ok(info(&dir, &record))
}

/// Runs one command (starting the VM if needed), then deletes the VM.
pub fn exec(
    ctx: &Context,
    id: &str,
    command: &Command,
    timeout_seconds: u64,
    progress: &dyn Progress,
    sink: &mut dyn OutputSink,
) -> Result<RunResult> {
    command.validate()?;
    validate_timeout(timeout_seconds)?;
    let started = Instant::now();
    start(ctx, id, progress)?;
    let (dir, record) = locate(ctx, id)?;
    let mut client = VmClient::connect(&dir)?;
    client.attach(false)?;
    progress.phase("vm", &format!("phase=execute vm_id={id}"));
    let mut capture = Capture::new(sink);
    let outcome = exec_once(&mut client, command, None, timeout_seconds, &mut capture);
    drop(client);
    launch::destroy(&dir);
    let cleanup = Cleanup {
        deleted: true,
        reason: CleanupReason::PostExecCleanup,
    };
    Ok(RunResult::guest(
        &record.environment,
        id,
        outcome?,
        capture,
        started,
        Default::default(),
        cleanup,
    ))
}

/// Stops the VM gracefully; its disk is kept for the next start.
pub fn stop(ctx: &Context, id: &str) -> Result<VmInfo> {
    let (dir, record) = locate(ctx, id)?;
    launch::halt(&dir)?;
    Ok(info(&dir, &record))
}

pub fn delete(ctx: &Context, id: &str) -> Result<VmDeleted> {
    let (dir, _) = locate(ctx, id)?;
    launch::destroy(&dir);
    Ok(VmDeleted {
        vm_id: id.into(),
        deleted: true,
    })
}

pub fn network_info(ctx: &Context, id: &str) -> Result<VmNetworkInfo> {
    let (_, record) = locate(ctx, id)?;
    let on = record.spec.network_socket.is_some();
    let some = |s: &str| on.then(|| s.to_string());
    Ok(VmNetworkInfo {
        vm_id: id.into(),
        network_enabled: on,
        backend: if on { "passt" } else { "none" }.into(),
        tap_name: None,
        interface: some(net::INTERFACE),
        guest_ip: some(net::ADDRESS),
        gateway_ip: some(net::GATEWAY),
        subnet_cidr: some(net::SUBNET),
        mac_address: some(net::MAC),
        dns_servers: some(net::DNS).into_iter().collect(),
        outbound_connectivity_expected: on,
    })
}

/// Deletes every lifecycle VM past its TTL.
pub fn reap_expired(ctx: &Context) -> Reaped {
    let mut deleted_vm_ids = Vec::new();
    if let Ok(entries) = fs::read_dir(ctx.paths.vms()) {
        for entry in entries.flatten() {
            let dir = VmDir::from_path(&entry.path());
            match dir.read_record() {
                Ok(r) if !r.ephemeral && expired(&r) => {
                    launch::destroy(&dir);
                    deleted_vm_ids.push(r.vm_id);
                }
                _ => {}
            }
        }
    }
    deleted_vm_ids.sort();
    Reaped {
        count: deleted_vm_ids.len(),
        deleted_vm_ids,
    }
}
