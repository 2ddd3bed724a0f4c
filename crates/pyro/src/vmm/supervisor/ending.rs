//! How a VM ends: its time runs out, QEMU exits, or a client asks; and
//! the one teardown all of them lead to.

use std::fs;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyro_protocol::{Frame, Message};

use super::state::{control_frame, Client, Route, Supervisor};
use crate::contract::IdleAction;
use crate::host;
use crate::vmm::boot;
use crate::vmm::channel::stream;
use crate::vmm::control::ControlResponse;
use crate::vmm::dir::{ExitReason, VmExit};
use crate::vmm::jail::Jail;
use crate::vmm::qmp::Qmp;

/// The mutex's guard, unless another holds it for longer than `limit`.
fn try_lock_for<T>(m: &Mutex<T>, limit: Duration) -> Option<std::sync::MutexGuard<'_, T>> {
    let deadline = Instant::now() + limit;
    loop {
        match m.try_lock() {
            Ok(g) => return Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(std::sync::TryLockError::WouldBlock) => return None,
        }
    }
}

/// Ends the VM when its time is up: the TTL after creation, or with an
/// idle timeout after the last request of any (non-passive) client. Also
/// keeps the console log within bounds while the VM runs.
pub(super) fn expire(sup: Arc<Supervisor>) {
    let ttl_ms = sup.record.ttl_seconds * 1000;
    loop {
        boot::bound_log(&sup.dir.console_log());
        let since = if sup.record.idle_timeout {
            sup.last_activity.load(Ordering::SeqCst)
        } else {
            sup.record.created_at_unix_ms
        };
        let now = host::now_unix_ms();
        let idle = sup.record.idle_timeout;
        if idle && sup.record.on_idle == IdleAction::None {
            // Never idle out; only the directory check below applies.
        } else if idle && sup.busy() {
            // A command still running is activity.
            sup.last_activity.store(now, Ordering::SeqCst);
        } else if now >= since + ttl_ms {
            let mut why = None;
            if idle && sup.record.on_idle == IdleAction::Pause {
                match super::pause::pause(&sup, None) {
                    Ok(never) => match never {},
                    // A guest that cannot be saved (frozen, or not
                    // answering) is stopped instead: the idle timeout
                    // always ends it.
                    Err(e) => {
                        eprintln!("supervisor: idle pause failed: {e}; stopping instead");
                        why = Some(format!("pausing failed: {e}"));
                    }
                }
            }
            return teardown(&sup, VmExit::new(ExitReason::TtlExpired, why), None);
        }
        // A VM whose directory was removed has nobody left to serve.
        if !sup.dir.path.exists() {
            return teardown(&sup, VmExit::new(ExitReason::DirectoryRemoved, None), None);
        }
        std::thread::sleep(Duration::from_millis(
            (since + ttl_ms).saturating_sub(now).clamp(50, 1_000),
        ));
    }
}

pub(super) fn watch_qemu(
    sup: Arc<Supervisor>,
    mut child: std::process::Child,
    passt: Option<boot::Passt>,
    jail: Option<Jail>,
) {
    let status = child.wait();
    drop(passt);
    let mut detail = match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("vanished: {e}"),
    };
    if let Some(jail) = &jail {
        if let Some(verdict) = jail.memory_verdict() {
            detail = format!("{detail}; {verdict}");
        }
        if let (Some(peak), Some(limit)) = (jail.peak_memory(), jail.memory_limit()) {
            eprintln!(
                "supervisor: QEMU held at most {} MiB of its {} MiB",
                peak >> 20,
                limit >> 20
            );
        }
    }
    // The jail's cgroup goes with QEMU (and the slot is free again).
    drop(jail);
    *sup.qemu_exited.lock().unwrap() = true;
    sup.qemu_exited_cv.notify_all();
    teardown(
        &sup,
        VmExit::new(ExitReason::QemuExited, Some(detail)),
        None,
    );
}

/// Ends the VM once: tells clients with requests in flight, stops QEMU,
/// removes a one-shot VM's directory, answers a `delete` and exits.
pub(super) fn teardown(sup: &Supervisor, exit: VmExit, requester: Option<&Arc<Client>>) {
    if sup.tearing_down.swap(true, Ordering::SeqCst) {
        // Someone else is tearing down; a requester waits for the exit,
        // which closes its socket.
        if requester.is_some() {
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        return;
    }
    let why = exit.to_string();
    eprintln!("supervisor: tearing down: {why}");
    if !*sup.qemu_exited.lock().unwrap() {
        // A stopped QEMU (SIGSTOP) cannot shut down gently.
        if !sup.record.ephemeral && !host::process_stopped(sup.qemu_pid) {
            // Give the guest a chance to flush its disk, without waiting on
            // a writer a stuck guest holds up.
            if let Some(mut agent) = try_lock_for(&sup.agent, Duration::from_secs(2)) {
                let shutdown = Frame::message(stream::SHUTDOWN, &Message::Shutdown);
                let _ = agent.write_all(&shutdown.encode());
            }
            if !sup.wait_qemu_exit(Duration::from_secs(10)) {
                // A connection of its own: the shared one may be stuck.
                if let Ok(mut q) =
                    Qmp::connect(&sup.dir.qmp_socket(), sup.qemu_pid, Duration::from_secs(2))
                {
                    let _ = q.execute("quit", serde_json::json!({}));
                }
            }
        }
        // One-shot VMs' disks are thrown away: no need to be gentle.
        host::signal(sup.qemu_pid, libc::SIGKILL);
        sup.wait_qemu_exit(Duration::from_secs(10));
    }
    // How it ended is on record before anyone waiting hears of it: a
    // caller told of the end never sees the VM running.
    if !sup.record.ephemeral {
        let _ = sup.dir.write_exit(&exit);
    }
    let orphaned: Vec<Route> = sup.routes.lock().unwrap().drain().map(|(_, r)| r).collect();
    for route in orphaned {
        route.client.send(&Frame::message(
            route.client_stream,
            &Message::Error {
                message: format!("the VM stopped: {why}"),
            },
        ));
    }
    finish(sup, &exit, requester.map(|c| (c, ControlResponse::Deleted)))
}

/// What every end does once QEMU is gone: the network's scratch directory
/// goes, a one-shot VM's directory goes, a persistent VM's `exit.json` is
/// written; the requester gets its answer; the supervisor exits.
pub(super) fn finish(
    sup: &Supervisor,
    exit: &VmExit,
    reply: Option<(&Arc<Client>, ControlResponse)>,
) -> ! {
    if let Some(sock) = &sup.record.spec.network_socket {
        if let Some(dir) = sock.parent() {
            let _ = fs::remove_dir_all(dir);
        }
    }
    if sup.record.ephemeral {
        let _ = sup.dir.remove();
    } else {
        let _ = sup.dir.write_exit(exit);
        let _ = fs::remove_file(sup.dir.control_socket());
        let _ = fs::remove_file(sup.dir.supervisor_pid());
    }
    if let Some((client, response)) = reply {
        client.send(&control_frame(&response));
    }
    std::process::exit(0)
}
