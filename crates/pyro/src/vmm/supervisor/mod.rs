//! The per-VM supervisor: a detached process that owns QEMU, the single
//! connection to the guest agent and the VM's control socket.
//!
//! Clients (CLI calls, SDK calls, the MCP server) connect to the control
//! socket and speak the guest protocol's framing. Stream 0 carries
//! control requests (`vmm::control`) for the supervisor itself; every other stream is a
//! guest request, forwarded to the agent under a stream id unique across
//! clients, and its replies are routed back. So many clients can use one VM
//! at once, and a client that dies only cancels its own requests (and, if it
//! owned a one-shot VM, deletes the VM).
//!
//! Threads: one per client connection, one reading the agent, one waiting
//! on QEMU, one for the TTL. Teardown happens once, whoever triggers it.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use pyro_protocol::{Activation, Frame, Kind, Message};

use crate::host;
use crate::vmm::boot;
use crate::vmm::channel::{self, stream};
use crate::vmm::control::{ControlRequest, ControlResponse, ResumeInfo, SupervisorStatus};
use crate::vmm::dir::{BootReport, ExitReason, Restore, VmDir, VmExit, VmRecord};
use crate::vmm::qemu::net;
use crate::vmm::saved::Paused;

mod ending;
mod pause;
mod ports;
mod state;

use ending::{expire, teardown, watch_qemu};
use state::{control_frame, Client, Route, Supervisor, AGENT_WRITE_TIMEOUT};

/// Entry point of `pyro __supervise DIR`. Never returns.
pub fn main(dir: &Path) -> ! {
    host::daemonize();
    let dir = VmDir::from_path(dir);
    let report = |r: &BootReport| {
        let mut line = serde_json::to_string(r).expect("reports serialize");
        line.push('\n');
        let _ = std::io::stdout().write_all(line.as_bytes());
        let _ = std::io::stdout().flush();
    };
    let fail = |error: String, ephemeral: bool| -> ! {
        eprintln!("supervisor: {error}");
        report(&BootReport {
            ok: false,
            error: Some(error),
            ..BootReport::default()
        });
        if ephemeral {
            let _ = dir.remove();
        }
        std::process::exit(1)
    };
    let record = match dir.read_record() {
        Ok(r) => r,
        Err(e) => fail(e.to_string(), true),
    };
    // Held until this process ends: it is what makes this VM alive (see
    // `VmDir::live_supervisor`).
    let _alive = match hold_lock(&dir) {
        Ok(lock) => lock,
        Err(e) => fail(e, false),
    };
    let _ = host::write_atomic(
        &dir.supervisor_pid(),
        std::process::id().to_string().as_bytes(),
    );

    let start = Instant::now();
    let booted = match boot::boot(&dir, &record) {
        Ok(b) => b,
        Err(message) => fail(message, record.ephemeral),
    };
    let welcome = booted.welcome;

    // A guest restored from its own (or its parent's) running state keeps
    // its network and services; one that had to boot instead has neither.
    let live = booted.restored && record.restore.is_live();
    let resume = live.then(|| Paused::of(&dir).read_info());
    let writer = booted.agent.try_clone().expect("clone agent socket");
    let _ = writer.set_write_timeout(Some(AGENT_WRITE_TIMEOUT));
    let sup = Arc::new(Supervisor {
        agent: Mutex::new(writer),
        dir: dir.clone(),
        record: record.clone(),
        generation: welcome.generation,
        routes: Mutex::new(HashMap::new()),
        next_stream: AtomicU32::new(resume.as_ref().map_or(stream::FIRST_ROUTED, |r| {
            r.next_stream.max(stream::FIRST_ROUTED)
        })),
        clients: AtomicU64::new(0),
        qemu_pid: booted.qemu.id() as i32,
        qemu_exited: Mutex::new(false),
        qemu_exited_cv: Condvar::new(),
        tearing_down: AtomicBool::new(false),
        last_activity: AtomicU64::new(host::now_unix_ms()),
        qmp: Mutex::new(None),
        ports: ports::Ports::default(),
        quiesced: AtomicBool::new(false),
        qemu_ids: booted.jail.as_ref().map(|j| (j.ids.qemu_uid, j.ids.gid)),
    });

    let mut agent = booted.agent;
    if let Err(e) = activate(&mut agent, &record, !live) {
        host::signal(sup.qemu_pid, libc::SIGKILL);
        fail(
            format!("activating the guest failed: {e}"),
            record.ephemeral,
        );
    }

    let listener = match bind_control(&dir) {
        Ok(l) => l,
        Err(e) => {
            host::signal(sup.qemu_pid, libc::SIGKILL);
            fail(e, record.ephemeral)
        }
    };

    {
        let sup = sup.clone();
        let (qemu, passt, jail) = (booted.qemu, booted.passt, booted.jail);
        std::thread::spawn(move || watch_qemu(sup, qemu, passt, jail));
    }
    {
        let sup = sup.clone();
        std::thread::spawn(move || read_agent(sup, agent));
    }
    {
        let sup = sup.clone();
        std::thread::spawn(move || expire(sup));
    }

    if let Some(resume) = &resume {
        republish(&sup, resume);
    }
    // The state is consumed; what is left of the pause goes.
    if record.restore.is_live() {
        Paused::of(&dir).discard();
    }

    report(&BootReport {
        ok: true,
        error: None,
        boot_ms: start.elapsed().as_millis() as u64,
        guest_boot_ms: welcome.boot_ms,
        kernel_release: welcome.kernel_release,
        agent_version: welcome.agent_version,
        attempts: booted.attempts,
        restored: booted.restored,
        guest_cgroups: welcome.cgroups,
    });
    host::stdout_to_null();

    for conn in listener.incoming() {
        match conn {
            // Only this user (or root) drives this VM, whatever the
            // socket's directory allows.
            Ok(stream) if !trusted(&stream) => {
                eprintln!("supervisor: refused a client of another user");
            }
            Ok(stream) => {
                let sup = sup.clone();
                std::thread::spawn(move || serve_client(sup, stream));
            }
            Err(e) => eprintln!("supervisor: accept: {e}"),
        }
    }
    teardown(&sup, VmExit::new(ExitReason::ControlClosed, None), None);
    std::process::exit(0)
}

