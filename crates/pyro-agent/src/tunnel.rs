//! TCP tunnels: one host connection relayed to a port on the guest's
//! loopback, over the agent's own channel. The host publishes a guest port
//! by listening on its side and opening one tunnel per connection, so no
//! network path from the host into the guest is needed.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use pyro_protocol::{Frame, Kind, Message};

use crate::serve::Agent;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `port` and relays until either side closes. `input` carries
/// the host's bytes; `None` is the host's end of input, a dropped sender a
/// cancel.
pub fn run(agent: &Arc<Agent>, stream: u32, port: u16, input: Receiver<Option<Vec<u8>>>) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let conn = match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
        Ok(c) => c,
        Err(e) => {
            agent.streams.lock().unwrap().remove(&stream);
            let message = format!("connect to guest port {port}: {e}");
            return agent.send(&Frame::message(stream, &Message::Error { message }));
        }
    };
    let _ = conn.set_nodelay(true);
    let mut to_guest = match conn.try_clone() {
        Ok(c) => c,
        Err(e) => {
            agent.streams.lock().unwrap().remove(&stream);
            let message = format!("tunnel: {e}");
            return agent.send(&Frame::message(stream, &Message::Error { message }));
        }
    };
    std::thread::spawn(move || {
        loop {
            match input.recv() {
                Ok(Some(bytes)) => {
                    if to_guest.write_all(&bytes).is_err() {
                        break;
                    }
                }
                // The host's side finished sending; the guest may still answer.
                Ok(None) => {
                    let _ = to_guest.shutdown(Shutdown::Write);
                    return;
                }
                Err(_) => break,
            }
        }
        // Cancelled or the guest stopped reading: end the whole connection,
        // which also ends the reader below.
        let _ = to_guest.shutdown(Shutdown::Both);
    });

    let mut from_guest = conn;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from_guest.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => agent.send(&Frame::data(stream, Kind::Stdout, buf[..n].to_vec())),
        }
    }
    // Dropping the input sender ends the writer thread if it still runs.
    agent.streams.lock().unwrap().remove(&stream);
    let _ = from_guest.shutdown(Shutdown::Both);
    agent.send(&Frame::message(stream, &Message::Done));
}
