//! Serving the host: frames in, requests dispatched (long ones on threads
//! of their own), answers out on the same stream. Runs over any byte
//! stream: the guest's virtio-serial port, or a socket pair in tests.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyro_protocol::{
    Decoder, Frame, Kind, Message, CONTROL_STREAM, SUPPORTED_GENERATIONS, WORKSPACE_ROOT,
};

use crate::{boot, exec, files, reaper, services, shells, sys, tunnel};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where the agent keeps things. In a guest these are fixed paths; tests
/// point them into a scratch directory on the host.
pub struct Config {
    /// The directory that stands for `/workspace` (the protocol's paths
    /// name `/workspace`; files are confined to this directory).
    pub workspace: PathBuf,
    /// Services' output, outside the workspace.
    pub service_logs: PathBuf,
    /// Installed secrets (a tmpfs in a guest).
    pub secrets: PathBuf,
    /// Where per-command cgroups are made (a mounted cgroup v2), if at all.
    pub cgroups: Option<PathBuf>,
    /// The agent runs the machine (PID 1 of a guest): it may set the clock
    /// and hostname, freeze the root filesystem, power off, and must reap
    /// every orphan.
    pub system: bool,
    /// An image's defaults for commands, if the root filesystem has them.
    pub image_config: Option<PathBuf>,
}

impl Config {
    pub fn guest(pid1: bool) -> Config {
        Config {
            workspace: WORKSPACE_ROOT.into(),
            service_logs: "/run/pyro-services".into(),
            secrets: "/run/pyro-secrets".into(),
            cgroups: Some(crate::cgroup::ROOT.into()),
            system: pid1,
            image_config: Some(crate::image::CONFIG.into()),
        }
    }
}

/// The host end: frames are written whole under one lock.
pub struct Link {
    out: Mutex<Box<dyn Write + Send>>,
}

impl Link {
    pub fn send(&self, frame: &Frame) {
        // A write fails only while no host is connected; the host that
        // connects next starts a fresh conversation, so dropping is right.
        let _ = self.out.lock().unwrap().write_all(&frame.encode());
    }
}

pub enum Inflight {
    Exec(Sender<exec::Event>),
    /// A request reading input frames; `None` ends the input.
    Input(Sender<Option<Vec<u8>>>),
}

pub struct Agent {
    pub config: Config,
    pub jail: files::Jail,
    pub link: Arc<Link>,
    pub reaper: Arc<reaper::Reaper>,
    /// Requests in flight, by stream, so `cancel` and input can reach them.
    pub streams: Mutex<HashMap<u32, Inflight>>,
    pub shells: shells::Shells,
    pub services: services::Services,
    /// The login shell's environment, for shell commands.
    pub login: crate::login::LoginEnv,
    /// The workspace's secret values, kept out of shell output.
    pub secrets: Arc<Mutex<Vec<Vec<u8>>>>,
    /// The image's defaults for every command.
    pub image: crate::image::Image,
}

impl Agent {
    /// An agent that answers on `out`. A guest's PID 1 reaps every orphan;
    /// any other agent waits for its own children only.
    pub fn new(config: Config, out: Box<dyn Write + Send>) -> Arc<Agent> {
        let reaper = Arc::new(reaper::Reaper::new(config.system));
        if config.system {
            let r = reaper.clone();
            std::thread::spawn(move || r.run());
        }
        let image = config
            .image_config
            .as_ref()
            .map(|p| crate::image::Image::load(&p.to_string_lossy(), "/etc"))
            .unwrap_or_default();
        if let (Some((uid, gid)), true) = (image.owner(), config.system) {
            let _ = std::fs::create_dir_all(&config.workspace);
            let _ = crate::sys::lchown(&config.workspace, uid, gid);
        }
        Arc::new(Agent {
            jail: files::Jail::new(config.workspace.clone(), image.owner()),
            image,
            config,
            link: Arc::new(Link {
                out: Mutex::new(out),
            }),
            reaper,
            streams: Mutex::new(HashMap::new()),
            shells: shells::Shells::default(),
            services: services::Services::default(),
            login: crate::login::LoginEnv::default(),
            secrets: Arc::default(),
        })
    }

