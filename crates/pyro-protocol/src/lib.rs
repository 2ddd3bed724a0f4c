//! The wire format between the pyro host and the guest agent.
//!
//! One byte stream (a virtio-serial port on the guest side, a UNIX socket on
//! the host side) carries many concurrent conversations. Each conversation is
//! a *stream*, named by a `u32` that travels in the frame header, outside the
//! body, so a router (the supervisor) can forward frames without parsing
//! them.
//!
//! # Frame layout (immutable across protocol generations)
//!
//! ```text
//! +------------------+------------------+----------+----------------------+
//! | body length: u32 | stream id: u32   | kind: u8 | body: `length` bytes |
//! | little endian    | little endian    |          |                      |
//! +------------------+------------------+----------+----------------------+
//! ```
//!
//! `kind` is [`Kind`]: a JSON-encoded [`Message`], or raw bytes of one of a
//! command's standard streams. Raw data frames keep large outputs free of any
//! encoding overhead.
//!
//! # Conversations
//!
//! Stream 0 carries the handshake: the host sends [`Message::Hello`] with the
//! generations it speaks, the agent answers [`Message::Welcome`] with the one
//! it chose. A request (for example [`Message::Exec`]) opens a stream chosen
//! by the host; the agent answers on the same stream, and a *terminal*
//! message ([`Message::is_terminal`]) closes it. [`Message::Cancel`] on an
//! open stream asks the agent to abandon that request.
//!
//! # Evolution
//!
//! New message types are only sent once the peer's generation is known to
//! understand them; new fields are optional (`#[serde(default)]`). A newer
//! host must keep driving an older agent frozen inside an image or snapshot.
//! `tests/golden/` holds one example of every message per generation, so any
//! change to the encoding shows up in review.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The newest protocol generation this crate speaks.
pub const GENERATION: u32 = 1;

/// Every generation this crate can speak, oldest first.
pub const SUPPORTED_GENERATIONS: &[u32] = &[1];

/// Header bytes in front of every body.
pub const HEADER_LEN: usize = 9;

/// Largest body a peer may send. Larger payloads are split into several
/// frames by the sender.
pub const MAX_BODY_LEN: usize = 1 << 20;

/// The stream reserved for the handshake.
pub const CONTROL_STREAM: u32 = 0;

/// Where a workspace's files live in the guest; file operations are
/// confined to it.
pub const WORKSPACE_ROOT: &str = "/workspace";

/// Name of the virtio-serial port the agent serves on.
pub const PORT_NAME: &str = "org.pyro.agent";

/// What a frame's body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A JSON-encoded [`Message`].
    Message = 0,
    /// Bytes written by a command to its standard output.
    Stdout = 1,
    /// Bytes written by a command to its standard error.
    Stderr = 2,
    /// Input for a request (host → agent), e.g. an archive being uploaded;
    /// [`Message::InputEnd`] closes it.
    Input = 3,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            0 => Some(Kind::Message),
            1 => Some(Kind::Stdout),
            2 => Some(Kind::Stderr),
            3 => Some(Kind::Input),
            _ => None,
        }
    }
}

/// One frame on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub stream: u32,
    pub kind: Kind,
    pub body: Vec<u8>,
}

