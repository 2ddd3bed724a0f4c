//! A small client for QEMU's machine protocol (QMP): newline-delimited JSON
//! on a UNIX socket. Replies are matched by `id`; events in between are
//! skipped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("qmp i/o")]
    Io(#[from] std::io::Error),
    #[error("qmp sent malformed json")]
    Json(#[from] serde_json::Error),
    #[error("qmp closed the connection")]
    Closed,
    #[error("qmp command {command} failed: {message}")]
    Command { command: String, message: String },
}

/// QEMU's run state (`query-status`), as far as pyro cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    /// Waiting for incoming migration data (a restore in progress).
    InMigrate,
    Other,
}

/// Where a migration (a save or a restore) is (`query-migrate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationStatus {
    Completed,
    /// Failed or cancelled.
    Failed,
    /// Not started, set up, active, ...
    InProgress,
}

fn status_of(v: &Value) -> &str {
    v.get("status").and_then(Value::as_str).unwrap_or("")
}

impl Qmp {
    pub fn run_state(&mut self) -> Result<RunState, QmpError> {
        let v = self.execute("query-status", json!({}))?;
        Ok(match status_of(&v) {
            "running" => RunState::Running,
            "inmigrate" => RunState::InMigrate,
            _ => RunState::Other,
        })
    }

    /// The migration's status, and QEMU's whole answer (for messages).
    pub fn migration(&mut self) -> Result<(MigrationStatus, Value), QmpError> {
        let v = self.execute("query-migrate", json!({}))?;
        let status = match status_of(&v) {
            "completed" => MigrationStatus::Completed,
            "failed" | "cancelled" => MigrationStatus::Failed,
            _ => MigrationStatus::InProgress,
        };
        Ok((status, v))
    }

    /// Connects, reads the greeting and leaves capabilities negotiation.
    /// The socket must be served by process `qemu` (its directory is
    /// QEMU's own: whatever else stands there is not talked to).
    pub fn connect(socket: &Path, qemu: i32, timeout: Duration) -> Result<Qmp, QmpError> {
        let stream = connect_to(socket, qemu)?;
        stream.set_read_timeout(Some(timeout))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            next_id: 1,
        };
        qmp.read_value()?; // {"QMP": {...}}
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read_value(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(QmpError::Closed);
        }
        Ok(serde_json::from_str(&line)?)
    }

    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_vec(&json!({
            "execute": command,
            "arguments": arguments,
            "id": id,
        }))?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        loop {
            let v = self.read_value()?;
            if v.get("id").and_then(Value::as_u64) != Some(id) {
                continue; // an event
            }
            if let Some(err) = v.get("error") {
                return Err(QmpError::Command {
                    command: command.to_string(),
                    message: err
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error")
                        .to_string(),
                });
            }
            return Ok(v.get("return").cloned().unwrap_or(Value::Null));
        }
    }
}

/// A connection to the UNIX socket at `path`, if process `pid` serves it.
pub fn connect_to(path: &Path, pid: i32) -> std::io::Result<UnixStream> {
    let stream = UnixStream::connect(path)?;
    match crate::host::peer_pid(&stream) {
        Some(p) if p == pid => Ok(stream),
        other => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is served by {other:?}, not QEMU ({pid})",
                path.display()
            ),
        )),
    }
}
