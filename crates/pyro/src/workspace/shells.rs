//! Interactive shells in a running workspace: a PTY in the guest that keeps
//! its state (directory, variables, jobs) between calls. Output lives in
//! the agent's bounded buffer, addressed by byte cursors; `plain` renders a
//! chunk through a terminal emulator (`vt100`), so what comes back is the
//! text a person would see, full-screen redraws included. Shells end with
//! their VM: on stop, reset and delete.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pyro_protocol::{Message, ShellOpen, ShellState, ShellStatus};
use serde::{Deserialize, Serialize};

use crate::contract::defaults;
use crate::error::{Error, Result};
use crate::host;
use crate::paths::Context;
use crate::workspace::files::workspace_path;
use crate::workspace::vm::connect;
use crate::workspace::{secrets, Workspace};

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenShell {
    pub cwd: String,
    pub cols: u16,
    pub rows: u16,
    /// Secrets as environment variables: secret name → variable name.
    pub secret_env: BTreeMap<String, String>,
}

impl Default for OpenShell {
    fn default() -> Self {
        OpenShell {
            cwd: defaults::workspace_path(),
            cols: defaults::cols(),
            rows: defaults::rows(),
            secret_env: BTreeMap::new(),
        }
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadShell {
    pub cursor: u64,
    pub max_chars: u64,
    /// Render through a terminal emulator: the text as it would show.
    pub plain: bool,
    /// Keep reading until no output arrived for this long (1-10000 ms).
    pub wait_for_idle_ms: Option<u64>,
}

impl Default for ReadShell {
    fn default() -> Self {
        ReadShell {
            cursor: 0,
            max_chars: defaults::max_chars(),
            plain: false,
            wait_for_idle_ms: None,
        }
    }
}

/// A shell as every shell call reports it.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShellInfo {
    pub workspace_id: String,
    pub shell_id: String,
    /// `running`, `exited` or `closed`.
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub state: ShellStatus,
    pub exit_code: Option<i32>,
    pub cwd: String,
    pub cols: u16,
    pub rows: u16,
    /// Where the returned output starts.
    pub cursor: u64,
    /// Pass this as `cursor` to read on.
    pub next_cursor: u64,
    /// Output the bounded buffer dropped before `cursor` (the reader fell behind).
    pub dropped_bytes: u64,
    pub output: String,
    /// More output is waiting past `next_cursor`.
    pub truncated: bool,
    pub closed: bool,
}

fn info(id: &str, s: ShellState, output: String) -> ShellInfo {
    ShellInfo {
        workspace_id: id.into(),
        closed: s.state == ShellStatus::Closed,
        shell_id: s.shell_id,
        state: s.state,
        exit_code: s.exit_code,
        cwd: s.cwd,
        cols: s.cols,
        rows: s.rows,
        cursor: s.cursor,
        next_cursor: s.next_cursor,
        dropped_bytes: s.dropped_bytes,
        output,
        truncated: s.truncated,
    }
}

fn shell_call(ctx: &Context, ws: &Workspace, message: Message) -> Result<ShellState> {
    let mut c = connect(ctx, ws)?;
    match c.request(&message, None, &mut |_| {})? {
        Message::Shell(s) => Ok(s),
        other => Err(Error::unexpected(&other)),
    }
}

/// The largest terminal a shell may have.
pub const MAX_COLS: u16 = 1000;
pub const MAX_ROWS: u16 = 1000;
/// The most cells a `plain` render may take (rows × columns).
const MAX_RENDER_CELLS: usize = 4_000_000;

pub fn open(ctx: &Context, id: &str, p: &OpenShell) -> Result<ShellInfo> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    if !(1..=MAX_COLS).contains(&p.cols) || !(1..=MAX_ROWS).contains(&p.rows) {
        return Err(Error::invalid(format!(
            "cols must be 1 to {MAX_COLS} and rows 1 to {MAX_ROWS}"
        )));
    }
    let cwd = workspace_path(&p.cwd)?;
    let record = ws.read()?;
    let env = secrets::environment(&ws.secret_values(&record)?, &p.secret_env)?;
    let s = shell_call(
        ctx,
        &ws,
        Message::ShellOpen(ShellOpen {
            shell_id: host::random_id(6),
            cwd,
            cols: p.cols,
            rows: p.rows,
            env,
        }),
    )?;
    Ok(info(id, s, String::new()))
}