/// Why bytes could not be turned into a frame or a message.
#[derive(Debug)]
pub enum FrameError {
    Io(io::Error),
    TooLarge(usize),
    UnknownKind(u8),
    /// The peer closed the stream in the middle of a frame.
    Truncated,
    BadMessage(serde_json::Error),
    NotAMessage,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Io(e) => write!(f, "i/o error: {e}"),
            FrameError::TooLarge(n) => {
                write!(f, "frame body of {n} bytes exceeds {MAX_BODY_LEN}")
            }
            FrameError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            FrameError::Truncated => write!(f, "connection closed mid-frame"),
            FrameError::BadMessage(e) => write!(f, "malformed message: {e}"),
            FrameError::NotAMessage => write!(f, "expected a message frame"),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Io(e) => Some(e),
            FrameError::BadMessage(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

impl Frame {
    /// A message frame. A message too large for one frame is replaced by an
    /// `error` saying so: encoding never fails and never panics, so a large
    /// reply cannot end the peer that builds it.
    pub fn message(stream: u32, message: &Message) -> Frame {
        let body = match serde_json::to_vec(message) {
            Ok(body) if body.len() <= MAX_BODY_LEN => body,
            Ok(body) => serde_json::to_vec(&Message::Error {
                message: format!(
                    "the reply ({} bytes) exceeds the {MAX_BODY_LEN}-byte frame limit",
                    body.len()
                ),
            })
            .unwrap_or_default(),
            Err(e) => serde_json::to_vec(&Message::Error {
                message: format!("unencodable message: {e}"),
            })
            .unwrap_or_default(),
        };
        Frame {
            stream,
            kind: Kind::Message,
            body,
        }
    }

    /// A data frame; `body` is at most [`MAX_BODY_LEN`] bytes (longer bodies
    /// are cut there: callers send data in pieces far smaller).
    pub fn data(stream: u32, kind: Kind, mut body: Vec<u8>) -> Frame {
        debug_assert!(body.len() <= MAX_BODY_LEN, "data frames are sent in pieces");
        body.truncate(MAX_BODY_LEN);
        Frame { stream, kind, body }
    }

    /// Header and body in one buffer, so a single `write_all` under a lock
    /// keeps frames from interleaving. Frames are built within the size
    /// limit ([`Frame::message`], [`Frame::data`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.body.len());
        out.extend_from_slice(&(self.body.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.stream.to_le_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(&self.body);
        out
    }

    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.encode())
    }

    /// Reads one frame. `Ok(None)` means the peer closed the stream cleanly
    /// between frames.
    pub fn read_from(r: &mut impl Read) -> Result<Option<Frame>, FrameError> {
        let mut header = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            match r.read(&mut header[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(FrameError::Truncated),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let (len, stream, kind) = parse_header(&header)?;
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => FrameError::Truncated,
            _ => FrameError::Io(e),
        })?;
        Ok(Some(Frame { stream, kind, body }))
    }

    pub fn decode_message(&self) -> Result<Message, FrameError> {
        if self.kind != Kind::Message {
            return Err(FrameError::NotAMessage);
        }
        serde_json::from_slice(&self.body).map_err(FrameError::BadMessage)
    }
}

fn parse_header(header: &[u8; HEADER_LEN]) -> Result<(usize, u32, Kind), FrameError> {
    let len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
    let stream = u32::from_le_bytes(header[4..8].try_into().unwrap());
    if len > MAX_BODY_LEN {
        return Err(FrameError::TooLarge(len));
    }
    let kind = Kind::from_byte(header[8]).ok_or(FrameError::UnknownKind(header[8]))?;
    Ok((len, stream, kind))
}

/// Incremental decoder for transports that deliver bytes in arbitrary
/// pieces and may restart (the guest's virtio-serial port reads end-of-file
/// while no host is connected; a new host starts a fresh byte stream).
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Drops any partial frame, for when the peer went away.
    pub fn reset(&mut self) {
        self.buf.clear();
    }

    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let header: [u8; HEADER_LEN] = self.buf[..HEADER_LEN].try_into().unwrap();
        let (len, stream, kind) = parse_header(&header)?;
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let body = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(Frame { stream, kind, body }))
    }
}

