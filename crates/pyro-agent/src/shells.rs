//! Interactive shells on PTYs. Each shell's output goes into a bounded
//! buffer addressed by absolute byte offsets: a reader passes the offset it
//! has read up to, and learns how many bytes were dropped if it fell behind
//! the buffer.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use pyro_protocol::{ShellOpen, ShellState, ShellStatus};

use crate::cgroup::Cgroup;
use crate::serve::Agent;
use crate::sys;

/// Output kept per shell; older output is dropped.
const BUFFER_BYTES: usize = 1 << 20;

struct Shell {
    open: ShellOpen,
    master: File,
    pid: i32,
    /// Everything the shell started, to end on close.
    cgroup: Option<Cgroup>,
    buffer: Vec<u8>,
    /// Absolute offset of `buffer[0]`.
    base: u64,
    exit_code: Option<i32>,
}

#[derive(Default)]
pub struct Shells {
    shells: Mutex<HashMap<String, Arc<Mutex<Shell>>>>,
}

fn get(agent: &Agent, id: &str) -> Result<Arc<Mutex<Shell>>, String> {
    agent
        .shells
        .shells
        .lock()
        .unwrap()
        .get(id)
        .cloned()
        .ok_or_else(|| format!("no shell {id:?}"))
}

/// What one read returns at most, in raw bytes and encoded.
const READ_MAX_BYTES: u64 = 256 * 1024;
const READ_BUDGET: usize = 512 * 1024;

fn state(sh: &Shell, cursor: u64, max_bytes: u64) -> ShellState {
    let end = sh.base + sh.buffer.len() as u64;
    let start = cursor.clamp(sh.base, end);
    let from = (start - sh.base) as usize;
    let want = max_bytes.min(READ_MAX_BYTES).min(end - start) as usize;
    let n = crate::budget::head_len(&sh.buffer[from..from + want], READ_BUDGET);
    let stop = start + n as u64;
    let slice = &sh.buffer[from..from + n];
    ShellState {
        shell_id: sh.open.shell_id.clone(),
        state: if sh.exit_code.is_some() {
            ShellStatus::Exited
        } else {
            ShellStatus::Running
        },
        exit_code: sh.exit_code,
        cols: sh.open.cols,
        rows: sh.open.rows,
        cwd: sh.open.cwd.clone(),
        cursor: start,
        next_cursor: stop,
        dropped_bytes: start.saturating_sub(cursor),
        output: String::from_utf8_lossy(slice).into_owned(),
        truncated: stop < end,
    }
}

