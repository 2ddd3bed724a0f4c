//! Long-running services: started in their own process group and cgroup,
//! output appended to files under `/run/pyro-services` (`Config`; never in
//! `/workspace`, so never in a diff or an export), readiness probed here in
//! the guest, stopped with SIGTERM then SIGKILL.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pyro_protocol::{Readiness, ServiceSpec, ServiceState, ServiceStatus, ServiceStopReason};

use crate::cgroup::Cgroup;
use crate::serve::Agent;
use crate::sys;

/// How much of a log `logs` looks at.
const LOG_WINDOW: u64 = 1 << 20;

struct Service {
    state: ServiceState,
    cgroup: Option<Cgroup>,
}

#[derive(Default)]
pub struct Services {
    services: Mutex<HashMap<String, Arc<Mutex<Service>>>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn log_path(agent: &Agent, name: &str, stream: &str) -> PathBuf {
    agent.config.service_logs.join(format!("{name}.{stream}"))
}

fn probe(agent: &Agent, r: &Readiness, cwd: &str) -> bool {
    match r {
        Readiness::File { path } => Path::new(cwd).join(path).exists(),
        Readiness::Tcp { address } => address
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok()),
        Readiness::Http { url } => http_ok(url),
        Readiness::Command { command } => {
            let mut cmd = Command::new("/bin/sh");
            cmd.args(["-lc", command])
                .current_dir(cwd)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0);
            // Children of PID 1 are reaped by the reaper, which hands the
            // status over.
            let (tx, rx) = std::sync::mpsc::channel();
            let Ok(child) = agent.reaper.spawn(&mut cmd, tx, |s| s) else {
                return false;
            };
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(raw) => sys::decode_status(raw).0 == 0,
                Err(_) => {
                    sys::kill_group(child.id() as i32, libc::SIGKILL);
                    false
                }
            }
        }
    }
}

