//! The per-VM supervisor: a detached process that owns QEMU, the single
//! connection to the guest agent and the VM's control socket.
//!
//! Clients (CLI calls, SDK calls, the MCP server) connect to the control
//! socket and speak the guest protocol's framing. Stream 0 carries
//! [`ControlRequest`]s for the supervisor itself; every other stream is a
//! guest request, forwarded to the agent under a stream id unique across
//! clients, and its replies are routed back. So many clients can use one VM
//! at once, and a client that dies only cancels its own requests (and, if it
//! owned a one-shot VM, deletes the VM).
//!
//! Threads: one per client connection, one reading the agent, one waiting
//! on QEMU, one for the TTL. Teardown happens once, whoever triggers it.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use pyro_protocol::{
    Activation, Decoder, Frame, Kind, Message, CONTROL_STREAM, SUPPORTED_GENERATIONS,
};
use serde::{Deserialize, Serialize};

use crate::host;
use crate::qemu::net;
use crate::qmp::Qmp;

mod ports;
use crate::vm::{BootReport, VmDir, VmRecord};
pub use ports::{PortBinding, ServicePort};

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
    Error { message: String },
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

/// How long a boot may take before the VM is killed and booted again.
fn boot_watchdog(accel: host::Accel) -> Duration {
    match accel {
        host::Accel::Kvm => Duration::from_secs(20),
        host::Accel::Tcg => Duration::from_secs(45),
    }
}
const BOOT_ATTEMPTS: u32 = 2;

struct Client {
    writer: Mutex<UnixStream>,
}

impl Client {
    fn send(&self, frame: &Frame) {
        let _ = self.writer.lock().unwrap().write_all(&frame.encode());
    }
}

struct Route {
    client: Arc<Client>,
    client_stream: u32,
}

struct Supervisor {
    dir: VmDir,
    record: VmRecord,
    generation: u32,
    agent: Mutex<UnixStream>,
    routes: Mutex<HashMap<u32, Route>>,
    next_stream: AtomicU32,
    clients: AtomicU64,
    qemu_pid: i32,
    qemu_exited: Mutex<bool>,
    qemu_exited_cv: Condvar,
    tearing_down: AtomicBool,
    /// When a client last asked anything (ms since the Unix epoch).
    last_activity: AtomicU64,
    qmp: Mutex<Option<Qmp>>,
    ports: Mutex<Vec<ports::Publication>>,
}