pub fn open(agent: &Arc<Agent>, req: ShellOpen) -> Result<ShellState, String> {
    if agent
        .shells
        .shells
        .lock()
        .unwrap()
        .contains_key(&req.shell_id)
    {
        return Err(format!("shell {} exists", req.shell_id));
    }
    let (master, slave) = sys::open_pty(req.cols, req.rows).map_err(|e| format!("pty: {e}"))?;
    let program = if std::path::Path::new("/bin/bash").exists() {
        vec!["/bin/bash", "--noprofile", "--norc", "-i"]
    } else {
        vec!["/bin/sh", "-i"]
    };
    let mut cmd = Command::new(program[0]);
    let slave_file = File::from(slave);
    cmd.args(&program[1..])
        .env_clear()
        .envs(agent.image.base_env())
        .env("TERM", "xterm-256color")
        .env("PS1", "pyro$ ")
        .envs(&req.env)
        .current_dir(&req.cwd)
        .stdin(Stdio::from(
            slave_file.try_clone().map_err(|e| e.to_string())?,
        ))
        .stdout(Stdio::from(
            slave_file.try_clone().map_err(|e| e.to_string())?,
        ))
        .stderr(Stdio::from(slave_file));
    sys::controlling_terminal_on_spawn(&mut cmd);
    let cgroup = Cgroup::create(
        agent.config.cgroups.as_deref(),
        &format!("shell-{}-{}", req.shell_id, sys::boottime_ms()),
    );
    if let Some(cg) = &cgroup {
        sys::join_cgroup_on_spawn(&mut cmd, cg.procs_path());
    }
    agent.image.apply(&mut cmd);
    let (tx, rx) = std::sync::mpsc::channel();
    let child = agent
        .reaper
        .spawn(&mut cmd, tx, |status| status)
        .map_err(|e| format!("start shell: {e}"))?;
    drop(cmd);
    let master = File::from(master);
    let mut reader = master.try_clone().map_err(|e| e.to_string())?;
    let shell = Arc::new(Mutex::new(Shell {
        open: req.clone(),
        master,
        pid: child.id() as i32,
        cgroup,
        buffer: Vec::new(),
        base: 0,
        exit_code: None,
    }));
    agent
        .shells
        .shells
        .lock()
        .unwrap()
        .insert(req.shell_id.clone(), shell.clone());
    let out = shell.clone();
    let secrets = agent.secrets.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        // Secret values never enter the buffer, however the output is cut.
        let mut redactor = crate::redact::Redactor::default();
        let keep = |shown: Vec<u8>| {
            let mut sh = out.lock().unwrap();
            sh.buffer.extend_from_slice(&shown);
            if sh.buffer.len() > BUFFER_BYTES {
                let drop = sh.buffer.len() - BUFFER_BYTES;
                sh.buffer.drain(..drop);
                sh.base += drop as u64;
            }
        };
        // Ends with EIO once the shell and everything on its terminal exit.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            let secrets = secrets.lock().unwrap().clone();
            keep(redactor.push(&buf[..n], &secrets));
        }
        let secrets = secrets.lock().unwrap().clone();
        keep(redactor.finish(&secrets));
    });
    let waiter = shell.clone();
    std::thread::spawn(move || {
        if let Ok(raw) = rx.recv() {
            waiter.lock().unwrap().exit_code = Some(sys::decode_status(raw).0);
        }
    });
    let sh = shell.lock().unwrap();
    Ok(state(&sh, 0, 0))
}

pub fn read(agent: &Agent, id: &str, cursor: u64, max_bytes: u64) -> Result<ShellState, String> {
    let sh = get(agent, id)?;
    let sh = sh.lock().unwrap();
    Ok(state(&sh, cursor, max_bytes))
}

pub fn write(agent: &Agent, id: &str, data: &str) -> Result<ShellState, String> {
    let sh = get(agent, id)?;
    let mut sh = sh.lock().unwrap();
    if sh.exit_code.is_some() {
        return Err(format!("shell {id} has exited"));
    }
    sh.master
        .write_all(data.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let end = sh.base + sh.buffer.len() as u64;
    Ok(state(&sh, end, 0))
}

pub fn signal(agent: &Agent, id: &str, signal: i32) -> Result<ShellState, String> {
    let sh = get(agent, id)?;
    let sh = sh.lock().unwrap();
    // The terminal's foreground job (e.g. a running `sleep`), else the shell.
    let group = sys::foreground_group(&sh.master).unwrap_or(sh.pid);
    sys::kill_group(group, signal);
    let end = sh.base + sh.buffer.len() as u64;
    Ok(state(&sh, end, 0))
}

pub fn close(agent: &Agent, id: &str) -> Result<ShellState, String> {
    let sh = agent
        .shells
        .shells
        .lock()
        .unwrap()
        .remove(id)
        .ok_or_else(|| format!("no shell {id:?}"))?;
    let pid = sh.lock().unwrap().pid;
    sys::kill_group(pid, libc::SIGHUP);
    for _ in 0..50 {
        if sh.lock().unwrap().exit_code.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if sh.lock().unwrap().exit_code.is_none() {
        sys::kill_group(pid, libc::SIGKILL);
    }
    // Whatever it started goes too, detached from its terminal or not.
    if let Some(cg) = &sh.lock().unwrap().cgroup {
        cg.kill();
    }
    let sh = sh.lock().unwrap();
    let end = sh.base + sh.buffer.len() as u64;
    let mut st = state(&sh, end, 0);
    st.state = ShellStatus::Closed;
    Ok(st)
}