    pub fn send(&self, frame: &Frame) {
        self.link.send(frame)
    }

    /// Routes the input frames of `stream` to the returned receiver
    /// (`None` ends the input; a dropped sender is a cancel).
    pub fn accept_input(&self, stream: u32) -> std::sync::mpsc::Receiver<Option<Vec<u8>>> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.streams
            .lock()
            .unwrap()
            .insert(stream, Inflight::Input(tx));
        rx
    }
}

/// What end-of-file on the input means.
pub enum OnEof {
    /// No host is connected right now (a virtio-serial port): abandon what
    /// the old host had in flight and wait for the next.
    WaitForHost,
    /// The connection is over: return (a socket pair in the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Stop,
}

/// Reads requests from `reader` and answers them, until the input ends
/// (with [`OnEof::Stop`]) or fails.
pub fn serve(agent: &Arc<Agent>, mut reader: impl Read, on_eof: OnEof) -> io::Result<()> {
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
                    cancel_all(agent);
                }
                match on_eof {
                    OnEof::WaitForHost => std::thread::sleep(Duration::from_millis(5)),
                    OnEof::Stop => return Ok(()),
                }
            }
            Ok(n) => {
                host_connected = true;
                decoder.push(&buf[..n]);
                loop {
                    match decoder.next_frame() {
                        Ok(Some(frame)) => dispatch_isolated(agent, frame),
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
            Err(e) => match on_eof {
                OnEof::WaitForHost => {
                    eprintln!("pyro-agent: read: {e}");
                    std::thread::sleep(Duration::from_millis(5));
                }
                OnEof::Stop => return Err(e),
            },
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

/// One request's failure is that request's error, never the agent's end
/// (the agent is PID 1: its end is the VM's).
fn dispatch_isolated(agent: &Arc<Agent>, frame: Frame) {
    let stream = frame.stream;
    let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(agent, frame)));
    if handled.is_err() {
        agent.send(&Frame::message(stream, &failed()));
    }
}

fn failed() -> Message {
    Message::Error {
        message: "the agent failed this request (see the guest console)".into(),
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
                cgroups: agent
                    .config
                    .cgroups
                    .as_ref()
                    .is_some_and(|root| root.join("cgroup.procs").exists()),
            })
        }
        Message::Activate(_) | Message::Freeze | Message::Thaw | Message::Shutdown
            if !agent.config.system =>
        {
            reply(Message::Error {
                message: format!(
                    "{} is only done by a guest's own agent",
                    type_name(&message)
                ),
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
                let put = files::put_archive(&agent.jail, &req, &mut input);
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
                files::get_archive(
                    &agent.jail,
                    &path,
                    &mut files::FrameWriter::new(&agent.link, stream),
                )
            });
        }
        Message::ReadFile { path, max_bytes } => {
            reply_later(agent, stream, move |agent| {
                files::read_file(
                    &agent.jail,
                    &path,
                    max_bytes,
                    &mut files::FrameWriter::new(&agent.link, stream),
                )
            });
        }
        Message::ListFiles { path, recursive } => reply(
            files::list_files(&agent.jail, &path, recursive)
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
        Message::InstallSecrets { secrets } => {
            *agent.secrets.lock().unwrap() = secrets
                .values()
                .filter(|v| !v.is_empty())
                .map(|v| v.as_bytes().to_vec())
                .collect();
            let on_tmpfs = agent.config.system;
            match files::install_secrets(
                &agent.config.secrets,
                &secrets,
                on_tmpfs,
                agent.image.owner(),
            ) {
                Ok(()) => reply(Message::Done),
                Err(message) => reply(Message::Error { message }),
            }
        }
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
        let work = std::panic::AssertUnwindSafe(|| work(&agent));
        let reply = match std::panic::catch_unwind(work) {
            Ok(r) => r.unwrap_or_else(|message| Message::Error { message }),
            Err(_) => failed(),
        };
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
