//! The pyro guest agent. It is `/init` of the initramfs that pyro builds,
//! switches to the root disk and stays PID 1 there: it mounts the usual
//! filesystems, reaps orphans, and serves the host over the virtio-serial
//! port named [`pyro_protocol::PORT_NAME`]. Everything a sandbox does inside
//! the guest goes through here.
//!
//! It depends on nothing of the host's: only the protocol crate and libc.
//! All `unsafe` lives in [`sys`].

mod boot;
mod cgroup;
mod exec;
mod files;
mod reaper;
mod services;
mod shells;
mod sys;
mod tunnel;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyro_protocol::{Decoder, Frame, Kind, Message, CONTROL_STREAM, SUPPORTED_GENERATIONS};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The host end: frames are written whole under one lock.
pub struct Link {
    port: Mutex<File>,
}

impl Link {
    pub fn send(&self, frame: &Frame) {
        // A write fails only while no host is connected; the host that
        // connects next starts a fresh conversation, so dropping is right.
        let _ = self.port.lock().unwrap().write_all(&frame.encode());
    }
}

enum Inflight {
    Exec(Sender<exec::Event>),
    /// A request reading input frames; `None` ends the input.
    Input(Sender<Option<Vec<u8>>>),
}

pub struct Agent {
    link: Arc<Link>,
    reaper: Arc<reaper::Reaper>,
    /// Requests in flight, by stream, so `cancel` and input can reach them.
    streams: Mutex<HashMap<u32, Inflight>>,
    shells: shells::Shells,
    services: services::Services,
}

impl Agent {
    fn send(&self, frame: &Frame) {
        self.link.send(frame)
    }

    /// Routes the input frames of `stream` to the returned receiver
    /// (`None` ends the input; a dropped sender is a cancel).
    fn accept_input(&self, stream: u32) -> std::sync::mpsc::Receiver<Option<Vec<u8>>> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.streams
            .lock()
            .unwrap()
            .insert(stream, Inflight::Input(tx));
        rx
    }
}

fn main() {
    if sys::getpid() == 1 {
        if std::path::Path::new(boot::INITRAMFS_MARKER).exists() {
            if let Err(e) = boot::switch_to_root_disk() {
                eprintln!("pyro-agent: cannot switch to the root disk: {e}");
                boot::power_off();
            }
        }
        boot::prepare_userland();
    }
    let port = match find_port() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pyro-agent: {e}");
            if sys::getpid() == 1 {
                boot::power_off();
            }
            std::process::exit(1);
        }
    };
    if let Err(e) = serve(&port) {
        eprintln!("pyro-agent: {e}");
    }
    if sys::getpid() == 1 {
        boot::power_off();
    }
}

