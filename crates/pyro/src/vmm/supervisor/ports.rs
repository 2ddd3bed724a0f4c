//! Published ports: the supervisor listens on the host's loopback and
//! relays each accepted connection to a guest port through a tunnel over
//! the agent channel (`tunnel_open`). The guest needs no route to the host
//! and the host no route into the guest; a port lives as long as its
//! service (or the VM), whoever reads logs or starts other services.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyro_protocol::{Frame, Kind, Message};

use crate::vmm::channel::stream;
use crate::vmm::control::{ControlRequest, PortBinding, ServicePort};

/// Published ports bind here only.
const PUBLISH_HOST: &str = "127.0.0.1";
/// Connections one published port relays at once; more are closed as
/// they arrive (each costs threads and a tunnel in the guest).
pub const MAX_CONNECTIONS: usize = 64;

struct Publication {
    port: ServicePort,
    closed: Arc<AtomicBool>,
}

/// Makes a new client of the supervisor out of one end of a socket pair.
pub type Attach = Arc<dyn Fn(UnixStream) + Send + Sync>;

/// The ports published on one VM.
#[derive(Default)]
pub struct Ports {
    list: std::sync::Mutex<Vec<Publication>>,
}

impl Ports {
    /// Listens on the host's loopback (`host_port`, or any free port) and
    /// relays each connection to `guest_port` as a client that `attach`
    /// makes.
    pub fn publish(
        &self,
        service: String,
        guest_port: u16,
        host_port: Option<u16>,
        attach: Attach,
    ) -> Result<ServicePort, String> {
        publish(self, service, guest_port, host_port, attach)
    }

    /// Closes every port of `service`: new connections are refused at once.
    pub fn unpublish(&self, service: &str) -> Vec<ServicePort> {
        unpublish(self, service)
    }

    pub fn list(&self) -> Vec<ServicePort> {
        self.list
            .lock()
            .unwrap()
            .iter()
            .map(|p| p.port.clone())
            .collect()
    }
}

fn publish(
    ports: &Ports,
    service: String,
    guest_port: u16,
    host_port: Option<u16>,
    attach: Attach,
) -> Result<ServicePort, String> {
    if guest_port == 0 {
        return Err("guest port 0 cannot be published".into());
    }
    let listener =
        TcpListener::bind((PUBLISH_HOST, host_port.unwrap_or(0))).map_err(|e| match host_port {
            Some(p) => format!("cannot publish on {PUBLISH_HOST}:{p}: {e}"),
            None => format!("cannot publish on {PUBLISH_HOST}: {e}"),
        })?;
    let host_port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let port = ServicePort {
        service,
        binding: PortBinding {
            host: PUBLISH_HOST.into(),
            host_port,
            guest_port,
            protocol: "tcp".into(),
        },
    };
    let closed = Arc::new(AtomicBool::new(false));
    {
        let closed = closed.clone();
        let open = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if closed.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(tcp) = conn else { continue };
                if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    open.fetch_sub(1, Ordering::SeqCst);
                    drop(tcp);
                    continue;
                }
                let (attach, open) = (attach.clone(), open.clone());
                std::thread::spawn(move || {
                    relay(&attach, tcp, guest_port);
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
    }
    ports.list.lock().unwrap().push(Publication {
        port: port.clone(),
        closed,
    });
    Ok(port)
}

fn unpublish(ports: &Ports, service: &str) -> Vec<ServicePort> {
    let mut ports = ports.list.lock().unwrap();
    let (gone, kept): (Vec<_>, Vec<_>) = ports.drain(..).partition(|p| p.port.service == service);
    *ports = kept;
    drop(ports);
    gone.into_iter()
        .map(|p| {
            p.closed.store(true, Ordering::SeqCst);
            // Wake the accept loop so it sees the flag and drops the listener.
            let addr = SocketAddr::from(([127, 0, 0, 1], p.port.binding.host_port));
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
            p.port
        })
        .collect()
}

/// One accepted connection: a private client of the supervisor opens a
/// tunnel to the guest port and copies bytes both ways.
fn relay(attach: &Attach, tcp: TcpStream, guest_port: u16) {
    // This connection is a client of its own, with one stream.
    const STREAM: u32 = stream::FIRST_CLIENT;
    let Ok((mine, theirs)) = UnixStream::pair() else {
        return;
    };
    attach(theirs);
    let _ = tcp.set_nodelay(true);
    let (Ok(mut to_sup), Ok(mut from_tcp)) = (mine.try_clone(), tcp.try_clone()) else {
        return;
    };
    // Traffic on a published port is not a user's activity: it does not
    // hold off the idle timeout.
    let passive = Frame {
        stream: stream::CONTROL,
        kind: Kind::Message,
        body: serde_json::to_vec(&ControlRequest::Attach {
            owner: false,
            passive: true,
        })
        .expect("control requests serialize"),
    };
    if to_sup.write_all(&passive.encode()).is_err()
        || to_sup
            .write_all(&Frame::message(STREAM, &Message::TunnelOpen { port: guest_port }).encode())
            .is_err()
    {
        return;
    }
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from_tcp.read(&mut buf) {
                Ok(0) => {
                    let _ = to_sup.write_all(&Frame::message(STREAM, &Message::InputEnd).encode());
                    return;
                }
                Ok(n) => {
                    let frame = Frame::data(STREAM, Kind::Input, buf[..n].to_vec());
                    if to_sup.write_all(&frame.encode()).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    // The guest's bytes go to the TCP peer from a thread of their own, at
    // most `BACKLOG` frames behind: a peer that stops reading loses its
    // connection instead of stalling the supervisor for every client.
    const BACKLOG: usize = 128;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(BACKLOG);
    let (Ok(mut to_tcp), Ok(closer)) = (tcp.try_clone(), tcp.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        for bytes in rx {
            if to_tcp.write_all(&bytes).is_err() {
                break;
            }
        }
        // Done (or failed): this also ends the copy in the other direction.
        let _ = to_tcp.shutdown(Shutdown::Both);
    });
    let mut from_sup = mine;
    let mut lagging = false;
    while let Ok(Some(frame)) = Frame::read_from(&mut from_sup) {
        if frame.stream == stream::CONTROL {
            continue; // `Attached`
        }
        let done = match frame.kind {
            Kind::Stdout => {
                lagging = tx.try_send(frame.body).is_err();
                lagging
            }
            Kind::Message => frame
                .decode_message()
                .map(|m| m.is_terminal())
                .unwrap_or(true),
            _ => false,
        };
        if done {
            break;
        }
    }
    drop(tx);
    if lagging {
        let _ = closer.shutdown(Shutdown::Both);
    }
    // The private client's end makes the supervisor cancel the tunnel if it
    // is still open in the guest; the TCP side closes once what was
    // received is written.
    let _ = from_sup.shutdown(Shutdown::Both);
    drop(tcp);
}
