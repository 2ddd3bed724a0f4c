//! A connection to a VM's supervisor (see `supervisor`): the supervisor's
//! own requests on stream 0, guest requests on streams of their own.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pyro_protocol::{ExecRequest, ExitStatus, Frame, Kind, Message};

use crate::error::{Error, Result};
use crate::vmm::channel::{self, stream, ChannelError};
use crate::vmm::control::{ControlRequest, ControlResponse, ResumeInfo, ServicePort};
use crate::vmm::dir::VmDir;

pub struct VmClient {
    socket: UnixStream,
    next_stream: u32,
    /// How long a reply may keep us waiting without a frame.
    deadline: Duration,
}

/// How long the supervisor or the guest may keep a request waiting without
/// a word, unless the request says otherwise.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(120);
/// What a command's own timeout is given on top, before its silence is the
/// guest's failure.
pub const EXEC_GRACE: Duration = Duration::from_secs(30);

fn timed_out(e: &ChannelError) -> bool {
    let io = match e {
        ChannelError::Io(e) => e,
        ChannelError::Frame(pyro_protocol::FrameError::Io(e)) => e,
        _ => return false,
    };
    matches!(
        io.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Receives a command's output as it arrives.
pub trait OutputSink {
    fn stdout(&mut self, bytes: &[u8]);
    fn stderr(&mut self, bytes: &[u8]);
}

/// Output that is only wanted in the result, or not at all.
pub struct Discard;

impl OutputSink for Discard {
    fn stdout(&mut self, _: &[u8]) {}
    fn stderr(&mut self, _: &[u8]) {}
}

/// How much of each of a command's streams results keep (the last bytes;
/// the sink a caller passes still sees everything as it arrives).
pub const CAPTURE_LIMIT: usize = 1 << 20;

/// The last `limit` bytes of a stream, and whether anything was dropped.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    bytes: Vec<u8>,
    limit: usize,
    pub truncated: bool,
}

impl Tail {
    pub fn new(limit: usize) -> Tail {
        Tail {
            bytes: Vec::new(),
            limit,
            truncated: false,
        }
    }

    pub fn push(&mut self, more: &[u8]) {
        let more = if more.len() > self.limit {
            self.truncated = true;
            self.bytes.clear();
            &more[more.len() - self.limit..]
        } else {
            more
        };
        self.bytes.extend_from_slice(more);
        // Dropping the front in batches keeps this linear.
        if self.bytes.len() > 2 * self.limit {
            let cut = self.bytes.len() - self.limit;
            self.bytes.drain(..cut);
            self.truncated = true;
        }
    }

    /// The kept text (lossy UTF-8), and whether anything was dropped.
    pub fn finish(mut self) -> (String, bool) {
        if self.bytes.len() > self.limit {
            let cut = self.bytes.len() - self.limit;
            self.bytes.drain(..cut);
            self.truncated = true;
        }
        (
            String::from_utf8_lossy(&self.bytes).into_owned(),
            self.truncated,
        )
    }
}

/// Tees a command's output to another sink and keeps the last
/// [`CAPTURE_LIMIT`] bytes of each stream.
pub(crate) struct Capture<'a> {
    inner: &'a mut dyn OutputSink,
    pub stdout: Tail,
    pub stderr: Tail,
}

impl<'a> Capture<'a> {
    pub fn new(inner: &'a mut dyn OutputSink) -> Capture<'a> {
        Capture {
            inner,
            stdout: Tail::new(CAPTURE_LIMIT),
            stderr: Tail::new(CAPTURE_LIMIT),
        }
    }
}

impl OutputSink for Capture<'_> {
    fn stdout(&mut self, bytes: &[u8]) {
        self.stdout.push(bytes);
        self.inner.stdout(bytes);
    }
    fn stderr(&mut self, bytes: &[u8]) {
        self.stderr.push(bytes);
        self.inner.stderr(bytes);
    }
}

fn lost(e: ChannelError) -> Error {
    match e {
        ChannelError::Closed => Error::VmLost("the supervisor closed the connection".into()),
        ChannelError::Frame(pyro_protocol::FrameError::BadMessage(e)) => {
            Error::VmLost(format!("bad agent reply: {e}"))
        }
        e => Error::VmLost(format!("supervisor: {e}")),
    }
}

impl VmClient {
    pub fn connect(dir: &VmDir) -> Result<VmClient> {
        let socket = UnixStream::connect(dir.control_socket()).map_err(|e| {
            Error::VmLost(format!("cannot reach the supervisor of {}: {e}", dir.id))
        })?;
        Ok(VmClient {
            socket,
            next_stream: stream::FIRST_CLIENT,
            deadline: REQUEST_DEADLINE,
        })
    }