/// Every message of the protocol. The `type` field names the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Host → agent, stream 0: the generations the host speaks.
    Hello {
        generations: Vec<u32>,
        host_version: String,
    },
    /// Agent → host, stream 0: the generation chosen and facts about the guest.
    Welcome {
        generation: u32,
        agent_version: String,
        kernel_release: String,
        /// Milliseconds from kernel start to the agent being ready.
        boot_ms: u64,
        /// cgroup v2 is mounted: every command runs in a cgroup of its
        /// own, and ending it ends everything it started.
        #[serde(default)]
        cgroups: bool,
    },
    /// Host → agent: give this booted guest its identity.
    Activate(Activation),
    /// Host → agent: run a command.
    Exec(ExecRequest),
    /// Host → agent: abandon the request open on this stream.
    Cancel,
    /// Host → agent: sync disks and power off.
    Shutdown,
    /// Host → agent: liveness probe.
    Ping,
    /// Host → agent: the input of this stream is complete.
    InputEnd,
    /// Host → agent: unpack the tar archive that follows as input into
    /// `dest`; then delete `remove`. With `atomic`, only regular files are
    /// accepted and each lands by rename after all were written.
    PutArchive(PutArchive),
    /// Host → agent: send `path` (file, directory or symlink) as a tar
    /// archive in `stdout` frames; a directory is sent as its contents.
    GetArchive {
        path: String,
    },
    /// Host → agent: describe the files under `path`.
    ListFiles {
        path: String,
        recursive: bool,
    },
    /// Host → agent: send up to `max_bytes` of a regular file in `stdout`
    /// frames.
    ReadFile {
        path: String,
        max_bytes: u64,
    },
    /// Host → agent: flush and freeze the root filesystem (for a
    /// consistent disk snapshot); `thaw` undoes it.
    Freeze,
    Thaw,
    /// Host → agent: start an interactive shell on a new PTY.
    ShellOpen(ShellOpen),
    /// Host → agent: output of a shell from byte offset `cursor`.
    ShellRead {
        shell_id: String,
        cursor: u64,
        max_bytes: u64,
    },
    /// Host → agent: type into a shell.
    ShellWrite {
        shell_id: String,
        data: String,
    },
    /// Host → agent: signal a shell's foreground process group.
    ShellSignal {
        shell_id: String,
        signal: i32,
    },
    /// Host → agent: hang up and end a shell.
    ShellClose {
        shell_id: String,
    },
    /// Agent → host: a shell's state and, for reads, output (terminal).
    Shell(ShellState),
    /// Host → agent: start a long-running service and wait for it to be
    /// ready (terminal reply: `service`).
    ServiceStart(ServiceSpec),
    ServiceStatus {
        name: String,
    },
    ServiceList,
    /// Host → agent: the last `tail_lines` lines (all if absent) of a
    /// service's stdout and stderr.
    ServiceLogs {
        name: String,
        tail_lines: Option<u64>,
    },
    /// Host → agent: SIGTERM the service's processes, SIGKILL after a grace.
    ServiceStop {
        name: String,
    },
    /// Agent → host: one service (terminal).
    Service(ServiceState),
    /// Agent → host: every service (terminal).
    Services {
        services: Vec<ServiceState>,
    },
    /// Agent → host: a service's logs (terminal).
    ServiceLog {
        stdout: String,
        stderr: String,
        truncated: bool,
    },
    /// Host → agent: replace the secrets under `/run/pyro-secrets` (a
    /// tmpfs: they never reach the disk) with these, one 0600 file each.
    InstallSecrets {
        secrets: BTreeMap<String, String>,
    },
    /// Host → agent: connect to TCP `port` on the guest's loopback and
    /// relay bytes: `input` frames go to the connection (`input_end` closes
    /// its write side), what the guest sends comes back as `stdout` frames,
    /// and `done` ends the stream when the guest side closes. `cancel`
    /// drops the connection. Published ports are built on this.
    TunnelOpen {
        port: u16,
    },
    /// Agent → host: a `put_archive` finished (terminal).
    ArchivePut {
        entry_count: u64,
        bytes_written: u64,
    },
    /// Agent → host: a `get_archive` finished (terminal).
    ArchiveSent {
        artifact_type: ArtifactType,
        entry_count: u64,
        bytes_written: u64,
    },
    /// Agent → host: answer to `list_files` (terminal).
    FileList {
        path: String,
        artifact_type: ArtifactType,
        entries: Vec<FileEntry>,
        /// More entries exist than one reply carries.
        #[serde(default)]
        truncated: bool,
    },
    /// Agent → host: a `read_file` finished (terminal).
    FileRead {
        size_bytes: u64,
        truncated: bool,
    },
    /// Agent → host: a request without a payload of its own succeeded.
    Done,
    /// Agent → host: the command of an `exec` started.
    Started {
        pid: u32,
    },
    /// Agent → host: the command of an `exec` finished (terminal).
    Exited(ExitStatus),
    /// Agent → host: answer to `ping`.
    Pong,
    /// Agent → host: the request failed (terminal).
    Error {
        message: String,
    },
}

