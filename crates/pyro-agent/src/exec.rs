//! Running one command for the host: spawn it in its own process group,
//! stream its output as it comes, enforce its timeout, report how it ended.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyro_protocol::{ExecRequest, ExitStatus, Frame, Kind, Message};

use crate::cgroup::Cgroup;
use crate::serve::Agent;
use crate::sys;

/// What an exec's control loop waits for.
pub enum Event {
    Exited(i32),
    Cancel,
    OutputClosed,
}

/// How long output may keep flowing after the command itself exited, from
/// background processes that inherited its pipes.
const OUTPUT_GRACE: Duration = Duration::from_millis(250);

pub fn run(agent: &Agent, stream: u32, req: ExecRequest, tx: Sender<Event>, rx: Receiver<Event>) {
    let start = Instant::now();
    let base_env = agent.image.base_env();
    let base: Vec<(&str, &str)> = base_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut login_env = None;
    let mut cmd = match &req.command {
        pyro_protocol::Command::Shell(s) => {
            // The login shell's environment, resolved once (`login`); if it
            // cannot be had, the command runs as a login shell itself.
            let mut c = Command::new("/bin/sh");
            login_env = agent.login.get(&base, &agent.reaper, &agent.image);
            c.arg(if login_env.is_some() { "-c" } else { "-lc" }).arg(s);
            c
        }
        pyro_protocol::Command::Argv(argv) if !argv.is_empty() => {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
        pyro_protocol::Command::Argv(_) => {
            agent.send(&Frame::message(stream, &error("empty command")));
            return;
        }
    };
    cmd.env_clear()
        .envs(base.iter().copied())
        .envs(login_env.unwrap_or_default())
        .envs(&req.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let cwd = req.cwd.clone().unwrap_or_else(|| "/".into());
    cmd.current_dir(&cwd);
    let cgroup = Cgroup::create(
        agent.config.cgroups.as_deref(),
        &format!("exec-{stream}-{}", sys::boottime_ms()),
    );
    if let Some(cg) = &cgroup {
        sys::join_cgroup_on_spawn(&mut cmd, cg.procs_path());
    }
    agent.image.apply(&mut cmd);
    let kill_tree = |pid: i32| {
        if let Some(cg) = &cgroup {
            cg.kill();
        }
        sys::kill_group(pid, libc::SIGKILL);
    };

    let mut child = match agent.reaper.spawn(&mut cmd, tx.clone(), Event::Exited) {
        Ok(c) => c,
        Err(e) => {
            // Report a failed spawn the way a shell would: 127 when the
            // program does not exist, 126 when it cannot be run.
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            let program = match &req.command {
                pyro_protocol::Command::Argv(argv) => argv[0].clone(),
                pyro_protocol::Command::Shell(_) => "/bin/sh".into(),
            };
            let why = if code == 127 && !std::path::Path::new(&cwd).is_dir() {
                format!("pyro: cannot enter {cwd}: no such directory\n")
            } else {
                format!("pyro: {program}: {e}\n")
            };
            agent.send(&Frame::data(stream, Kind::Stderr, why.into_bytes()));
            let status = ExitStatus {
                exit_code: code,
                signal: None,
                timed_out: false,
                duration_ms: start.elapsed().as_millis() as u64,
            };
            agent.send(&Frame::message(stream, &Message::Exited(status)));
            return;
        }
    };
    let pid = child.id() as i32;
    agent.send(&Frame::message(
        stream,
        &Message::Started { pid: pid as u32 },
    ));

    let closed = Arc::new(AtomicBool::new(false));
    let mut open_pipes = 0;
    if let Some(out) = child.stdout.take() {
        open_pipes += 1;
        crate::sys::grow_pipe(&out, PIPE_BYTES);
        pump(agent, stream, Kind::Stdout, out, tx.clone(), closed.clone());
    }
    if let Some(err) = child.stderr.take() {
        open_pipes += 1;
        crate::sys::grow_pipe(&err, PIPE_BYTES);
        pump(agent, stream, Kind::Stderr, err, tx.clone(), closed.clone());
    }
    drop(tx);

    let mut deadline = req.timeout_ms.map(|ms| start + Duration::from_millis(ms));
    let mut status = None;
    let mut timed_out = false;
    let mut grace_until = None;
    while status.is_none() || open_pipes > 0 {
        let wait_until = match (status, grace_until, deadline) {
            (Some(_), Some(g), _) => Some(g),
            (None, _, d) => d,
            (Some(_), None, _) => None,
        };
        let event = match wait_until {
            Some(t) => rx.recv_timeout(t.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match event {
            Ok(Event::Exited(raw)) => {
                status = Some(raw);
                grace_until = Some(Instant::now() + OUTPUT_GRACE);
            }
            Ok(Event::OutputClosed) => open_pipes -= 1,
            Ok(Event::Cancel) => kill_tree(pid),
            Err(RecvTimeoutError::Timeout) if status.is_none() => {
                timed_out = true;
                kill_tree(pid);
                // Wait for the kill to land; no further deadline.
                deadline = None;
            }
            // Output grace over, or nothing left to wait for.
            Err(_) => break,
        }
    }
    closed.store(true, Ordering::SeqCst);
    if req.sync_after {
        sys::sync();
    }
    let (mut exit_code, signal) = sys::decode_status(status.unwrap_or(0));
    if timed_out {
        exit_code = 124;
        let secs = req.timeout_ms.unwrap_or(0) as f64 / 1000.0;
        let note = format!("pyro: command timed out after {secs}s and was killed\n");
        agent.send(&Frame::data(stream, Kind::Stderr, note.into_bytes()));
    }
    let status = ExitStatus {
        exit_code,
        signal: if timed_out { None } else { signal },
        timed_out,
        duration_ms: start.elapsed().as_millis() as u64,
    };
    agent.send(&Frame::message(stream, &Message::Exited(status)));
}

/// A command's output pipes hold this much (Linux's default is 64 KiB):
/// under TCG every switch between the writer and the agent is dear.
const PIPE_BYTES: i32 = 1 << 20;
/// The most one output frame carries.
const CHUNK: usize = 256 * 1024;

fn pump(
    agent: &Agent,
    stream: u32,
    kind: Kind,
    mut pipe: impl Read + Send + 'static,
    tx: Sender<Event>,
    closed: Arc<AtomicBool>,
) {
    let link = agent.link.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if closed.load(Ordering::SeqCst) {
                        break;
                    }
                    link.send(&Frame::data(stream, kind, buf[..n].to_vec()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = tx.send(Event::OutputClosed);
    });
}

fn error(message: &str) -> Message {
    Message::Error {
        message: message.to_string(),
    }
}