    /// Waits at most `d` for any frame of a reply (instead of
    /// [`REQUEST_DEADLINE`]).
    pub fn with_deadline(mut self, d: Duration) -> VmClient {
        self.deadline = d;
        self
    }

    fn arm(&self, d: Duration) -> Result<()> {
        self.socket
            .set_read_timeout(Some(d.max(Duration::from_millis(1))))
            .map_err(|e| Error::VmLost(format!("supervisor: {e}")))
    }

    fn silence(d: Duration) -> Error {
        Error::VmLost(format!(
            "no answer from the VM within {}s (its guest may be stuck)",
            d.as_secs()
        ))
    }

    fn control(&mut self, req: &ControlRequest) -> Result<ControlResponse> {
        self.arm(self.deadline)?;
        let frame = Frame {
            stream: stream::CONTROL,
            kind: Kind::Message,
            body: serde_json::to_vec(req).expect("control requests serialize"),
        };
        self.socket
            .write_all(&frame.encode())
            .map_err(|e| Error::VmLost(format!("supervisor: {e}")))?;
        loop {
            match Frame::read_from(&mut self.socket) {
                Ok(Some(f)) if f.stream == stream::CONTROL => {
                    return serde_json::from_slice(&f.body)
                        .map_err(|e| Error::VmLost(format!("bad supervisor reply: {e}")))
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err(lost(ChannelError::Closed)),
                Err(e) => {
                    let e = ChannelError::from(e);
                    return Err(if timed_out(&e) {
                        Self::silence(self.deadline)
                    } else {
                        lost(e)
                    });
                }
            }
        }
    }

    /// Announces this connection; an owner's disconnect deletes a one-shot VM.
    pub fn attach(&mut self, owner: bool) -> Result<()> {
        self.attach_as(ControlRequest::Attach {
            owner,
            passive: false,
        })
    }

    /// Announces a connection that only looks: its requests do not count as
    /// activity for the idle timeout.
    pub fn attach_passive(&mut self) -> Result<()> {
        self.attach_as(ControlRequest::Attach {
            owner: false,
            passive: true,
        })
    }

    fn attach_as(&mut self, req: ControlRequest) -> Result<()> {
        match self.control(&req)? {
            ControlResponse::Attached { .. } => Ok(()),
            other => Err(Error::VmLost(format!("unexpected reply {other:?}"))),
        }
    }

    /// Stops the VM (a one-shot VM is also removed) and waits until it is.
    pub fn stop(mut self) -> Result<()> {
        match self.control(&ControlRequest::Delete) {
            Ok(ControlResponse::Deleted) => Ok(()),
            // The supervisor exits as it finishes; a closed socket means done.
            Err(Error::VmLost(_)) => Ok(()),
            Ok(other) => Err(Error::VmLost(format!("unexpected reply {other:?}"))),
            Err(e) => Err(e),
        }
    }

    /// Pauses the VM (its state saved beside its disk, QEMU ended) and
    /// waits until it is; returns the state's size.
    pub fn pause(mut self) -> Result<u64> {
        match self.control(&ControlRequest::Pause)? {
            ControlResponse::Paused { state_bytes } => Ok(state_bytes),
            ControlResponse::Error { message } => Err(Error::conflict(message)),
            other => Err(Error::VmLost(format!("unexpected reply {other:?}"))),
        }
    }

    /// Saves the running guest into `state` and copies its disk to each of
    /// `disks`, at one instant; the VM continues.
    pub fn fork(&mut self, state: &Path, disks: &[PathBuf]) -> Result<ResumeInfo> {
        match self.control(&ControlRequest::Fork {
            state: state.to_path_buf(),
            disks: disks.to_vec(),
        })? {
            ControlResponse::Forked { resume } => Ok(resume),
            ControlResponse::Error { message } => Err(Error::conflict(message)),
            other => Err(Error::VmLost(format!("unexpected reply {other:?}"))),
        }
    }

    fn call(
        &mut self,
        message: &Message,
        input: Option<&mut dyn Read>,
        on_data: channel::OnData<'_>,
    ) -> Result<Message> {
        let deadline = match message {
            // A command may be silent for its whole timeout.
            Message::Exec(req) => {
                req.timeout_ms.map_or(self.deadline, Duration::from_millis) + EXEC_GRACE
            }
            _ => self.deadline,
        };
        self.arm(deadline)?;
        let stream = self.next_stream;
        self.next_stream += 1;
        channel::call(&mut self.socket, stream, message, input, on_data).map_err(|e| match e {
            e if timed_out(&e) => Self::silence(deadline),
            // Reading the input is ours, not the VM's.
            ChannelError::Input(e) => Error::Io {
                context: "read input".into(),
                source: e,
            },
            e @ ChannelError::TooLarge(_) => Error::invalid(e.to_string()),
            e => lost(e),
        })
    }

    /// Runs a command in the guest, streaming its output into `sink`.
    pub fn exec(&mut self, req: ExecRequest, sink: &mut dyn OutputSink) -> Result<ExitStatus> {
        let reply = self.call(&Message::Exec(req), None, &mut |kind, bytes| {
            match kind {
                Kind::Stderr => sink.stderr(bytes),
                _ => sink.stdout(bytes),
            }
            true
        })?;
        match reply {
            Message::Exited(status) => Ok(status),
            // The supervisor's word that the VM went away mid-command.
            Message::Error { message } => Err(Error::VmLost(message)),
            other => Err(Error::unexpected(&other)),
        }
    }

    /// Sends one request, with `input` streamed after it if given, and
    /// returns its terminal reply; output goes to `output`. An agent
    /// `error` reply becomes [`Error::Guest`].
    pub fn request(
        &mut self,
        message: &Message,
        input: Option<&mut dyn Read>,
        output: &mut dyn FnMut(&[u8]),
    ) -> Result<Message> {
        match self.call(message, input, &mut |_, bytes| {
            output(bytes);
            true
        })? {
            Message::Error { message } => Err(Error::Guest(message)),
            m => Ok(m),
        }
    }

    /// Sends one request and writes its output into `out`, up to `limit`
    /// bytes: a reply longer than that is abandoned (and this connection
    /// with it) with an error saying `what` is too large.
    pub fn request_into(
        &mut self,
        message: &Message,
        out: &mut dyn std::io::Write,
        limit: u64,
        what: &str,
    ) -> Result<Message> {
        let mut written = 0u64;
        let mut failed: Option<std::io::Error> = None;
        let reply = self.call(message, None, &mut |_, bytes| {
            written += bytes.len() as u64;
            if written > limit {
                return false;
            }
            match out.write_all(bytes) {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        });
        if let Some(e) = failed {
            return Err(Error::Io {
                context: format!("write {what}"),
                source: e,
            });
        }
        match reply {
            Err(Error::VmLost(m)) if written > limit => Err(Error::invalid(format!(
                "{what} is larger than the limit of {limit} bytes ({m})"
            ))),
            Ok(Message::Error { message }) => Err(Error::Guest(message)),
            other => other,
        }
    }

    /// Runs a QMP command in the VM's QEMU.
    pub fn qmp(
        &mut self,
        command: &str,
        arguments: serde_json::Value,
    ) -> Result<serde_json::Value> {
        match self.control(&ControlRequest::Qmp {
            command: command.into(),
            arguments,
        })? {
            ControlResponse::Qmp { result } => Ok(result),
            ControlResponse::Error { message } => Err(Error::Guest(message)),
            other => Err(Error::VmLost(format!("unexpected reply {other:?}"))),
        }
    }

    /// Publishes `guest_port` on the host's loopback for `service`.
    pub fn publish(
        &mut self,
        service: &str,
        guest_port: u16,
        host_port: Option<u16>,
    ) -> Result<ServicePort> {
        match self.control(&ControlRequest::Publish {
            service: service.into(),
            guest_port,
            host_port,
        })? {
            ControlResponse::Ports { mut ports } if ports.len() == 1 => Ok(ports.remove(0)),
            ControlResponse::Error { message } => Err(Error::conflict(message)),
            other => Err(Error::VmLost(format!("unexpected reply {other:?}"))),
        }
    }

    /// Closes the ports of `service`; returns what was closed.
    pub fn unpublish(&mut self, service: &str) -> Result<Vec<ServicePort>> {
        self.ports_reply(&ControlRequest::Unpublish {
            service: service.into(),
        })
    }

    /// Every port published on this VM.
    pub fn ports(&mut self) -> Result<Vec<ServicePort>> {
        self.ports_reply(&ControlRequest::Ports)
    }

    fn ports_reply(&mut self, req: &ControlRequest) -> Result<Vec<ServicePort>> {
        match self.control(req)? {
            ControlResponse::Ports { ports } => Ok(ports),
            other => Err(Error::VmLost(format!("unexpected reply {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_keeps_the_last_bytes_and_says_it_cut() {
        let mut t = Tail::new(10);
        t.push(b"0123456789");
        assert_eq!(t.finish(), ("0123456789".to_string(), false));
        let mut t = Tail::new(10);
        let mut all = b"0123456789".to_vec();
        t.push(b"0123456789");
        assert!(!t.truncated);
        for _ in 0..100 {
            t.push(b"abc");
            all.extend_from_slice(b"abc");
        }
        t.push(b"xyz");
        all.extend_from_slice(b"xyz");
        let last = String::from_utf8(all[all.len() - 10..].to_vec()).unwrap();
        assert_eq!(t.finish(), (last, true));
        let mut t = Tail::new(4);
        t.push(&[b'q'; 100]);
        assert_eq!(t.finish(), ("qqqq".to_string(), true));
    }
}
