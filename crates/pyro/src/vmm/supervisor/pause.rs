//! Saving the running guest: a pause (state beside the disk, then QEMU
//! ends) and a fork (state and disk copies at one instant, then the guest
//! continues).
//!
//! Both first quiesce the agent's port: no new requests are routed, the
//! ones in flight are cancelled and answered, and a ping through the port
//! comes back, so no frame is half-written when the guest stops (a restored
//! guest would finish writing it to its next host, who could not parse
//! what follows).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyro_protocol::{Frame, Message};
use serde_json::json;

use super::ending::finish;
use super::state::{Client, Route, Supervisor};
use crate::host;
use crate::vmm::control::{ControlResponse, ResumeInfo};
use crate::vmm::dir::{ExitReason, VmExit};
use crate::vmm::qmp::Qmp;
use crate::vmm::saved::{self, Paused};

/// How long requests in flight have to end once cancelled.
const DRAIN: Duration = Duration::from_secs(10);

/// Pauses the VM: on success the supervisor answers `requester` and exits,
/// so this returns only an error (and the VM runs on).
pub(super) fn pause(
    sup: &Arc<Supervisor>,
    requester: Option<&Arc<Client>>,
) -> Result<std::convert::Infallible, String> {
    if sup.tearing_down.swap(true, Ordering::SeqCst) {
        return Err("the VM is already ending".into());
    }
    let started = Instant::now();
    let paused = Paused::of(&sup.dir);
    let saved = quiesce(sup).and_then(|()| {
        paused.prepare().map_err(|e| e.to_string())?;
        let mut qmp = own_qmp(sup)?;
        let bytes = save(sup, &mut qmp, &paused.partial())?;
        let info = ResumeInfo {
            ports: sup.ports.list(),
            next_stream: sup.next_stream.load(Ordering::SeqCst),
            saved_at_unix_ms: host::now_unix_ms(),
            state_bytes: bytes,
        };
        if let Err(e) = paused.commit(&info) {
            let _ = qmp.execute("cont", json!({}));
            return Err(e.to_string());
        }
        Ok((qmp, bytes))
    });
    let (mut qmp, bytes) = match saved {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(paused.partial());
            resume_routing(sup);
            // A QEMU that died under the save ends the VM (its end was
            // not torn down while the pause held `tearing_down`): the
            // requester hears why, then the VM ends, before anyone can see
            // it running without a QEMU.
            let gone = qemu_gone(sup.qemu_pid) && sup.wait_qemu_exit(Duration::from_secs(5));
            if gone {
                // The end is recorded before the requester hears of it.
                finish(
                    sup,
                    &VmExit::new(ExitReason::QemuExited, Some(format!("while pausing: {e}"))),
                    requester.map(|c| (c, ControlResponse::Error { message: e })),
                );
            }
            sup.tearing_down.store(false, Ordering::SeqCst);
            return Err(e);
        }
    };
    // The migration released the disk; QEMU ends with nothing to write.
    let _ = qmp.execute("quit", json!({}));
    if !sup.wait_qemu_exit(Duration::from_secs(10)) {
        host::signal(sup.qemu_pid, libc::SIGKILL);
    }
    eprintln!(
        "supervisor: paused in {} ms ({} MiB saved)",
        started.elapsed().as_millis(),
        bytes >> 20
    );
    finish(
        sup,
        &VmExit::new(ExitReason::Paused, None),
        requester.map(|c| (c, ControlResponse::Paused { state_bytes: bytes })),
    )
}

/// QEMU has exited (or is a zombie its waiter has yet to reap).
fn qemu_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// Saves the guest into `state` and copies its disk to each of `disks` while
/// it is stopped, then lets it continue.
pub(super) fn fork(
    sup: &Arc<Supervisor>,
    state: &std::path::Path,
    disks: &[std::path::PathBuf],
) -> Result<ResumeInfo, String> {
    if sup.tearing_down.load(Ordering::SeqCst) {
        return Err("the VM is ending".into());
    }
    let result = quiesce(sup).and_then(|()| {
        let mut qmp = own_qmp(sup)?;
        let saved = save(sup, &mut qmp, state).and_then(|bytes| {
            // The disk is released and flushed while the migration holds
            // it: what the copies get is what the saved guest saw.
            for disk in disks {
                std::fs::copy(&sup.record.spec.disk, disk)
                    .map_err(|e| format!("copy the disk to {}: {e}", disk.display()))?;
            }
            Ok(bytes)
        });
        // `cont` after a completed migration takes the disk back.
        let cont = qmp
            .execute("cont", json!({}))
            .map_err(|e| format!("continuing after the fork: {e}"));
        let bytes = saved?;
        cont?;
        Ok(ResumeInfo {
            ports: sup.ports.list(),
            next_stream: sup.next_stream.load(Ordering::SeqCst),
            saved_at_unix_ms: host::now_unix_ms(),
            state_bytes: bytes,
        })
    });
    resume_routing(sup);
    sup.last_activity
        .store(host::now_unix_ms(), Ordering::SeqCst);
    result
}

