//! A connection to a VM's supervisor (see `supervisor`): the supervisor's
//! own requests on stream 0, guest requests on streams of their own.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use pyro_protocol::{ExecRequest, ExitStatus, Frame, Kind, Message};

use crate::error::{Error, Result};
use crate::vmm::channel::{self, stream, ChannelError};
use crate::vmm::control::{ControlRequest, ControlResponse, ServicePort};
use crate::vmm::dir::VmDir;

pub struct VmClient {
    socket: UnixStream,
    next_stream: u32,
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
        })
    }

    fn control(&mut self, req: &ControlRequest) -> Result<ControlResponse> {
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
                Err(e) => return Err(lost(e.into())),
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

    fn call(
        &mut self,
        message: &Message,
        input: Option<&mut dyn Read>,
        on_data: channel::OnData<'_>,
    ) -> Result<Message> {
        let stream = self.next_stream;
        self.next_stream += 1;
        channel::call(&mut self.socket, stream, message, input, on_data).map_err(|e| match e {
            // Reading the input is ours, not the VM's.
            ChannelError::Input(e) => Error::Io {
                context: "read input".into(),
                source: e,
            },
            e => lost(e),
        })
    }

    /// Runs a command in the guest, streaming its output into `sink`.
    pub fn exec(&mut self, req: ExecRequest, sink: &mut dyn OutputSink) -> Result<ExitStatus> {
        let reply = self.call(&Message::Exec(req), None, &mut |kind, bytes| match kind {
            Kind::Stderr => sink.stderr(bytes),
            _ => sink.stdout(bytes),
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
        match self.call(message, input, &mut |_, bytes| output(bytes))? {
            Message::Error { message } => Err(Error::Guest(message)),
            m => Ok(m),
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
