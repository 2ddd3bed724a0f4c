//! Published ports: the supervisor listens on the host's loopback and
//! relays each accepted connection to a guest port through a tunnel over
//! the agent channel (`tunnel_open`). The guest needs no route to the host
//! and the host no route into the guest; a port lives as long as its
//! service (or the VM), whoever reads logs or starts other services.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyro_protocol::{Frame, Kind, Message};

use super::{serve_client, Supervisor};
use crate::vmm::channel::stream;
use crate::vmm::control::{PortBinding, ServicePort};

/// Published ports bind here only.
const PUBLISH_HOST: &str = "127.0.0.1";

pub(super) struct Publication {
    port: ServicePort,
    closed: Arc<AtomicBool>,
}

pub(super) fn publish(
    sup: &Arc<Supervisor>,
    service: String,
    guest_port: u16,
    host_port: Option<u16>,
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
        let sup = sup.clone();
        let closed = closed.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if closed.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(tcp) = conn {
                    let sup = sup.clone();
                    std::thread::spawn(move || relay(sup, tcp, guest_port));
                }
            }
        });
    }
    sup.ports.lock().unwrap().push(Publication {
        port: port.clone(),
        closed,
    });
    Ok(port)
}

/// Closes every port of `service`: new connections are refused at once.
pub(super) fn unpublish(sup: &Supervisor, service: &str) -> Vec<ServicePort> {
    let mut ports = sup.ports.lock().unwrap();
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

pub(super) fn list(sup: &Supervisor) -> Vec<ServicePort> {
    sup.ports
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.port.clone())
        .collect()
}

/// One accepted connection: a private client of the supervisor opens a
/// tunnel to the guest port and copies bytes both ways.
fn relay(sup: Arc<Supervisor>, tcp: TcpStream, guest_port: u16) {
    // This connection is a client of its own, with one stream.
    const STREAM: u32 = stream::FIRST_CLIENT;
    let Ok((mine, theirs)) = UnixStream::pair() else {
        return;
    };
    std::thread::spawn(move || serve_client(sup, theirs));
    let _ = tcp.set_nodelay(true);
    let (Ok(mut to_sup), Ok(mut from_tcp)) = (mine.try_clone(), tcp.try_clone()) else {
        return;
    };
    if to_sup
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