/// Stops the guest and saves it into `dest`; continues it if that fails.
fn save(sup: &Supervisor, qmp: &mut Qmp, dest: &std::path::Path) -> Result<u64, String> {
    qmp.execute("stop", json!({}))
        .map_err(|e| format!("stopping the guest: {e}"))?;
    saved::save_state(qmp, &sup.dir, sup.qemu_ids, dest).map_err(|e| {
        let _ = std::fs::remove_file(dest);
        let _ = qmp.execute("cont", json!({}));
        e.to_string()
    })
}

/// The supervisor's QMP connection, held for the whole save (QEMU serves
/// one QMP client at a time).
fn own_qmp(sup: &Supervisor) -> Result<QmpSlot<'_>, String> {
    let mut slot = sup.qmp.lock().unwrap();
    if slot.is_none() {
        *slot = Some(
            Qmp::connect(&sup.dir.qmp_socket(), sup.qemu_pid, Duration::from_secs(60))
                .map_err(|e| format!("QMP: {e}"))?,
        );
    }
    Ok(QmpSlot(slot))
}

struct QmpSlot<'a>(std::sync::MutexGuard<'a, Option<Qmp>>);

impl std::ops::Deref for QmpSlot<'_> {
    type Target = Qmp;
    fn deref(&self) -> &Qmp {
        self.0.as_ref().expect("connected")
    }
}

impl std::ops::DerefMut for QmpSlot<'_> {
    fn deref_mut(&mut self) -> &mut Qmp {
        self.0.as_mut().expect("connected")
    }
}

/// Stops routing new requests, cancels those in flight and waits until the
/// agent has answered all of them and a ping.
fn quiesce(sup: &Arc<Supervisor>) -> Result<(), String> {
    let in_flight: Vec<u32> = {
        let routes = sup.routes.lock().unwrap();
        sup.quiesced.store(true, Ordering::SeqCst);
        routes.keys().copied().collect()
    };
    for stream in in_flight {
        let cancel = Frame::message(stream, &Message::Cancel);
        let _ = sup.agent.lock().unwrap().write_all(&cancel.encode());
    }
    let deadline = Instant::now() + DRAIN;
    while !sup.routes.lock().unwrap().is_empty() {
        if Instant::now() > deadline {
            return Err(format!(
                "requests in the guest did not end within {}s of being cancelled",
                DRAIN.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    ping(sup)
}

/// Routes guest requests again (after a fork, or a pause that failed).
fn resume_routing(sup: &Supervisor) {
    let _routes = sup.routes.lock().unwrap();
    sup.quiesced.store(false, Ordering::SeqCst);
}

/// A ping through the agent's port, answered after everything the agent
/// wrote before it.
fn ping(sup: &Arc<Supervisor>) -> Result<(), String> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    let id = sup.next_stream.fetch_add(1, Ordering::SeqCst);
    sup.routes.lock().unwrap().insert(
        id,
        Route {
            client: Arc::new(Client::new(&theirs)),
            client_stream: id,
            passive: true,
        },
    );
    let sent = sup
        .agent
        .lock()
        .unwrap()
        .write_all(&Frame::message(id, &Message::Ping).encode());
    let answer = sent.map_err(|e| e.to_string()).and_then(|()| {
        let mut reader = ours;
        reader
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        match Frame::read_from(&mut reader) {
            Ok(Some(f)) => match f.decode_message() {
                Ok(Message::Pong) => Ok(()),
                other => Err(format!("the agent answered a ping with {other:?}")),
            },
            Ok(None) => Err("the agent's port closed".into()),
            Err(e) => Err(format!("the agent did not answer a ping: {e}")),
        }
    });
    sup.routes.lock().unwrap().remove(&id);
    answer
}