/// A minimal HTTP/1.0 GET: ready on a 2xx or 3xx status within 2 s.
fn http_ok(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let address = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let Some(addr) = address.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        return false;
    };
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 16];
    let mut got = 0;
    while got < head.len() {
        match s.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    // Read the rest (bounded) so the server is not reset mid-reply.
    let mut rest = [0u8; 4096];
    let mut drained = 0;
    while drained < 64 * 1024 {
        match s.read(&mut rest) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    let line = String::from_utf8_lossy(&head[..got]);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (200..400).contains(&status)
}

fn stop_group(svc: &Service, pid: i32, signal: i32) {
    sys::kill_group(pid, signal);
    if signal == libc::SIGKILL {
        if let Some(cg) = &svc.cgroup {
            cg.kill();
        }
    }
}

pub fn start(agent: &Arc<Agent>, spec: ServiceSpec) -> Result<ServiceState, String> {
    {
        let map = agent.services.services.lock().unwrap();
        if let Some(existing) = map.get(&spec.name) {
            if existing.lock().unwrap().state.state == ServiceStatus::Running {
                return Err(format!("service {} is already running", spec.name));
            }
        }
    }
    let logs = &agent.config.service_logs;
    fs::create_dir_all(logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    let open_log = |stream: &str| {
        let path = log_path(agent, &spec.name, stream);
        let _ = fs::remove_file(cut_marker(&path));
        // Fresh, and appended to, so `cap_log` can cut the file while the
        // service writes.
        let _ = fs::remove_file(&path);
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("log: {e}"))
    };
    let (stdout, stderr) = (open_log("stdout")?, open_log("stderr")?);
    let (mut cmd, shown) = match &spec.command {
        pyro_protocol::Command::Shell(s) => {
            let mut c = Command::new("/bin/sh");
            c.args(["-lc", s]);
            (c, s.clone())
        }
        pyro_protocol::Command::Argv(a) if !a.is_empty() => {
            let mut c = Command::new(&a[0]);
            c.args(&a[1..]);
            (c, a.join(" "))
        }
        pyro_protocol::Command::Argv(_) => return Err("empty command".into()),
    };
    cmd.env_clear()
        .envs(agent.image.base_env())
        .envs(&spec.env)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .process_group(0);
    let cgroup = Cgroup::create(
        agent.config.cgroups.as_deref(),
        &format!("service-{}-{}", spec.name, sys::boottime_ms()),
    );
    if let Some(cg) = &cgroup {
        sys::join_cgroup_on_spawn(&mut cmd, cg.procs_path());
    }
    agent.image.apply(&mut cmd);
    let (tx, rx) = std::sync::mpsc::channel();
    let child = agent.reaper.spawn(&mut cmd, tx, |s| s).map_err(|e| {
        let program = match &spec.command {
            pyro_protocol::Command::Argv(a) => a[0].clone(),
            pyro_protocol::Command::Shell(_) => "/bin/sh".into(),
        };
        format!("start {}: {program}: {e}", spec.name)
    })?;
    let pid = child.id() as i32;
    let svc = Arc::new(Mutex::new(Service {
        state: ServiceState {
            name: spec.name.clone(),
            state: ServiceStatus::Running,
            command: shown,
            cwd: spec.cwd.clone(),
            pid: Some(pid as u32),
            exit_code: None,
            started_at_unix_ms: now_ms(),
            ready_at_unix_ms: None,
            ended_at_unix_ms: None,
            stop_reason: None,
            readiness: spec.readiness.clone(),
        },
        cgroup,
    }));
    agent
        .services
        .services
        .lock()
        .unwrap()
        .insert(spec.name.clone(), svc.clone());
    // The logs live in guest memory (a tmpfs): a chatty service keeps
    // only the latest part of them.
    {
        let svc = svc.clone();
        let paths = [
            log_path(agent, &spec.name, "stdout"),
            log_path(agent, &spec.name, "stderr"),
        ];
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(250));
            paths.iter().for_each(|p| cap_log(p));
            if svc.lock().unwrap().state.exit_code.is_some() {
                paths.iter().for_each(|p| cap_log(p));
                return;
            }
        });
    }
    let waiter = svc.clone();
    std::thread::spawn(move || {
        if let Ok(raw) = rx.recv() {
            let mut s = waiter.lock().unwrap();
            s.state.exit_code = Some(sys::decode_status(raw).0);
            s.state.ended_at_unix_ms = Some(now_ms());
            if s.state.state == ServiceStatus::Running {
                s.state.state = ServiceStatus::Exited;
            }
        }
    });

    // Wait for readiness, or for the process to give up.
    let deadline = Instant::now() + Duration::from_millis(spec.ready_timeout_ms);
    loop {
        let exited = svc.lock().unwrap().state.exit_code.is_some();
        if exited {
            let mut s = svc.lock().unwrap();
            if s.state.ready_at_unix_ms.is_none() && spec.readiness.is_some() {
                s.state.state = ServiceStatus::Failed;
                s.state.stop_reason = Some(ServiceStopReason::ProcessExitedBeforeReady);
            }
            return Ok(s.state.clone());
        }
        let ready = match &spec.readiness {
            None => true,
            Some(r) => probe(agent, r, &spec.cwd),
        };
        if ready {
            let mut s = svc.lock().unwrap();
            if s.state.exit_code.is_none() {
                s.state.ready_at_unix_ms = Some(now_ms());
            }
            return Ok(s.state.clone());
        }
        if Instant::now() >= deadline {
            let mut s = svc.lock().unwrap();
            s.state.state = ServiceStatus::Failed;
            s.state.stop_reason = Some(ServiceStopReason::ReadinessTimeout);
            stop_group(&s, pid, libc::SIGKILL);
            return Ok(s.state.clone());
        }
        std::thread::sleep(Duration::from_millis(spec.ready_interval_ms.max(10)));
    }
}

fn get(agent: &Agent, name: &str) -> Result<Arc<Mutex<Service>>, String> {
    agent
        .services
        .services
        .lock()
        .unwrap()
        .get(name)
        .cloned()
        .ok_or_else(|| format!("no service {name:?}"))
}

pub fn status(agent: &Agent, name: &str) -> Result<ServiceState, String> {
    Ok(get(agent, name)?.lock().unwrap().state.clone())
}

pub fn list(agent: &Agent) -> Vec<ServiceState> {
    let map = agent.services.services.lock().unwrap();
    let mut all: Vec<ServiceState> = map
        .values()
        .map(|s| s.lock().unwrap().state.clone())
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

/// What one stream's logs may take of a reply, encoded.
const LOG_BUDGET: usize = 384 * 1024;

/// How large a service's log may grow before its start is dropped (the
/// last [`LOG_WINDOW`] is kept).
pub const LOG_LIMIT: u64 = 8 << 20;

/// Beside a log whose start was dropped.
fn cut_marker(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".cut");
    PathBuf::from(name)
}