impl Message {
    /// Whether this message ends its stream.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Message::Welcome { .. }
                | Message::Done
                | Message::Exited(_)
                | Message::Pong
                | Message::Error { .. }
                | Message::ArchivePut { .. }
                | Message::ArchiveSent { .. }
                | Message::FileList { .. }
                | Message::FileRead { .. }
                | Message::Shell(_)
                | Message::Service(_)
                | Message::Services { .. }
                | Message::ServiceLog { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PutArchive {
    pub dest: String,
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub atomic: bool,
}

/// How the agent decides a service is ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Readiness {
    /// The path exists.
    File { path: String },
    /// `HOST:PORT` accepts a TCP connection.
    Tcp { address: String },
    /// An HTTP GET of the URL answers 200-399.
    Http { url: String },
    /// The shell command exits 0.
    Command { command: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub command: Command,
    pub cwd: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub readiness: Option<Readiness>,
    pub ready_timeout_ms: u64,
    pub ready_interval_ms: u64,
}

/// Where a service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceStatus {
    Running,
    /// Ended on its own (with an exit code).
    Exited,
    /// Stopped on request.
    Stopped,
    /// Never became ready (see its stop reason).
    Failed,
    /// A state a newer agent knows and this host does not.
    #[serde(other)]
    Unknown,
}

/// Why a service is not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceStopReason {
    ProcessExitedBeforeReady,
    ReadinessTimeout,
    /// Stopped by SIGTERM.
    Sigterm,
    /// Killed after ignoring SIGTERM.
    Sigkill,
    #[serde(other)]
    Unknown,
}

/// Where a shell is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShellStatus {
    Running,
    /// Its process ended (with an exit code).
    Exited,
    /// Closed on request.
    Closed,
    #[serde(other)]
    Unknown,
}