/// Takes the VM's liveness lock. Someone checking liveness holds it for an
/// instant; another supervisor of this VM holds it for good.
fn hold_lock(dir: &VmDir) -> Result<host::FileLock, String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match host::FileLock::try_acquire(&dir.supervisor_lock()) {
            Ok(Some(lock)) => return Ok(lock),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => return Err("another supervisor runs this VM".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The ports a paused VM had published, published again: on the same host
/// ports after a pause, on free ones in a fork (its parent holds those).
fn republish(sup: &Arc<Supervisor>, resume: &ResumeInfo) {
    let same = sup.record.restore == Restore::Paused;
    for p in &resume.ports {
        let host_port = same.then_some(p.binding.host_port);
        if let Err(e) = sup.ports.publish(
            p.service.clone(),
            p.binding.guest_port,
            host_port,
            attach(sup),
        ) {
            eprintln!("supervisor: publishing {}'s port again: {e}", p.service);
        }
    }
}

/// Gives the guest its identity: hostname, clock, a fresh random seed, and
/// (`network`) its network, which a guest restored from a running one
/// already has. Sent before any client is routed.
fn activate(agent: &mut UnixStream, record: &VmRecord, network: bool) -> Result<(), String> {
    let activation = Message::Activate(Activation {
        hostname: record.hostname.clone(),
        unix_time_ms: host::now_unix_ms(),
        network: record
            .spec
            .network_socket
            .as_ref()
            .filter(|_| network)
            .map(|_| pyro_protocol::NetworkConfig {
                interface: net::INTERFACE.into(),
                address: net::ADDRESS.into(),
                prefix: net::PREFIX,
                gateway: net::GATEWAY.into(),
                dns: vec![net::DNS.into()],
            }),
        entropy: Some(host::random_id(32)),
    });
    agent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let reply = channel::call(agent, stream::BOOTSTRAP, &activation, None, &mut |_, _| {
        true
    })
    .map_err(|e| e.to_string())?;
    agent.set_read_timeout(None).map_err(|e| e.to_string())?;
    match reply {
        Message::Done => Ok(()),
        Message::Error { message } => Err(message),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

fn bind_control(dir: &VmDir) -> Result<UnixListener, String> {
    dir.prepare_sockets().map_err(|e| e.to_string())?;
    let path = dir.control_socket();
    let _ = fs::remove_file(&path);
    UnixListener::bind(&path).map_err(|e| format!("bind {}: {e}", path.display()))
}

fn serve_client(sup: Arc<Supervisor>, stream: UnixStream) {
    sup.clients.fetch_add(1, Ordering::SeqCst);
    let client = Arc::new(Client::new(&stream));
    let mut reader = stream;
    let mut owner = false;
    let mut passive = false;
    // This client's streams: its id → the agent-side id.
    let mut streams: HashMap<u32, u32> = HashMap::new();
    while let Ok(Some(frame)) = Frame::read_from(&mut reader) {
        let request = (frame.stream == stream::CONTROL)
            .then(|| serde_json::from_slice::<ControlRequest>(&frame.body));
        if let Some(Ok(ControlRequest::Attach { passive: p, .. })) = &request {
            passive = *p;
        }
        if !passive {
            sup.last_activity
                .store(host::now_unix_ms(), Ordering::SeqCst);
        }
        if let Some(request) = request {
            let reply = match request {
                Ok(ControlRequest::Attach { owner: o, .. }) => {
                    owner = o;
                    ControlResponse::Attached {
                        vm_id: sup.record.vm_id.clone(),
                        generation: sup.generation,
                    }
                }
                Ok(ControlRequest::Status) => ControlResponse::Status(SupervisorStatus {
                    vm_id: sup.record.vm_id.clone(),
                    qemu_pid: sup.qemu_pid,
                    supervisor_pid: std::process::id() as i32,
                    clients: sup.clients.load(Ordering::SeqCst),
                    streams_in_flight: sup.routes.lock().unwrap().len(),
                    run_state: sup
                        .qmp("query-status", serde_json::json!({}))
                        .ok()
                        .and_then(|r| r.get("status").and_then(|s| s.as_str()).map(str::to_owned))
                        .unwrap_or_else(|| "unknown".into()),
                }),
                Ok(ControlRequest::Delete) => {
                    teardown(&sup, VmExit::new(ExitReason::Stopped, None), Some(&client));
                    return;
                }
                Ok(ControlRequest::Qmp { command, .. })
                    if !CLIENT_QMP.contains(&command.as_str()) =>
                {
                    ControlResponse::Error {
                        message: format!("QMP command {command} is not one clients may run"),
                    }
                }
                Ok(ControlRequest::Qmp { command, arguments }) => {
                    match sup.qmp(&command, arguments) {
                        Ok(result) => ControlResponse::Qmp { result },
                        Err(message) => ControlResponse::Error { message },
                    }
                }
                Ok(ControlRequest::Publish {
                    service,
                    guest_port,
                    host_port,
                }) => match sup
                    .ports
                    .publish(service, guest_port, host_port, attach(&sup))
                {
                    Ok(port) => ControlResponse::Ports { ports: vec![port] },
                    Err(message) => ControlResponse::Error { message },
                },
                Ok(ControlRequest::Unpublish { service }) => ControlResponse::Ports {
                    ports: sup.ports.unpublish(&service),
                },
                Ok(ControlRequest::Ports) => ControlResponse::Ports {
                    ports: sup.ports.list(),
                },
                Ok(ControlRequest::Pause) => match pause::pause(&sup, Some(&client)) {
                    Ok(never) => match never {},
                    Err(message) => ControlResponse::Error { message },
                },
                Ok(ControlRequest::Fork { state, disks }) => {
                    match pause::fork(&sup, &state, &disks) {
                        Ok(resume) => ControlResponse::Forked { resume },
                        Err(message) => ControlResponse::Error { message },
                    }
                }
                Err(e) => ControlResponse::Error {
                    message: format!("bad control request: {e}"),
                },
            };
            client.send(&control_frame(&reply));
            continue;
        }
        let agent_stream = match streams.get(&frame.stream) {
            Some(id) => *id,
            None => {
                let mut routes = sup.routes.lock().unwrap();
                // A pause or fork is saving the guest: nothing new starts.
                if sup.quiesced.load(Ordering::SeqCst) {
                    drop(routes);
                    if frame.kind == Kind::Message {
                        client.send(&Frame::message(
                            frame.stream,
                            &Message::Error {
                                message: "the VM is being paused or forked; try again".into(),
                            },
                        ));
                    }
                    continue;
                }
                let id = sup.next_stream.fetch_add(1, Ordering::SeqCst);
                routes.insert(
                    id,
                    Route {
                        client: client.clone(),
                        client_stream: frame.stream,
                        passive,
                    },
                );
                streams.insert(frame.stream, id);
                id
            }
        };
        let forwarded = Frame {
            stream: agent_stream,
            ..frame
        };
        if sup
            .agent
            .lock()
            .unwrap()
            .write_all(&forwarded.encode())
            .is_err()
        {
            break;
        }
    }
    // The client is gone: abandon what it left running.
    let mut routes = sup.routes.lock().unwrap();
    for agent_stream in streams.values() {
        if routes.remove(agent_stream).is_some() {
            let cancel = Frame::message(*agent_stream, &Message::Cancel);
            let _ = sup.agent.lock().unwrap().write_all(&cancel.encode());
        }
    }
    drop(routes);
    sup.clients.fetch_sub(1, Ordering::SeqCst);
    if owner && sup.record.ephemeral {
        teardown(&sup, VmExit::new(ExitReason::OwnerDisconnected, None), None);
    }
}

fn trusted(stream: &UnixStream) -> bool {
    host::peer_uid(stream).is_some_and(|uid| uid == host::euid() || uid == 0)
}

/// The QMP commands a client may have run: the disk snapshots workspaces
/// take and delete, and QEMU's status. Nothing that writes files or
/// changes devices.
const CLIENT_QMP: &[&str] = &[
    "blockdev-snapshot-internal-sync",
    "blockdev-snapshot-delete-internal-sync",
    "query-status",
];

/// Makes the end of a socket pair a client of `sup` (a published port's
/// connection is one).
fn attach(sup: &Arc<Supervisor>) -> ports::Attach {
    let sup = sup.clone();
    Arc::new(move |stream| {
        let sup = sup.clone();
        std::thread::spawn(move || serve_client(sup, stream));
    })
}

fn read_agent(sup: Arc<Supervisor>, mut agent: UnixStream) {
    while let Ok(Some(frame)) = Frame::read_from(&mut agent) {
        let terminal = frame.kind == Kind::Message
            && frame
                .decode_message()
                .map(|m| m.is_terminal())
                .unwrap_or(false);
        let mut routes = sup.routes.lock().unwrap();
        let route = if terminal {
            routes.remove(&frame.stream)
        } else {
            routes.get(&frame.stream).map(|r| Route {
                client: r.client.clone(),
                client_stream: r.client_stream,
                passive: r.passive,
            })
        };
        drop(routes);
        if let Some(route) = route {
            route.client.send(&Frame {
                stream: route.client_stream,
                ..frame
            });
        }
    }
    // A QEMU that died closed the connection: its exit says more (a
    // signal, the memory limit), and `watch_qemu` reports it.
    if sup.wait_qemu_exit(Duration::from_secs(2)) {
        return;
    }
    teardown(&sup, VmExit::new(ExitReason::AgentClosed, None), None);
}
