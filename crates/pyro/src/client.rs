//! A connection to a VM's supervisor (see `supervisor`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use pyro_protocol::{ExecRequest, ExitStatus, Frame, Kind, Message, CONTROL_STREAM};

use crate::error::{Error, Result};
use crate::supervisor::{ControlRequest, ControlResponse, ServicePort};
use crate::vm::VmDir;

pub struct VmClient {
    socket: UnixStream,
    next_stream: u32,
}

/// Receives a command's output as it arrives.
pub trait OutputSink {
    fn stdout(&mut self, bytes: &[u8]);
    fn stderr(&mut self, bytes: &[u8]);
}

/// Tees a command's output to another sink and keeps a copy.
pub(crate) struct Capture<'a> {
    inner: &'a mut dyn OutputSink,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl<'a> Capture<'a> {
    pub fn new(inner: &'a mut dyn OutputSink) -> Capture<'a> {
        Capture {
            inner,
            stdout: Vec::new(),
            stderr: Vec::new(),
        }
    }
}

impl OutputSink for Capture<'_> {
    fn stdout(&mut self, bytes: &[u8]) {
        self.stdout.extend_from_slice(bytes);
        self.inner.stdout(bytes);
    }
    fn stderr(&mut self, bytes: &[u8]) {
        self.stderr.extend_from_slice(bytes);
        self.inner.stderr(bytes);
    }
}

impl VmClient {
    pub fn connect(dir: &VmDir) -> Result<VmClient> {
        let socket = UnixStream::connect(dir.control_socket()).map_err(|e| {
            Error::VmLost(format!("cannot reach the supervisor of {}: {e}", dir.id))
        })?;
        Ok(VmClient {
            socket,
            next_stream: 1,
        })
    }

    fn control(&mut self, req: &ControlRequest) -> Result<ControlResponse> {
        let frame = Frame {
            stream: CONTROL_STREAM,
            kind: Kind::Message,
            body: serde_json::to_vec(req).unwrap(),
        };
        self.socket
            .write_all(&frame.encode())
            .map_err(|e| Error::VmLost(format!("supervisor: {e}")))?;
        loop {
            match Frame::read_from(&mut self.socket) {
                Ok(Some(f)) if f.stream == CONTROL_STREAM => {
                    return serde_json::from_slice(&f.body)
                        .map_err(|e| Error::VmLost(format!("bad supervisor reply: {e}")))
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(Error::VmLost("the supervisor closed the connection".into()))
                }
                Err(e) => return Err(Error::VmLost(format!("supervisor: {e}"))),
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

    /// Deletes the VM and waits until it is gone.
    pub fn delete(mut self) -> Result<()> {
        match self.control(&ControlRequest::Delete) {
            Ok(ControlResponse::Deleted) => Ok(()),
            // The supervisor exits as it finishes; a closed socket means done.
            Err(Error::VmLost(_)) => Ok(()),
            Ok(other) => Err(Error::VmLost(format!("unexpected reply {other:?}"))),
            Err(e) => Err(e),
        }
    }

    /// Runs a command in the guest, streaming its output into `sink`.
    pub fn exec(&mut self, req: ExecRequest, sink: &mut dyn OutputSink) -> Result<ExitStatus> {
        let stream = self.next_stream;
        self.next_stream += 1;
        self.send(&Frame::message(stream, &Message::Exec(req)))?;
        loop {
            let frame = match Frame::read_from(&mut self.socket) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    return Err(Error::VmLost(
                        "the supervisor closed the connection mid-command".into(),
                    ))
                }
                Err(e) => return Err(Error::VmLost(format!("supervisor: {e}"))),
            };
            if frame.stream != stream {
                continue;
            }
            match frame.kind {
                Kind::Stdout => sink.stdout(&frame.body),
                Kind::Stderr => sink.stderr(&frame.body),
                Kind::Input => {}
                Kind::Message => match frame.decode_message() {
                    Ok(Message::Exited(status)) => return Ok(status),
                    Ok(Message::Error { message }) => return Err(Error::VmLost(message)),
                    Ok(_) => {}
                    Err(e) => return Err(Error::VmLost(format!("bad agent reply: {e}"))),
                },
            }
        }
    }

    fn send(&mut self, frame: &Frame) -> Result<()> {
        self.socket
            .write_all(&frame.encode())
            .map_err(|e| Error::VmLost(format!("supervisor: {e}")))
    }

    /// Sends one request, with `input` streamed after it if given, and
    /// returns its terminal reply; output frames go to `output`. An agent
    /// `error` reply becomes [`Error::Guest`].
    pub fn request(
        &mut self,
        message: &Message,
        input: Option<&mut dyn Read>,
        output: &mut dyn FnMut(&[u8]),
    ) -> Result<Message> {
        let stream = self.next_stream;
        self.next_stream += 1;
        self.send(&Frame::message(stream, message))?;
        if let Some(input) = input {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = input.read(&mut buf).map_err(|e| Error::Io {
                    context: "read input".into(),
                    source: e,
                })?;
                if n == 0 {
                    break;
                }
                self.send(&Frame::data(stream, Kind::Input, buf[..n].to_vec()))?;
            }
            self.send(&Frame::message(stream, &Message::InputEnd))?;
        }
        loop {
            let frame = match Frame::read_from(&mut self.socket) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    return Err(Error::VmLost("the supervisor closed the connection".into()))
                }
                Err(e) => return Err(Error::VmLost(format!("supervisor: {e}"))),
            };
            if frame.stream != stream {
                continue;
            }
            match frame.kind {
                Kind::Stdout | Kind::Stderr => output(&frame.body),
                Kind::Input => {}
                Kind::Message => match frame.decode_message() {
                    Ok(Message::Error { message }) => return Err(Error::Guest(message)),
                    Ok(m) if m.is_terminal() => return Ok(m),
                    Ok(_) => {}
                    Err(e) => return Err(Error::VmLost(format!("bad agent reply: {e}"))),
                },
            }
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
            ControlResponse::Error { message } => Err(Error::InvalidArgument(message)),
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

    /// Stops the VM (a persistent one keeps its disk) and waits until it is.
    pub fn stop(self) -> Result<()> {
        self.delete()
    }
}