/// Keeps a log within [`LOG_LIMIT`]: past it, the log is cut to its last
/// [`LOG_WINDOW`] (output written during the cut may be lost) and marked.
pub fn cap_log(path: &Path) {
    let Ok(len) = fs::metadata(path).map(|m| m.len()) else {
        return;
    };
    if len <= LOG_LIMIT {
        return;
    }
    let Ok(mut f) = File::open(path) else {
        return;
    };
    let _ = f.seek(SeekFrom::Start(len - LOG_WINDOW));
    let mut kept = Vec::new();
    let _ = (&mut f).take(LOG_WINDOW).read_to_end(&mut kept);
    if let Ok(mut w) = OpenOptions::new().append(true).open(path) {
        let _ = w.set_len(0);
        let _ = w.write_all(&kept);
    }
    let _ = File::create(cut_marker(path));
}

fn tail(path: &Path, lines: Option<u64>) -> (String, bool) {
    let Ok(mut f) = File::open(path) else {
        return (String::new(), false);
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(LOG_WINDOW);
    let _ = f.seek(SeekFrom::Start(start));
    let mut data = Vec::new();
    let _ = f.read_to_end(&mut data);
    let text = String::from_utf8_lossy(&data).into_owned();
    let dropped = start > 0 || cut_marker(path).exists();
    let (text, cut) = match lines {
        None => (text, dropped),
        Some(n) => {
            let all: Vec<&str> = text.split_inclusive('\n').collect();
            let keep = all
                .len()
                .saturating_sub(usize::try_from(n).unwrap_or(usize::MAX));
            (all[keep..].concat(), keep > 0 || dropped)
        }
    };
    // Whatever the lines hold, the reply fits one frame.
    let (fitted, trimmed) = crate::budget::tail(&text, LOG_BUDGET);
    (fitted.to_string(), cut || trimmed)
}

pub fn logs(
    agent: &Agent,
    name: &str,
    lines: Option<u64>,
) -> Result<(String, String, bool), String> {
    get(agent, name)?;
    let (out, t1) = tail(&log_path(agent, name, "stdout"), lines);
    let (err, t2) = tail(&log_path(agent, name, "stderr"), lines);
    Ok((out, err, t1 || t2))
}

pub fn stop(agent: &Agent, name: &str) -> Result<ServiceState, String> {
    let svc = get(agent, name)?;
    let pid = {
        let s = svc.lock().unwrap();
        if s.state.state != ServiceStatus::Running {
            return Ok(s.state.clone());
        }
        s.state.pid.unwrap_or(0) as i32
    };
    stop_group(&svc.lock().unwrap(), pid, libc::SIGTERM);
    let mut reason = ServiceStopReason::Sigterm;
    let start = Instant::now();
    while svc.lock().unwrap().state.exit_code.is_none() {
        if start.elapsed() > Duration::from_secs(5) {
            stop_group(&svc.lock().unwrap(), pid, libc::SIGKILL);
            reason = ServiceStopReason::Sigkill;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Anything the service left behind in its cgroup goes too.
    if let Some(cg) = &svc.lock().unwrap().cgroup {
        cg.kill();
    }
    let start = Instant::now();
    while svc.lock().unwrap().state.exit_code.is_none() && start.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut s = svc.lock().unwrap();
    s.state.state = ServiceStatus::Stopped;
    s.state.stop_reason = Some(reason);
    Ok(s.state.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_past_its_cap_keeps_its_latest_part_and_says_so() {
        let dir = std::env::temp_dir().join(format!("pyro-cap-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("svc.stdout");
        let mut data = b"line\n".repeat(LOG_LIMIT as usize / 5 + 1);
        data.extend_from_slice(b"the end\n");
        fs::write(&log, &data).unwrap();
        cap_log(&log);
        let kept = fs::read(&log).unwrap();
        assert_eq!(kept.len() as u64, LOG_WINDOW);
        assert!(kept.ends_with(b"the end\n"));
        let (text, cut) = tail(&log, Some(1));
        assert_eq!((text.as_str(), cut), ("the end\n", true));
        fs::remove_dir_all(&dir).unwrap();
    }
}
