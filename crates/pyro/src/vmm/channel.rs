//! One request on a framed connection (a guest agent's port, or a
//! supervisor's control socket, which forwards the guest protocol): send
//! it on a stream of its own, stream input after it if there is any, and
//! read frames until that stream's terminal message. Every request the
//! host makes goes through [`call`].

use std::io::{self, Read, Write};

use pyro_protocol::{Frame, FrameError, Kind, Message};

/// Stream ids with a fixed meaning.
pub mod stream {
    /// The handshake (`hello`/`welcome`) with the agent, and on a control
    /// socket the supervisor's own requests.
    pub const CONTROL: u32 = pyro_protocol::CONTROL_STREAM;
    /// Requests the supervisor (or a template build) makes to the agent
    /// before it routes clients: activation, the template's warm-up.
    pub const BOOTSTRAP: u32 = 1;
    /// The supervisor's `shutdown` at teardown.
    pub const SHUTDOWN: u32 = 2;
    /// Client streams are renumbered from here upward on the agent's side,
    /// so they never meet the ones above.
    pub const FIRST_ROUTED: u32 = 16;
    /// A client numbers its own streams from here.
    pub const FIRST_CLIENT: u32 = 1;
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("the connection closed")]
    Closed,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// Reading the request's input failed (not the connection).
    #[error("read input: {0}")]
    Input(io::Error),
    /// The output's receiver stopped the request (it had enough).
    #[error("the reply was abandoned")]
    Abandoned,
    /// The request does not fit one frame.
    #[error("the request is {0} bytes encoded; one request may be at most {max} bytes", max = pyro_protocol::MAX_BODY_LEN)]
    TooLarge(usize),
}

/// Output of the request's stream, as it arrives; `false` abandons the
/// request (the connection is then unusable: drop it).
pub type OnData<'a> = &'a mut dyn FnMut(Kind, &[u8]) -> bool;

/// Sends `message` on `stream`, then `input` (as input frames and an
/// `input_end`) if given, and returns the stream's terminal message (an
/// agent's `error` reply included); output frames go to `on_data`, frames
/// of other streams are skipped.
pub fn call<C: Read + Write>(
    conn: &mut C,
    stream: u32,
    message: &Message,
    input: Option<&mut dyn Read>,
    on_data: OnData<'_>,
) -> Result<Message, ChannelError> {
    // Refused here, before anything is sent: the frame would not carry it.
    let size = serde_json::to_vec(message).map_or(0, |b| b.len());
    if size > pyro_protocol::MAX_BODY_LEN {
        return Err(ChannelError::TooLarge(size));
    }
    conn.write_all(&Frame::message(stream, message).encode())?;
    if let Some(input) = input {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = input.read(&mut buf).map_err(ChannelError::Input)?;
            if n == 0 {
                break;
            }
            conn.write_all(&Frame::data(stream, Kind::Input, buf[..n].to_vec()).encode())?;
        }
        conn.write_all(&Frame::message(stream, &Message::InputEnd).encode())?;
    }
    read_reply(conn, stream, on_data)
}

/// Reads frames until `stream`'s terminal message.
pub fn read_reply(
    conn: &mut impl Read,
    stream: u32,
    on_data: OnData<'_>,
) -> Result<Message, ChannelError> {
    loop {
        let frame = Frame::read_from(conn)?.ok_or(ChannelError::Closed)?;
        if frame.stream != stream {
            continue;
        }
        match frame.kind {
            Kind::Stdout | Kind::Stderr => {
                if !on_data(frame.kind, &frame.body) {
                    return Err(ChannelError::Abandoned);
                }
            }
            Kind::Input => {}
            Kind::Message => {
                let m = frame.decode_message()?;
                if m.is_terminal() {
                    return Ok(m);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_call_streams_input_and_collects_its_own_stream_only() {
        let (mut host, mut guest) = UnixStream::pair().unwrap();
        let peer = std::thread::spawn(move || {
            let request = Frame::read_from(&mut guest).unwrap().unwrap();
            assert_eq!(request.decode_message().unwrap(), Message::Ping);
            let mut got = Vec::new();
            loop {
                let f = Frame::read_from(&mut guest).unwrap().unwrap();
                match f.kind {
                    Kind::Input => got.extend_from_slice(&f.body),
                    _ => break,
                }
            }
            for f in [
                Frame::data(9, Kind::Stdout, b"other stream".to_vec()),
                Frame::data(5, Kind::Stdout, got),
                Frame::data(5, Kind::Stderr, b"!".to_vec()),
                Frame::message(5, &Message::Pong),
            ] {
                guest.write_all(&f.encode()).unwrap();
            }
        });
        let mut out = Vec::new();
        let reply = call(
            &mut host,
            5,
            &Message::Ping,
            Some(&mut &b"hello"[..]),
            &mut |_, b| {
                out.extend_from_slice(b);
                true
            },
        )
        .unwrap();
        assert_eq!(reply, Message::Pong);
        assert_eq!(out, b"hello!");
        peer.join().unwrap();
        drop(host);
    }

    #[test]
    fn a_request_too_large_for_a_frame_is_refused_before_sending() {
        let (mut host, mut guest) = UnixStream::pair().unwrap();
        let huge = Message::Error {
            message: "x".repeat(pyro_protocol::MAX_BODY_LEN),
        };
        let err = call(&mut host, 1, &huge, None, &mut |_, _| true).unwrap_err();
        assert!(matches!(err, ChannelError::TooLarge(n) if n > pyro_protocol::MAX_BODY_LEN));
        drop(host);
        let mut sent = Vec::new();
        guest.read_to_end(&mut sent).unwrap();
        assert!(sent.is_empty(), "{} bytes went out", sent.len());
    }

    #[test]
    fn a_closed_connection_is_an_error() {
        let (mut host, guest) = UnixStream::pair().unwrap();
        drop(guest);
        assert!(matches!(
            read_reply(&mut host, 1, &mut |_, _| true),
            Err(ChannelError::Closed) | Err(ChannelError::Io(_))
        ));
    }
}