/// The device node of the agent's virtio-serial port.
fn find_port() -> io::Result<PathBuf> {
    for _ in 0..5000 {
        if let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") {
            for entry in entries.flatten() {
                let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                if name.trim() == pyro_protocol::PORT_NAME {
                    let dev = PathBuf::from("/dev").join(entry.file_name());
                    if dev.exists() {
                        return Ok(dev);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("virtio-serial port {} not found", pyro_protocol::PORT_NAME),
    ))
}

fn serve(path: &std::path::Path) -> io::Result<()> {
    let port = OpenOptions::new().read(true).write(true).open(path)?;
    let agent = Arc::new(Agent {
        link: Arc::new(Link {
            port: Mutex::new(port.try_clone()?),
        }),
        reaper: Arc::new(reaper::Reaper::default()),
        streams: Mutex::new(HashMap::new()),
        shells: shells::Shells::default(),
        services: services::Services::default(),
    });
    let reaper = agent.reaper.clone();
    std::thread::spawn(move || reaper.run());

    let mut reader = port;
    let mut decoder = Decoder::default();
    let mut buf = vec![0u8; 256 * 1024];
    let mut host_connected = false;
    loop {
        match reader.read(&mut buf) {
            // End-of-file means no host is connected right now. Wait for
            // one; whatever the old host had in flight is abandoned.
            Ok(0) => {
                if host_connected {
                    host_connected = false;
                    decoder.reset();
                    cancel_all(&agent);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(n) => {
                host_connected = true;
                decoder.push(&buf[..n]);
                loop {
                    match decoder.next_frame() {
                        Ok(Some(frame)) => dispatch(&agent, frame),
                        Ok(None) => break,
                        Err(e) => {
                            eprintln!("pyro-agent: dropping input: {e}");
                            decoder.reset();
                            break;
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("pyro-agent: read: {e}");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

fn cancel_all(agent: &Agent) {
    for (_, inflight) in agent.streams.lock().unwrap().drain() {
        if let Inflight::Exec(tx) = inflight {
            let _ = tx.send(exec::Event::Cancel);
        }
        // Dropping an input sender cancels that request's input.
    }
}

fn dispatch(agent: &Arc<Agent>, frame: Frame) {
    let stream = frame.stream;
    if frame.kind == Kind::Input {
        if let Some(Inflight::Input(tx)) = agent.streams.lock().unwrap().get(&stream) {
            let _ = tx.send(Some(frame.body));
        }
        return;
    }
    if frame.kind != Kind::Message {
        return;
    }
    let reply = |m: Message| agent.send(&Frame::message(stream, &m));
    let message = match frame.decode_message() {
        Ok(m) => m,
        Err(e) => {
            return reply(Message::Error {
                message: format!("unsupported request: {e}"),
            })
        }
    };
    match message {
        Message::Hello { generations, .. } if stream == CONTROL_STREAM => {
            let Some(generation) = generations
                .iter()
                .filter(|g| SUPPORTED_GENERATIONS.contains(g))
                .max()
            else {
                return reply(Message::Error {
                    message: format!(
                        "no common protocol generation: host speaks {generations:?}, agent {SUPPORTED_GENERATIONS:?}"
                    ),
                });
            };
            reply(Message::Welcome {
                generation: *generation,
                agent_version: VERSION.into(),
                kernel_release: sys::kernel_release(),
                boot_ms: sys::boottime_ms(),
            })
        }
        Message::Activate(a) => {
            let mut problems = Vec::new();
            if let Some(seed) = a.entropy.as_deref().and_then(unhex) {
                if let Err(e) = sys::reseed_random(&seed) {
                    problems.push(format!("random: {e}"));
                }
            }
            if let Err(e) = sys::set_realtime(a.unix_time_ms) {
                problems.push(format!("clock: {e}"));
            }
            if let Err(e) = sys::sethostname(&a.hostname) {
                problems.push(format!("hostname: {e}"));
            }
            let _ = std::fs::write("/etc/hostname", format!("{}\n", a.hostname));
            if let Some(net) = &a.network {
                if let Err(e) = configure_network(net) {
                    problems.push(format!("network: {e}"));
                }
            }
            if problems.is_empty() {
                reply(Message::Done)
            } else {
                reply(Message::Error {
                    message: problems.join("; "),
                })
            }
        }
        Message::Exec(req) => {
            let (tx, rx) = std::sync::mpsc::channel();
            agent
                .streams
                .lock()
                .unwrap()
                .insert(stream, Inflight::Exec(tx.clone()));
            let agent = agent.clone();
            std::thread::spawn(move || {
                exec::run(&agent, stream, req, tx, rx);
                agent.streams.lock().unwrap().remove(&stream);
            });
        }
        Message::Cancel => match agent.streams.lock().unwrap().remove(&stream) {
            Some(Inflight::Exec(tx)) => {
                let _ = tx.send(exec::Event::Cancel);
                // Still running until it reports; keep it reachable.
                agent
                    .streams
                    .lock()
                    .unwrap()
                    .insert(stream, Inflight::Exec(tx));
            }
            Some(Inflight::Input(_)) | None => {}
        },
        Message::InputEnd => {
            if let Some(Inflight::Input(tx)) = agent.streams.lock().unwrap().remove(&stream) {
                let _ = tx.send(None);
            }
        }
        Message::PutArchive(req) => {
            let rx = agent.accept_input(stream);
            reply_later(agent, stream, move |agent| {
                let mut input = files::InputReader::new(rx);
                let put = files::put_archive(&req, &mut input);
                agent.streams.lock().unwrap().remove(&stream);
                let (entry_count, bytes_written) = put?;
                Ok(Message::ArchivePut {
                    entry_count,
                    bytes_written,
                })
            });
        }
        Message::TunnelOpen { port } => {
            let rx = agent.accept_input(stream);
            let agent = agent.clone();
            std::thread::spawn(move || tunnel::run(&agent, stream, port, rx));
        }
        Message::GetArchive { path } => {
            reply_later(agent, stream, move |agent| {
                files::get_archive(&path, &mut files::FrameWriter::new(&agent.link, stream))
            });
        }
        Message::ReadFile { path, max_bytes } => {
            reply_later(agent, stream, move |agent| {
                files::read_file(
                    &path,
                    max_bytes,
                    &mut files::FrameWriter::new(&agent.link, stream),
                )
            });
        }
        Message::ListFiles { path, recursive } => reply(
            files::list_files(&path, recursive)
                .unwrap_or_else(|message| Message::Error { message }),
        ),
        Message::Freeze => match sys::freeze(std::path::Path::new("/"), true) {
            Ok(()) => {
                // Never stay frozen if the host forgets or dies.
                std::thread::spawn(|| {
                    std::thread::sleep(Duration::from_secs(30));
                    let _ = sys::freeze(std::path::Path::new("/"), false);
                });
                reply(Message::Done)
            }
            Err(e) => reply(Message::Error {
                message: format!("freeze: {e}"),
            }),
        },
        Message::ShellOpen(req) => reply(shell_reply(shells::open(agent, req))),
        Message::ShellRead {
            shell_id,
            cursor,
            max_bytes,
        } => reply(shell_reply(shells::read(
            agent, &shell_id, cursor, max_bytes,
        ))),
        Message::ShellWrite { shell_id, data } => {
            reply(shell_reply(shells::write(agent, &shell_id, &data)))
        }
        Message::ShellSignal { shell_id, signal } => {
            reply(shell_reply(shells::signal(agent, &shell_id, signal)))
        }
        Message::ShellClose { shell_id } => reply(shell_reply(shells::close(agent, &shell_id))),
        // Readiness can take a while: answer from a thread of its own.
        Message::ServiceStart(spec) => reply_later(agent, stream, move |agent| {
            services::start(agent, spec).map(Message::Service)
        }),
        Message::ServiceStatus { name } => reply(match services::status(agent, &name) {
            Ok(s) => Message::Service(s),
            Err(message) => Message::Error { message },
        }),
        Message::ServiceList => reply(Message::Services {
            services: services::list(agent),
        }),
        Message::ServiceLogs { name, tail_lines } => {
            reply(match services::logs(agent, &name, tail_lines) {
                Ok((stdout, stderr, truncated)) => Message::ServiceLog {
                    stdout,
                    stderr,
                    truncated,
                },
                Err(message) => Message::Error { message },
            })
        }
        Message::ServiceStop { name } => reply_later(agent, stream, move |agent| {
            services::stop(agent, &name).map(Message::Service)
        }),
        Message::InstallSecrets { secrets } => match files::install_secrets(&secrets) {
            Ok(()) => reply(Message::Done),
            Err(message) => reply(Message::Error { message }),
        },
        Message::Thaw => match sys::freeze(std::path::Path::new("/"), false) {
            Ok(()) => reply(Message::Done),
            Err(e) => reply(Message::Error {
                message: format!("thaw: {e}"),
            }),
        },
        Message::Ping => reply(Message::Pong),
        Message::Shutdown => {
            reply(Message::Done);
            boot::power_off();
        }
        other => reply(Message::Error {
            message: format!("unexpected message: {}", type_name(&other)),
        }),
    }
}

/// Answers `stream` from a thread of its own, for requests that take a
/// while or stream output; an `Err` becomes the `error` reply.
fn reply_later(
    agent: &Arc<Agent>,
    stream: u32,
    work: impl FnOnce(&Arc<Agent>) -> Result<Message, String> + Send + 'static,
) {
    let agent = agent.clone();
    std::thread::spawn(move || {
        let reply = work(&agent).unwrap_or_else(|message| Message::Error { message });
        agent.send(&Frame::message(stream, &reply));
    });
}

fn configure_network(net: &pyro_protocol::NetworkConfig) -> Result<(), String> {
    let parse = |s: &str| {
        s.parse::<std::net::Ipv4Addr>()
            .map_err(|e| format!("{s}: {e}"))
    };
    // The NIC's driver may still be binding.
    for _ in 0..500 {
        if std::path::Path::new("/sys/class/net")
            .join(&net.interface)
            .exists()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    sys::configure_ipv4(
        &net.interface,
        parse(&net.address)?,
        net.prefix,
        parse(&net.gateway)?,
    )
    .map_err(|e| format!("{}: {e}", net.interface))?;
    let resolv: String = net
        .dns
        .iter()
        .map(|d| format!("nameserver {d}\n"))
        .collect();
    std::fs::write("/etc/resolv.conf", resolv).map_err(|e| format!("resolv.conf: {e}"))
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn shell_reply(r: Result<pyro_protocol::ShellState, String>) -> Message {
    match r {
        Ok(s) => Message::Shell(s),
        Err(message) => Message::Error { message },
    }
}

fn type_name(m: &Message) -> String {
    serde_json::to_value(m)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
        .unwrap_or_default()
}
