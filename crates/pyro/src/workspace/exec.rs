//! Commands in a workspace and their history (`commands/NNNNNN.json`, one
//! entry each, sequence numbers taken up front so concurrent commands get
//! distinct entries).

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use pyro_protocol::{ExecRequest, WORKSPACE_ROOT};
use serde::{Deserialize, Serialize};

use crate::contract::{defaults, now, validate_timeout, Command, ExecutionMode};
use crate::error::{IoContext, Result};
use crate::host;
use crate::paths::Context;
use crate::vmm::client::{Capture, OutputSink};
use crate::workspace::record::LastCommand;
use crate::workspace::secrets;
use crate::workspace::vm::connect;
use crate::workspace::Workspace;

/// Parameters of [`Pyro::exec_workspace`](crate::Pyro::exec_workspace).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceExec {
    pub command: Command,
    pub timeout_seconds: u64,
    /// Secrets to pass as environment variables: secret name → variable
    /// name (empty: the secret's own name).
    pub secret_env: BTreeMap<String, String>,
}

impl WorkspaceExec {
    pub fn new(command: Command) -> WorkspaceExec {
        WorkspaceExec {
            command,
            timeout_seconds: defaults::timeout_seconds(),
            secret_env: BTreeMap::new(),
        }
    }
}

/// One command of the history; also what `exec` returns.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandEntry {
    pub workspace_id: String,
    pub sequence: u64,
    pub command: String,
    pub cwd: String,
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub duration_ms: u64,
    pub started_at: f64,
    pub stdout: String,
    pub stderr: String,
    /// Only the last part of a stream is kept (1 MiB), in the result and
    /// in the history; these say whether earlier output was dropped.
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    pub execution_mode: ExecutionMode,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceLogs {
    pub workspace_id: String,
    pub count: usize,
    pub entries: Vec<CommandEntry>,
}

pub fn exec(
    ctx: &Context,
    id: &str,
    p: &WorkspaceExec,
    sink: &mut dyn OutputSink,
) -> Result<CommandEntry> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    p.command.validate()?;
    validate_timeout(p.timeout_seconds)?;
    let record = ws.read()?;
    let values = ws.secret_values(&record)?;
    let env = secrets::environment(&values, &p.secret_env)?;
    let hide = secrets::redaction_list(&values);
    let mut client = connect(ctx, &ws)?;
    let sequence = ws.update(|r| Ok(r.next_command()))?;
    let started_at = now();
    let started = Instant::now();
    let mut redactor = secrets::Redactor::new(sink, &hide);
    let mut capture = Capture::new(&mut redactor);
    let status = client.exec(
        ExecRequest {
            command: p.command.clone().into(),
            env,
            cwd: Some(WORKSPACE_ROOT.into()),
            timeout_ms: Some(p.timeout_seconds * 1000),
            sync_after: true,
        },
        &mut capture,
    );
    let ((stdout, stdout_truncated), (stderr, stderr_truncated)) =
        (capture.stdout.finish(), capture.stderr.finish());
    redactor.finish();
    let status = status?;
    let shown = secrets::redact(&p.command.display(), &hide);
    let entry = CommandEntry {
        workspace_id: id.into(),
        sequence,
        command: shown.clone(),
        cwd: WORKSPACE_ROOT.into(),
        exit_code: status.exit_code,
        signal: status.signal,
        timed_out: status.timed_out,
        duration_ms: started.elapsed().as_millis() as u64,
        started_at,
        stdout: secrets::redact(&stdout, &hide),
        stderr: secrets::redact(&stderr, &hide),
        stdout_truncated,
        stderr_truncated,
        execution_mode: ExecutionMode::GuestVirtioSerial,
    };
    host::write_atomic(
        &ws.commands().join(format!("{sequence:06}.json")),
        &serde_json::to_vec(&entry).expect("entries serialize"),
    )?;
    ws.update(|r| {
        r.command_finished(LastCommand {
            sequence,
            command: shown,
            exit_code: status.exit_code,
        });
        Ok(())
    })?;
    Ok(entry)
}

pub fn logs(ctx: &Context, id: &str) -> Result<WorkspaceLogs> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    let mut files: Vec<PathBuf> = fs::read_dir(ws.commands())
        .ctx(|| "read history".into())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let entries: Vec<CommandEntry> = files
        .iter()
        .filter_map(|p| serde_json::from_slice(&fs::read(p).ok()?).ok())
        .collect();
    Ok(WorkspaceLogs {
        workspace_id: id.into(),
        count: entries.len(),
        entries,
    })
}
