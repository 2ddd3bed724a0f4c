//! VMs with a lifecycle of their own (`create`, `start`, `exec`, `stop`,
//! `delete`), for callers that manage a bare VM rather than a workspace.
//!
//! They live under `$PYRO_HOME/vms/<id>/` like one-shot runs, but are not
//! one-shot: any process can drive them, and they outlive the process that
//! created them until they are deleted or expire. The TTL is absolute from
//! creation: the supervisor stops an expired VM, and the next access (or
//! [`reap_expired`]) deletes it.

use std::collections::BTreeMap;
use std::fs;
use std::time::Instant;

use pyro_protocol::ExecRequest;
use serde::{Deserialize, Serialize};

use crate::client::{Capture, OutputSink, VmClient};
use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;
use crate::qemu::{self, net};
use crate::run::{command_from_args, validate_resources, Cleanup, ExecutionMode, RunResult};
use crate::vm::{self, VmDir, VmRecord};
use crate::{assets, environments, host, templates, Pyro};

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
}

impl CreateVm {
    pub fn new(environment: impl Into<String>) -> CreateVm {
        CreateVm {
            environment: environment.into(),
            vcpu_count: 1,
            mem_mib: 1024,
            ttl_seconds: 600,
            network: false,
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
    pub state: String,
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

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn expired(r: &VmRecord) -> bool {
    host::now_unix_ms() >= r.created_at_unix_ms + r.ttl_seconds * 1000
}

fn info(dir: &VmDir, r: &VmRecord) -> VmInfo {
    let (state, stop_reason) = if dir.live_supervisor().is_some() {
        ("started", None)
    } else if let Some(exit) = dir.read_exit() {
        let reason = match exit.reason.as_str() {
            "stopped" | "ttl_expired" => exit.reason,
            other => format!("vm_exited: {other}"),
        };
        ("stopped", Some(reason))
    } else if dir.supervisor_pid().exists() {
        ("stopped", Some("crashed".to_string()))
    } else {
        ("created", None)
    };
    VmInfo {
        vm_id: r.vm_id.clone(),
        environment: r.environment.clone(),
        state: state.into(),
        stop_reason,
        vcpu_count: r.spec.vcpu_count,
        mem_mib: r.spec.mem_mib,
        ttl_seconds: r.ttl_seconds,
        network_enabled: r.spec.network_socket.is_some(),
        created_at: secs(r.created_at_unix_ms),
        expires_at: secs(r.created_at_unix_ms + r.ttl_seconds * 1000),
        execution_mode: ExecutionMode::GuestVirtioSerial,
    }
}

/// The VM `id`, deleting it first if it expired.
fn locate(pyro: &Pyro, id: &str) -> Result<(VmDir, VmRecord)> {
    let unknown = || Error::InvalidArgument(format!("unknown vm {id:?}"));
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(unknown());
    }
    let dir = VmDir::new(&pyro.paths, id);
    let record = dir.read_record().map_err(|_| unknown())?;
    // One-shot runs live here too; they belong to their `run`.
    if record.ephemeral {
        return Err(unknown());
    }
    if expired(&record) {
        vm::destroy(&dir);
        return Err(Error::InvalidArgument(format!(
            "vm {id:?} expired and was automatically deleted"
        )));
    }
    Ok((dir, record))
}

pub fn create(pyro: &Pyro, p: &CreateVm, progress: &dyn Progress) -> Result<VmInfo> {
    validate_resources(p.vcpu_count, p.mem_mib, p.ttl_seconds)?;
    let entry = environments::lookup(&p.environment)?;
    reap_expired(pyro);
    let assets = assets::ensure(&pyro.paths, progress)?;
    let env = environments::ensure(&pyro.paths, entry, false, progress)?;
    let id = host::random_id(6);
    let dir = VmDir::new(&pyro.paths, &id);
    let spec = qemu::VmSpec {
        accel: host::choose_accel().accel,
        vcpu_count: p.vcpu_count,
        mem_mib: p.mem_mib,
        kernel: assets.kernel,
        initramfs: assets.initramfs,
        disk: dir.disk(),
        // Kept across stop and start.
        disk_cache_unsafe: false,
        tsc_khz: host::tsc_khz(),
        agent_socket: dir.agent_socket(),
        qmp_socket: dir.qmp_socket(),
        console_log: dir.console_log(),
        network_socket: p.network.then(|| host::network_socket(&id)),
        snapshot: None,
    };
    let mut record = vm::new_record(&id, entry.name, false, p.ttl_seconds, spec);
    record.idle_timeout = false;
    let created = fs::create_dir_all(&dir.path)
        .ctx(|| format!("create {}", dir.path.display()))
        .and_then(|()| templates::first_disk(&pyro.paths, &record.spec, &env, progress))
        .and_then(|template| {
            // The first start restores the template; later ones boot.
            record.spec.snapshot = template.map(|t| t.state);
            vm::write_record(&dir, &record)
        });
    if let Err(e) = created {
        vm::destroy(&dir);
        return Err(e);
    }
    Ok(info(&dir, &record))
}

pub fn start(pyro: &Pyro, id: &str, progress: &dyn Progress) -> Result<VmInfo> {
    let (dir, record) = locate(pyro, id)?;
    if dir.live_supervisor().is_some() {
        return Ok(info(&dir, &record));
    }
    // The kernel cache may have been pruned since the VM was created.
    assets::ensure(&pyro.paths, progress)?;
    let _capacity = crate::workspace::admit(pyro)?;
    progress.phase("vm", &format!("phase=start vm_id={id}"));
    let _ = fs::remove_file(dir.supervisor_pid());
    vm::write_record(&dir, &record)?;
    vm::start_supervisor(&pyro.program, &dir)?;
    if record.spec.snapshot.is_some() {
        // From now on the disk has moved on from the saved state.
        let mut record = record.clone();
        record.spec.snapshot = None;
        vm::write_record(&dir, &record)?;
    }
    Ok(info(&dir, &record))
}

pub fn status(pyro: &Pyro, id: &str) -> Result<VmInfo> {
    let (dir, record) = locate(pyro, id)?;
    Ok(info(&dir, &record))
}

/// Runs one command (starting the VM if needed), then deletes the VM.
pub fn exec(
    pyro: &Pyro,
    id: &str,
    command: &[String],
    timeout_seconds: u64,
    progress: &dyn Progress,
    sink: &mut dyn OutputSink,
) -> Result<RunResult> {
    let command = command_from_args(command)?;
    if timeout_seconds == 0 {
        return Err(Error::InvalidArgument(
            "timeout_seconds must be at least 1".into(),
        ));
    }
    let started = Instant::now();
    start(pyro, id, progress)?;
    let (dir, record) = locate(pyro, id)?;
    let mut client = VmClient::connect(&dir)?;
    client.attach(false)?;
    progress.phase("vm", &format!("phase=execute vm_id={id}"));
    let mut capture = Capture::new(sink);
    let outcome = client.exec(
        ExecRequest {
            command,
            env: BTreeMap::new(),
            cwd: Some(pyro_protocol::WORKSPACE_ROOT.into()),
            timeout_ms: Some(timeout_seconds * 1000),
            sync_after: false,
        },
        &mut capture,
    );
    drop(client);
    vm::destroy(&dir);
    let status = outcome?;
    Ok(RunResult {
        environment: record.environment,
        vm_id: id.into(),
        execution_mode: ExecutionMode::GuestVirtioSerial,
        exit_code: status.exit_code,
        signal: status.signal,
        timed_out: status.timed_out,
        duration_ms: started.elapsed().as_millis() as u64,
        timings: Default::default(),
        stdout: String::from_utf8_lossy(&capture.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&capture.stderr).into_owned(),
        cleanup: Cleanup {
            deleted: true,
            reason: "post_exec_cleanup".into(),
        },
    })
}

/// Stops the VM gracefully; its disk is kept for the next start.
pub fn stop(pyro: &Pyro, id: &str) -> Result<VmInfo> {
    let (dir, record) = locate(pyro, id)?;
    vm::halt(&dir)?;
    Ok(info(&dir, &record))
}

pub fn delete(pyro: &Pyro, id: &str) -> Result<VmDeleted> {
    let (dir, _) = locate(pyro, id)?;
    vm::destroy(&dir);
    Ok(VmDeleted {
        vm_id: id.into(),
        deleted: true,
    })
}

pub fn network_info(pyro: &Pyro, id: &str) -> Result<VmNetworkInfo> {
    let (_, record) = locate(pyro, id)?;
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
pub fn reap_expired(pyro: &Pyro) -> Reaped {
    let mut deleted_vm_ids = Vec::new();
    if let Ok(entries) = fs::read_dir(pyro.paths.vms()) {
        for entry in entries.flatten() {
            let dir = VmDir::from_path(&entry.path());
            match dir.read_record() {
                Ok(r) if !r.ephemeral && expired(&r) => {
                    vm::destroy(&dir);
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