/// Renders terminal output as the screen text a person would see.
pub fn render_plain(raw: &str, cols: u16, rows: u16) -> String {
    // The size comes from the guest: the host's own limits bound it.
    let cols = cols.clamp(1, MAX_COLS);
    let rows = rows.clamp(1, MAX_ROWS);
    // Tall enough that nothing scrolls away (within the cell budget);
    // absolute cursor moves from full-screen programs still land where
    // they would on the real screen.
    let lines = raw.matches('\n').count();
    let tall = (usize::from(rows) + lines)
        .min(MAX_RENDER_CELLS / usize::from(cols))
        .min(usize::from(u16::MAX));
    let tall = u16::try_from(tall).unwrap_or(u16::MAX).max(rows);
    let nz = |n: u16| std::num::NonZeroU16::new(n.max(1)).expect("at least 1");
    let mut parser = vt100::Parser::new(nz(tall), nz(cols), 0);
    parser.process(
        raw.replace('\n', "\r\n")
            .replace("\r\r\n", "\r\n")
            .as_bytes(),
    );
    let text = parser.screen().contents();
    let trimmed: Vec<&str> = text.lines().map(str::trim_end).collect();
    let mut out = trimmed.join("\n");
    while out.ends_with('\n') {
        out.pop();
    }
    out
}

pub fn read(ctx: &Context, id: &str, shell_id: &str, p: &ReadShell) -> Result<ShellInfo> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    if p.max_chars == 0 {
        return Err(Error::invalid("max_chars must be at least 1"));
    }
    let read_once = |cursor: u64, max: u64| {
        shell_call(
            ctx,
            &ws,
            Message::ShellRead {
                shell_id: shell_id.into(),
                cursor,
                max_bytes: max,
            },
        )
    };
    let mut s = read_once(p.cursor, p.max_chars)?;
    if let Some(idle) = p.wait_for_idle_ms {
        if !(1..=10_000).contains(&idle) {
            return Err(Error::invalid("wait_for_idle_ms must be 1 to 10000"));
        }
        // Collect until the shell has been quiet for `idle`, it exits, or
        // max_chars is reached; never longer than 30 s.
        let start = Instant::now();
        let mut quiet_since = Instant::now();
        let mut seen = s.next_cursor;
        while s.state == ShellStatus::Running
            && (s.next_cursor - s.cursor) < p.max_chars
            && quiet_since.elapsed() < Duration::from_millis(idle)
            && start.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(50));
            let more = read_once(s.cursor, p.max_chars)?;
            if more.next_cursor > seen {
                seen = more.next_cursor;
                quiet_since = Instant::now();
            }
            s = more;
        }
    }
    let raw = secrets::redact(&s.output, &ws.redactions()?);
    let output = if p.plain {
        render_plain(&raw, s.cols, s.rows)
    } else {
        raw
    };
    Ok(info(id, s, output))
}

pub fn write(
    ctx: &Context,
    id: &str,
    shell_id: &str,
    input: &str,
    append_newline: bool,
) -> Result<ShellInfo> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    let mut data = input.to_string();
    if append_newline {
        data.push('\n');
    }
    let s = shell_call(
        ctx,
        &ws,
        Message::ShellWrite {
            shell_id: shell_id.into(),
            data,
        },
    )?;
    Ok(info(id, s, String::new()))
}

pub fn signal_number(name: &str) -> Result<i32> {
    match name.trim_start_matches("SIG") {
        "INT" => Ok(libc::SIGINT),
        "TERM" => Ok(libc::SIGTERM),
        "HUP" => Ok(libc::SIGHUP),
        "KILL" => Ok(libc::SIGKILL),
        other => Err(Error::invalid(format!(
            "signal {other:?}: use INT, TERM, HUP or KILL"
        ))),
    }
}

pub fn signal(ctx: &Context, id: &str, shell_id: &str, signal_name: &str) -> Result<ShellInfo> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    let s = shell_call(
        ctx,
        &ws,
        Message::ShellSignal {
            shell_id: shell_id.into(),
            signal: signal_number(signal_name)?,
        },
    )?;
    Ok(info(id, s, String::new()))
}

pub fn close(ctx: &Context, id: &str, shell_id: &str) -> Result<ShellInfo> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    let s = shell_call(
        ctx,
        &ws,
        Message::ShellClose {
            shell_id: shell_id.into(),
        },
    )?;
    Ok(info(id, s, String::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_size_renders_within_the_host_limits() {
        let raw = "x\n".repeat(200_000);
        let out = render_plain(&raw, u16::MAX, u16::MAX);
        assert!(out.lines().count() <= MAX_RENDER_CELLS / usize::from(MAX_COLS));
        assert!(out.ends_with('x'));
        assert_eq!(
            render_plain("hi", 0, 0),
            "i",
            "a 1x1 screen shows the last character"
        );
    }

    #[test]
    fn plain_renders_the_final_screen() {
        // A full-screen redraw: clear, then draw at absolute positions.
        let raw = "old text\r\n\x1b[2J\x1b[H\x1b[1;1Hfinal screen\x1b[3;5Hthird line\x1b[0m";
        assert_eq!(render_plain(raw, 40, 5), "final screen\n\n    third line");
        // Carriage returns and erase-line overwrite text in place.
        assert_eq!(
            render_plain("progress 10%\rprogress 99%\x1b[K\r\ndone\r\n", 40, 3),
            "progress 99%\ndone"
        );
    }
}