impl Supervisor {
    fn qmp(
        &self,
        command: &str,
        arguments: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let mut slot = self.qmp.lock().unwrap();
        if slot.is_none() {
            *slot = Some(
                Qmp::connect(&self.dir.qmp_socket(), Duration::from_secs(30))
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

/// Entry point of `pyro __supervise DIR`. Never returns.
pub fn main(dir: &Path) -> ! {
    host::daemonize();
    let dir = VmDir::from_path(dir);
    let report = |r: &BootReport| {
        let mut line = serde_json::to_string(r).unwrap();
        line.push('\n');
        let _ = std::io::stdout().write_all(line.as_bytes());
        let _ = std::io::stdout().flush();
    };
    let fail = |error: String, ephemeral: bool| -> ! {
        eprintln!("supervisor: {error}");
        report(&BootReport {
            ok: false,
            error: Some(error),
            boot_ms: 0,
            guest_boot_ms: 0,
            kernel_release: String::new(),
            agent_version: String::new(),
            attempts: 0,
            restored: false,
        });
        if ephemeral {
            let _ = fs::remove_dir_all(&dir.path);
        }
        std::process::exit(1)
    };
    let record = match dir.read_record() {
        Ok(r) => r,
        Err(e) => fail(e.to_string(), true),
    };
    let _ = fs::write(dir.supervisor_pid(), std::process::id().to_string());

    let start = Instant::now();
    let mut attempt = 0;
    let mut record = record;
    let (child, agent, welcome) = loop {
        attempt += 1;
        match boot_once(&dir, &record) {
            Ok(booted) => break booted,
            // A template that does not restore is no reason to fail: boot
            // the same disk from scratch instead.
            Err(e) if record.spec.snapshot.is_some() => {
                eprintln!(
                    "supervisor: restoring the template failed: {}; booting instead",
                    e.message
                );
                record.spec.snapshot = None;
            }
            Err(e) if attempt < BOOT_ATTEMPTS && e.retry => {
                eprintln!(
                    "supervisor: boot attempt {attempt} failed: {}; retrying",
                    e.message
                );
            }
            Err(e) => fail(e.message, record.ephemeral),
        }
    };
    let restored = record.spec.snapshot.is_some();
    let (generation, kernel_release, agent_version, guest_boot_ms) = welcome;

    let sup = Arc::new(Supervisor {
        agent: Mutex::new(agent.try_clone().expect("clone agent socket")),
        dir: dir.clone(),
        record: record.clone(),
        generation,
        routes: Mutex::new(HashMap::new()),
        next_stream: AtomicU32::new(16),
        clients: AtomicU64::new(0),
        qemu_pid: child.id() as i32,
        qemu_exited: Mutex::new(false),
        qemu_exited_cv: Condvar::new(),
        tearing_down: AtomicBool::new(false),
        last_activity: AtomicU64::new(host::now_unix_ms()),
        qmp: Mutex::new(None),
        ports: Mutex::new(Vec::new()),
    });

    // Activation gives the booted guest its identity.
    let activation = Message::Activate(Activation {
        hostname: record.hostname.clone(),
        unix_time_ms: host::now_unix_ms(),
        network: record
            .spec
            .network_socket
            .as_ref()
            .map(|_| pyro_protocol::NetworkConfig {
                interface: net::INTERFACE.into(),
                address: net::ADDRESS.into(),
                prefix: net::PREFIX,
                gateway: net::GATEWAY.into(),
                dns: vec![net::DNS.into()],
            }),
        entropy: Some(host::random_id(32)),
    });
    let mut agent_reader = agent;
    if let Err(e) = request(&sup, &mut agent_reader, &activation) {
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
        std::thread::spawn(move || watch_qemu(sup, child));
    }
    {
        let sup = sup.clone();
        std::thread::spawn(move || read_agent(sup, agent_reader));
    }
    {
        let sup = sup.clone();
        let ttl_ms = record.ttl_seconds * 1000;
        let idle = record.idle_timeout;
        std::thread::spawn(move || loop {
            let since = if idle {
                sup.last_activity.load(Ordering::SeqCst)
            } else {
                sup.record.created_at_unix_ms
            };
            let now = host::now_unix_ms();
            if now >= since + ttl_ms {
                teardown(&sup, "ttl_expired", None);
                return;
            }
            // A VM whose directory was removed has nobody left to serve.
            if !sup.dir.path.exists() {
                teardown(&sup, "its directory was removed", None);
                return;
            }
            std::thread::sleep(Duration::from_millis((since + ttl_ms - now).min(5_000)));
        });
    }

    report(&BootReport {
        ok: true,
        error: None,
        boot_ms: start.elapsed().as_millis() as u64,
        guest_boot_ms,
        kernel_release,
        agent_version,
        attempts: attempt,
        restored,
    });
    host::stdout_to_null();

    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let sup = sup.clone();
                std::thread::spawn(move || serve_client(sup, stream));
            }
            Err(e) => eprintln!("supervisor: accept: {e}"),
        }
    }
    teardown(&sup, "control socket closed", None);
    std::process::exit(0)
}

pub(crate) struct BootError {
    pub message: String,
    retry: bool,
}

pub(crate) type Welcome = (u32, String, String, u64);

/// Starts QEMU and waits for the agent's welcome, within the watchdog.
pub(crate) fn boot_once(
    dir: &VmDir,
    record: &VmRecord,
) -> Result<(std::process::Child, UnixStream, Welcome), BootError> {
    let _ = fs::remove_file(dir.agent_socket());
    let _ = fs::remove_file(dir.qmp_socket());
    // The network (if any) listens before QEMU connects to it; it exits
    // with QEMU, so each boot attempt gets its own.
    if let Some(sock) = &record.spec.network_socket {
        host::spawn_passt(sock, &dir.path.join("passt.log")).map_err(|e| BootError {
            message: e.to_string(),
            retry: false,
        })?;
    }
    let mut child = host::spawn_qemu(&record.spec, &dir.qemu_log()).map_err(|e| BootError {
        message: e.to_string(),
        retry: false,
    })?;
    let deadline = Instant::now() + boot_watchdog(record.spec.accel);
    let give_up = |child: &mut std::process::Child, why: String, retry: bool| {
        let _ = child.kill();
        let _ = child.wait();
        let console = fs::read_to_string(dir.console_log()).unwrap_or_default();
        let qemu = fs::read_to_string(dir.qemu_log()).unwrap_or_default();
        let mut message = why;
        if !qemu.trim().is_empty() {
            message.push_str(&format!("\nqemu said:\n{}", host::tail(&qemu, 10)));
        }
        if !console.trim().is_empty() {
            message.push_str(&format!(
                "\nguest console (last lines):\n{}",
                host::tail(&console, 15)
            ));
        }
        BootError { message, retry }
    };

    // A restored guest stays paused (it was saved paused) until resumed.
    if record.spec.snapshot.is_some() {
        let until = Instant::now() + RESTORE_WATCHDOG;
        if let Err(why) = resume_restored(dir, &mut child, until) {
            return Err(give_up(&mut child, why, true));
        }
    }

    // QEMU creates the agent socket as it starts.
    let mut agent = loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(give_up(
                &mut child,
                format!("QEMU exited at start ({status})"),
                false,
            ));
        }
        if let Ok(s) = UnixStream::connect(dir.agent_socket()) {
            break s;
        }
        if Instant::now() > deadline {
            return Err(give_up(
                &mut child,
                "QEMU never opened the agent socket".into(),
                true,
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    };

    let hello = Frame::message(
        CONTROL_STREAM,
        &Message::Hello {
            generations: SUPPORTED_GENERATIONS.to_vec(),
            host_version: env!("CARGO_PKG_VERSION").into(),
        },
    );
    let mut decoder = Decoder::default();
    let mut buf = [0u8; 4096];
    let mut next_hello = Instant::now();
    agent
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("set timeout");
    loop {
        let now = Instant::now();
        if now >= next_hello {
            // Repeated until answered: bytes sent before the guest opened its
            // port may be lost.
            let _ = agent.write_all(&hello.encode());
            next_hello = now + Duration::from_millis(500);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(give_up(
                &mut child,
                format!("QEMU exited during boot ({status})"),
                true,
            ));
        }
        if now > deadline {
            return Err(give_up(
                &mut child,
                format!(
                    "the guest agent did not answer within {}s",
                    boot_watchdog(record.spec.accel).as_secs()
                ),
                true,
            ));
        }
        match agent.read(&mut buf) {
            Ok(0) => {
                return Err(give_up(
                    &mut child,
                    "QEMU closed the agent socket".into(),
                    true,
                ));
            }
            Ok(n) => decoder.push(&buf[..n]),
            Err(_) => continue,
        }
        while let Ok(Some(frame)) = decoder.next_frame() {
            match frame.decode_message() {
                Ok(Message::Welcome {
                    generation,
                    agent_version,
                    kernel_release,
                    boot_ms,
                }) => {
                    agent.set_read_timeout(None).expect("clear timeout");
                    return Ok((
                        child,
                        agent,
                        (generation, kernel_release, agent_version, boot_ms),
                    ));
                }
                Ok(Message::Error { message }) => {
                    return Err(give_up(
                        &mut child,
                        format!("the agent refused: {message}"),
                        false,
                    ));
                }
                _ => {}
            }
        }
    }
}

/// How long loading a template's state may take.
const RESTORE_WATCHDOG: Duration = Duration::from_secs(15);

/// Waits for QEMU to load the saved state it reads on `-incoming`, then
/// resumes the guest.
fn resume_restored(
    dir: &VmDir,
    child: &mut std::process::Child,
    until: Instant,
) -> Result<(), String> {
    let exited = |child: &mut std::process::Child| match child.try_wait() {
        Ok(Some(status)) => Some(format!("QEMU exited while restoring ({status})")),
        _ => None,
    };
    let mut qmp = loop {
        if let Some(why) = exited(child) {
            return Err(why);
        }
        match Qmp::connect(&dir.qmp_socket(), Duration::from_secs(5)) {
            Ok(q) => break q,
            Err(e) if Instant::now() > until => return Err(format!("QMP: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    let mut query = |command: &str| {
        qmp.execute(command, serde_json::json!({}))
            .map_err(|e| exited(child).unwrap_or_else(|| e.to_string()))
    };
    loop {
        let status = query("query-status")?;
        match status.get("status").and_then(|s| s.as_str()) {
            Some("running") => return Ok(()),
            Some("inmigrate") => {}
            _ => {
                let migration = query("query-migrate")?;
                match migration.get("status").and_then(|s| s.as_str()) {
                    Some("completed") => return query("cont").map(|_| ()),
                    Some("failed") | Some("cancelled") => {
                        return Err(format!("restoring the saved state failed: {migration}"))
                    }
                    _ => {}
                }
            }
        }
        if Instant::now() > until {
            return Err(format!(
                "restoring the saved state took over {}s",
                RESTORE_WATCHDOG.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One request on a private stream before routing starts.
fn request(sup: &Supervisor, reader: &mut UnixStream, message: &Message) -> Result<(), String> {
    const STREAM: u32 = 1;
    sup.agent
        .lock()
        .unwrap()
        .write_all(&Frame::message(STREAM, message).encode())
        .map_err(|e| e.to_string())?;
    reader
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    loop {
        match Frame::read_from(reader) {
            Ok(Some(f)) if f.stream == STREAM => {
                reader.set_read_timeout(None).map_err(|e| e.to_string())?;
                return match f.decode_message() {
                    Ok(Message::Done) => Ok(()),
                    Ok(Message::Error { message }) => Err(message),
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    Err(e) => Err(e.to_string()),
                };
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err("the agent went away".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn bind_control(dir: &VmDir) -> Result<UnixListener, String> {
    let path = dir.control_socket();
    let _ = fs::remove_file(&path);
    UnixListener::bind(&path).map_err(|e| format!("bind {}: {e}", path.display()))
}

fn serve_client(sup: Arc<Supervisor>, stream: UnixStream) {
    sup.clients.fetch_add(1, Ordering::SeqCst);
    let client = Arc::new(Client {
        writer: Mutex::new(stream.try_clone().expect("clone client socket")),
    });
    let mut reader = stream;
    let mut owner = false;
    let mut passive = false;
    // This client's streams: its id → the agent-side id.
    let mut streams: HashMap<u32, u32> = HashMap::new();
    loop {
        let frame = match Frame::read_from(&mut reader) {
            Ok(Some(f)) => f,
            _ => break,
        };
        let request = (frame.stream == CONTROL_STREAM)
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
                    teardown(&sup, "stopped", Some(&client));
                    return;
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
                }) => match ports::publish(&sup, service, guest_port, host_port) {
                    Ok(port) => ControlResponse::Ports { ports: vec![port] },
                    Err(message) => ControlResponse::Error { message },
                },
                Ok(ControlRequest::Unpublish { service }) => ControlResponse::Ports {
                    ports: ports::unpublish(&sup, &service),
                },
                Ok(ControlRequest::Ports) => ControlResponse::Ports {
                    ports: ports::list(&sup),
                },
                Err(e) => ControlResponse::Error {
                    message: format!("bad control request: {e}"),
                },
            };
            client.send(&control_frame(&reply));
            continue;
        }
        let agent_stream = *streams.entry(frame.stream).or_insert_with(|| {
            let id = sup.next_stream.fetch_add(1, Ordering::SeqCst);
            sup.routes.lock().unwrap().insert(
                id,
                Route {
                    client: client.clone(),
                    client_stream: frame.stream,
                },
            );
            id
        });
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
        teardown(&sup, "owner disconnected", None);
    }
}

fn control_frame(r: &ControlResponse) -> Frame {
    Frame {
        stream: CONTROL_STREAM,
        kind: Kind::Message,
        body: serde_json::to_vec(r).unwrap(),
    }
}

fn read_agent(sup: Arc<Supervisor>, mut agent: UnixStream) {
    loop {
        let frame = match Frame::read_from(&mut agent) {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => break,
        };
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
    teardown(&sup, "the guest agent connection closed", None);
}

fn watch_qemu(sup: Arc<Supervisor>, mut child: std::process::Child) {
    let status = child.wait();
    *sup.qemu_exited.lock().unwrap() = true;
    sup.qemu_exited_cv.notify_all();
    let why = match status {
        Ok(s) => format!("QEMU exited ({s})"),
        Err(e) => format!("QEMU vanished ({e})"),
    };
    teardown(&sup, &why, None);
}

/// Ends the VM once: tells clients with requests in flight, stops QEMU,
/// removes a one-shot VM's directory, answers a `delete` and exits.
fn teardown(sup: &Supervisor, why: &str, requester: Option<&Arc<Client>>) {
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
    eprintln!("supervisor: tearing down: {why}");
    let orphaned: Vec<Route> = sup.routes.lock().unwrap().drain().map(|(_, r)| r).collect();
    for route in orphaned {
        route.client.send(&Frame::message(
            route.client_stream,
            &Message::Error {
                message: format!("the VM stopped: {why}"),
            },
        ));
    }
    if !*sup.qemu_exited.lock().unwrap() {
        if !sup.record.ephemeral {
            // Give the guest a chance to flush its disk.
            let _ = sup
                .agent
                .lock()
                .unwrap()
                .write_all(&Frame::message(2, &Message::Shutdown).encode());
            let exited = sup.qemu_exited.lock().unwrap();
            let (exited, _) = sup
                .qemu_exited_cv
                .wait_timeout_while(exited, Duration::from_secs(10), |e| !*e)
                .unwrap();
            if !*exited {
                drop(exited);
                let _ = sup.qmp("quit", serde_json::json!({}));
            }
        }
        // One-shot VMs' disks are thrown away: no need to be gentle.
        host::signal(sup.qemu_pid, libc::SIGKILL);
        let exited = sup.qemu_exited.lock().unwrap();
        let _ = sup
            .qemu_exited_cv
            .wait_timeout_while(exited, Duration::from_secs(10), |e| !*e);
    }
    if let Some(sock) = &sup.record.spec.network_socket {
        if let Some(dir) = sock.parent() {
            let _ = fs::remove_dir_all(dir);
        }
    }
    if sup.record.ephemeral {
        let _ = fs::remove_dir_all(&sup.dir.path);
    } else {
        let exit = crate::vm::VmExit {
            reason: why.to_string(),
            at_unix_ms: host::now_unix_ms(),
        };
        let _ = host::write_atomic(&sup.dir.exit_record(), &serde_json::to_vec(&exit).unwrap());
        let _ = fs::remove_file(sup.dir.control_socket());
        let _ = fs::remove_file(sup.dir.supervisor_pid());
    }
    if let Some(client) = requester {
        client.send(&control_frame(&ControlResponse::Deleted));
    }
    std::process::exit(0)
}
