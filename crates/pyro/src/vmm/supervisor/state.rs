//! What the supervisor's threads share: the VM, its agent connection, the
//! clients and their routes.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use pyro_protocol::{Frame, Kind};

use super::ports;
use crate::vmm::channel::stream;
use crate::vmm::control::ControlResponse;
use crate::vmm::dir::{VmDir, VmRecord};
use crate::vmm::qmp::Qmp;

/// How long a write to a client may block before the client is dropped: a
/// client that stops reading must not stall the agent's reader, which
/// serves every client of the VM.
pub(super) const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a write to the agent may block (a guest that stops reading its
/// port) before it fails.
pub(super) const AGENT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) struct Client {
    pub(super) writer: Mutex<UnixStream>,
    /// A write failed or timed out: the client is gone for us.
    pub(super) dead: AtomicBool,
}

impl Client {
    pub(super) fn new(stream: &UnixStream) -> Client {
        let writer = stream.try_clone().expect("clone client socket");
        let _ = writer.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT));
        Client {
            writer: Mutex::new(writer),
            dead: AtomicBool::new(false),
        }
    }

    pub(super) fn send(&self, frame: &Frame) {
        if self.dead.load(Ordering::SeqCst) {
            return;
        }
        let mut writer = self.writer.lock().unwrap();
        if writer.write_all(&frame.encode()).is_err() {
            self.dead.store(true, Ordering::SeqCst);
            let _ = writer.shutdown(std::net::Shutdown::Both);
        }
    }
}

pub(super) struct Route {
    pub(super) client: Arc<Client>,
    pub(super) client_stream: u32,
    /// Opened by a passive client (a published port's connection): does
    /// not keep the VM from being idle.
    pub(super) passive: bool,
}

pub(super) struct Supervisor {
    pub(super) dir: VmDir,
    pub(super) record: VmRecord,
    pub(super) generation: u32,
    pub(super) agent: Mutex<UnixStream>,
    pub(super) routes: Mutex<HashMap<u32, Route>>,
    pub(super) next_stream: AtomicU32,
    pub(super) clients: AtomicU64,
    pub(super) qemu_pid: i32,
    pub(super) qemu_exited: Mutex<bool>,
    pub(super) qemu_exited_cv: Condvar,
    pub(super) tearing_down: AtomicBool,
    /// When a client last asked anything (ms since the Unix epoch).
    pub(super) last_activity: AtomicU64,
    pub(super) qmp: Mutex<Option<Qmp>>,
    pub(super) ports: ports::Ports,
    /// No new guest requests are routed (a pause or fork is saving the
    /// guest). Set and read under `routes`' lock.
    pub(super) quiesced: AtomicBool,
    /// The jailed QEMU's uid and gid, which must reach a migration socket.
    pub(super) qemu_ids: Option<(u32, u32)>,
}

impl Supervisor {
    /// Waits up to `limit` for QEMU to have exited; whether it has.
    pub(super) fn wait_qemu_exit(&self, limit: Duration) -> bool {
        let exited = self.qemu_exited.lock().unwrap();
        let (exited, _) = self
            .qemu_exited_cv
            .wait_timeout_while(exited, limit, |e| !*e)
            .unwrap();
        *exited
    }

    /// Guest requests of active clients are in flight.
    pub(super) fn busy(&self) -> bool {
        self.routes.lock().unwrap().values().any(|r| !r.passive)
    }

    pub(super) fn qmp(
        &self,
        command: &str,
        arguments: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let mut slot = self.qmp.lock().unwrap();
        if slot.is_none() {
            *slot = Some(
                Qmp::connect(
                    &self.dir.qmp_socket(),
                    self.qemu_pid,
                    Duration::from_secs(30),
                )
                .map_err(|e| e.to_string())?,
            );
        }
        let result = slot.as_mut().unwrap().execute(command, arguments);
        if result.is_err() {
            *slot = None;
        }
        result.map_err(|e| e.to_string())
    }
}

pub(super) fn control_frame(r: &ControlResponse) -> Frame {
    Frame {
        stream: stream::CONTROL,
        kind: Kind::Message,
        body: serde_json::to_vec(r).expect("control replies serialize"),
    }
}
