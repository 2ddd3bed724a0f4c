//! What clients and a VM's supervisor say to each other on stream 0 of the
//! control socket. Both ends are the same build of pyro, so these types are
//! not versioned (unlike the guest protocol, whose agent may be older).

use serde::{Deserialize, Serialize};

/// Requests to the supervisor itself, on stream 0 of the control socket.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Identify; an `owner` connection's end deletes a one-shot VM. What a
    /// `passive` connection asks (status, listings) is not activity: it
    /// does not hold off the idle timeout.
    Attach {
        owner: bool,
        #[serde(default)]
        passive: bool,
    },
    Status,
    /// Stop the VM (and remove a one-shot VM); answered once it is done.
    Delete,
    /// Run a QMP command (e.g. an internal disk snapshot).
    Qmp {
        command: String,
        #[serde(default)]
        arguments: serde_json::Value,
    },
    /// Listen on the host's loopback (`host_port`, or any free port) and
    /// relay connections to `guest_port` for `service`.
    Publish {
        service: String,
        guest_port: u16,
        host_port: Option<u16>,
    },
    /// Close every port published for `service`.
    Unpublish {
        service: String,
    },
    /// Every published port.
    Ports,
    /// Save the guest beside its disk and end: cancels what clients have
    /// in flight, stops the guest, saves it (`saved::Paused`), quits QEMU;
    /// answered with `paused` just before the supervisor exits.
    Pause,
    /// Save the guest into `state` and copy its disk to each of `disks`
    /// at that instant, then let it continue (requests in flight are
    /// cancelled, as for a pause).
    Fork {
        state: std::path::PathBuf,
        disks: Vec<std::path::PathBuf>,
    },
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlResponse {
    Attached { vm_id: String, generation: u32 },
    Status(SupervisorStatus),
    Deleted,
    Qmp { result: serde_json::Value },
    Ports { ports: Vec<ServicePort> },
    Paused { state_bytes: u64 },
    Forked { resume: ResumeInfo },
    Error { message: String },
}

/// What a VM restored from a live guest's saved state needs besides the
/// state: the ports that were published, and where the stream numbering
/// stood (the agent may still answer a stream cancelled at the save; new
/// ones must not collide with it). `paused/resume.json`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResumeInfo {
    pub ports: Vec<ServicePort>,
    pub next_stream: u32,
    pub saved_at_unix_ms: u64,
    pub state_bytes: u64,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SupervisorStatus {
    pub vm_id: String,
    pub qemu_pid: i32,
    pub supervisor_pid: i32,
    pub clients: u64,
    pub streams_in_flight: usize,
    /// QEMU's own view of the VM (`running`, `paused`, ...), from QMP.
    pub run_state: String,
}

/// A host port relaying to a guest port, on behalf of a service.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortBinding {
    pub host: String,
    pub host_port: u16,
    pub guest_port: u16,
    pub protocol: String,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServicePort {
    pub service: String,
    #[serde(flatten)]
    pub binding: PortBinding,
}