macro_rules! names {
    ($ty:ty { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $ty {
            /// The name it has on the wire and in every result.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(<$ty>::$variant => $name,)*
                }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names!(ServiceStatus {
    Running => "running",
    Exited => "exited",
    Stopped => "stopped",
    Failed => "failed",
    Unknown => "unknown",
});
names!(ServiceStopReason {
    ProcessExitedBeforeReady => "process_exited_before_ready",
    ReadinessTimeout => "readiness_timeout",
    Sigterm => "sigterm",
    Sigkill => "sigkill",
    Unknown => "unknown",
});
names!(ShellStatus {
    Running => "running",
    Exited => "exited",
    Closed => "closed",
    Unknown => "unknown",
});

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceState {
    pub name: String,
    pub state: ServiceStatus,
    pub command: String,
    pub cwd: String,
    pub pid: Option<u32>,
    pub exit_code: Option<i32>,
    pub started_at_unix_ms: u64,
    pub ready_at_unix_ms: Option<u64>,
    pub ended_at_unix_ms: Option<u64>,
    /// Why it is not running.
    pub stop_reason: Option<ServiceStopReason>,
    pub readiness: Option<Readiness>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShellOpen {
    pub shell_id: String,
    pub cwd: String,
    pub cols: u16,
    pub rows: u16,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShellState {
    pub shell_id: String,
    pub state: ShellStatus,
    pub exit_code: Option<i32>,
    pub cols: u16,
    pub rows: u16,
    pub cwd: String,
    /// The offset the returned output starts at (past any dropped bytes).
    pub cursor: u64,
    /// The offset to read from next.
    pub next_cursor: u64,
    /// Bytes between the requested cursor and `cursor` that the bounded
    /// buffer no longer holds.
    pub dropped_bytes: u64,
    /// Output, as raw terminal bytes (lossy UTF-8).
    pub output: String,
    /// More output is buffered past what was returned.
    pub truncated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactType {
    File,
    Directory,
    Symlink,
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub artifact_type: ArtifactType,
    pub size_bytes: u64,
    #[serde(default)]
    pub link_target: Option<String>,
}

/// Per-sandbox identity, sent after boot so that a booted guest can be
/// snapshotted once and activated many times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activation {
    pub hostname: String,
    /// Host wall clock, milliseconds since the Unix epoch.
    pub unix_time_ms: u64,
    /// How to configure the guest's network interface, if it has one.
    #[serde(default)]
    pub network: Option<NetworkConfig>,
    /// Hex-encoded random bytes from the host, mixed into the guest's
    /// entropy pool before the CRNG is reseeded (guests restored from one
    /// snapshot start with the same random state).
    #[serde(default)]
    pub entropy: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub interface: String,
    pub address: String,
    pub prefix: u8,
    pub gateway: String,
    pub dns: Vec<String>,
}

/// What to run: an argv run directly, or one string given to `/bin/sh -lc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Argv(Vec<String>),
    Shell(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub command: Command,
    /// Added to the agent's base environment (PATH, HOME, LANG).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; the guest's `/` when absent.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Kill the command's process group after this long.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Flush the guest's filesystems to the disk before reporting the exit,
    /// so what the command wrote survives a crash of the VM.
    #[serde(default)]
    pub sync_after: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code; `128 + signal` when a signal ended the command, 124
    /// when the timeout did.
    pub exit_code: i32,
    /// The signal that ended the command, if one did.
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub timed_out: bool,
    pub duration_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_travel_as_the_names_of_generation_one() {
        fn text<T: Serialize>(v: &T) -> String {
            serde_json::to_string(v).unwrap()
        }
        assert_eq!(text(&ServiceStatus::Running), "\"running\"");
        assert_eq!(text(&ServiceStatus::Failed), "\"failed\"");
        assert_eq!(
            text(&ServiceStopReason::ProcessExitedBeforeReady),
            "\"process_exited_before_ready\""
        );
        assert_eq!(text(&ShellStatus::Closed), "\"closed\"");
        for s in [
            ServiceStatus::Running,
            ServiceStatus::Exited,
            ServiceStatus::Stopped,
            ServiceStatus::Failed,
        ] {
            assert_eq!(text(&s), format!("\"{s}\""));
        }
        // A state only a newer agent knows does not fail the whole reply.
        let s: ServiceStatus = serde_json::from_str("\"paused\"").unwrap();
        assert_eq!(s, ServiceStatus::Unknown);
    }

    #[test]
    fn frames_round_trip_through_reader_and_decoder() {
        let frames = vec![
            Frame::message(0, &Message::Ping),
            Frame::data(7, Kind::Stdout, b"hello".to_vec()),
            Frame::data(7, Kind::Stderr, Vec::new()),
            Frame::message(u32::MAX, &Message::Cancel),
        ];
        let wire: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();

        let mut cursor = io::Cursor::new(wire.clone());
        for expected in &frames {
            assert_eq!(
                Frame::read_from(&mut cursor).unwrap().as_ref(),
                Some(expected)
            );
        }
        assert!(Frame::read_from(&mut cursor).unwrap().is_none());

        // Byte at a time through the decoder.
        let mut decoder = Decoder::default();
        let mut decoded = Vec::new();
        for b in wire {
            decoder.push(&[b]);
            while let Some(f) = decoder.next_frame().unwrap() {
                decoded.push(f);
            }
        }
        assert_eq!(decoded, frames);
    }

    #[test]
    fn a_message_too_large_for_a_frame_becomes_an_error() {
        let huge = Message::Error {
            message: "x".repeat(MAX_BODY_LEN + 1),
        };
        let f = Frame::message(3, &huge);
        assert!(f.body.len() <= MAX_BODY_LEN);
        match f.decode_message().unwrap() {
            Message::Error { message } => assert!(message.contains("exceeds"), "{message}"),
            other => panic!("{other:?}"),
        }
        let mut wire = io::Cursor::new(f.encode());
        assert_eq!(Frame::read_from(&mut wire).unwrap().unwrap().stream, 3);
    }

    #[test]
    fn oversized_and_unknown_frames_are_rejected() {
        let mut header = Vec::new();
        header.extend_from_slice(&((MAX_BODY_LEN + 1) as u32).to_le_bytes());
        header.extend_from_slice(&1u32.to_le_bytes());
        header.push(0);
        let err = Frame::read_from(&mut io::Cursor::new(header)).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(_)));

        let mut unknown = Frame::data(1, Kind::Stdout, vec![]).encode();
        unknown[8] = 99;
        let mut d = Decoder::default();
        d.push(&unknown);
        assert!(matches!(d.next_frame(), Err(FrameError::UnknownKind(99))));
    }

    #[test]
    fn truncated_frame_is_an_error_not_a_clean_close() {
        let mut wire = Frame::data(1, Kind::Stdout, b"abc".to_vec()).encode();
        wire.pop();
        let err = Frame::read_from(&mut io::Cursor::new(wire)).unwrap_err();
        assert!(matches!(err, FrameError::Truncated));
    }

    #[test]
    fn unknown_message_types_fail_to_decode() {
        let f = Frame {
            stream: 1,
            kind: Kind::Message,
            body: br#"{"type":"from_the_future"}"#.to_vec(),
        };
        assert!(matches!(f.decode_message(), Err(FrameError::BadMessage(_))));
    }

    #[test]
    fn optional_fields_may_be_omitted() {
        let m: Message =
            serde_json::from_str(r#"{"type":"exec","command":{"shell":"true"}}"#).unwrap();
        assert_eq!(
            m,
            Message::Exec(ExecRequest {
                command: Command::Shell("true".into()),
                env: BTreeMap::new(),
                cwd: None,
                timeout_ms: None,
                sync_after: false,
            })
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn kind() -> impl Strategy<Value = Kind> {
            prop_oneof![Just(Kind::Stdout), Just(Kind::Stderr), Just(Kind::Input)]
        }

        fn frame() -> impl Strategy<Value = Frame> {
            prop_oneof![
                (
                    any::<u32>(),
                    kind(),
                    prop::collection::vec(any::<u8>(), 0..300)
                )
                    .prop_map(|(stream, kind, body)| Frame::data(stream, kind, body)),
                (any::<u32>(), "[ -~]{0,40}")
                    .prop_map(|(stream, s)| Frame::message(stream, &Message::Error { message: s })),
                any::<u32>().prop_map(|stream| Frame::message(stream, &Message::Cancel)),
            ]
        }

        proptest! {
            /// Frames survive the wire however the bytes are split.
            #[test]
            fn frames_decode_as_encoded_whatever_the_chunking(
                frames in prop::collection::vec(frame(), 0..8),
                cuts in prop::collection::vec(1usize..64, 1..16),
            ) {
                let wire: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
                let mut decoder = Decoder::default();
                let mut decoded = Vec::new();
                let (mut at, mut i) = (0, 0);
                while at < wire.len() {
                    let n = cuts[i % cuts.len()].min(wire.len() - at);
                    decoder.push(&wire[at..at + n]);
                    at += n;
                    i += 1;
                    while let Some(f) = decoder.next_frame().unwrap() {
                        decoded.push(f);
                    }
                }
                prop_assert_eq!(&decoded, &frames);
                let mut cursor = io::Cursor::new(wire);
                for f in &frames {
                    let read = Frame::read_from(&mut cursor).unwrap();
                    prop_assert_eq!(read.as_ref(), Some(f));
                }
            }

            /// Arbitrary bytes never panic the decoder: they decode, wait for
            /// more, or are refused.
            #[test]
            fn garbage_is_refused_not_fatal(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
                let mut decoder = Decoder::default();
                decoder.push(&bytes);
                for _ in 0..bytes.len() + 1 {
                    match decoder.next_frame() {
                        Ok(Some(f)) => { let _ = f.decode_message(); }
                        Ok(None) | Err(_) => break,
                    }
                }
                let _ = Frame::read_from(&mut io::Cursor::new(bytes));
            }
        }
    }
}
