//! Starting and ending VMs from the outside: the supervisor is started
//! detached and reports readiness on a pipe; halting asks it to shut the
//! guest down; destroying kills it and removes the directory; garbage
//! collection removes what killed supervisors of one-shot VMs left behind.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, IoContext, Result};
use crate::host;
use crate::paths::Paths;
use crate::vmm::client::VmClient;
use crate::vmm::dir::{BootReport, VmDir};
use crate::vmm::templates;

/// Starts the supervisor for `dir` (`program __supervise DIR`) and waits
/// for its readiness report. A VM that was to restore a template but booted
/// instead had a template that does not restore: it is discarded, so the
/// next VM builds it anew.
pub fn start_supervisor(program: &Path, dir: &VmDir) -> Result<BootReport> {
    let (reader, writer) = std::io::pipe().ctx(|| "create pipe".into())?;
    let log = fs::File::create(dir.supervisor_log()).ctx(|| "create supervisor log".into())?;
    let mut child = Command::new(program)
        .arg("__supervise")
        .arg(&dir.path)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(log)
        .spawn()
        .map_err(|e| {
            Error::Boot(format!(
                "cannot start the supervisor {}: {e}",
                program.display()
            ))
        })?;
    // The supervisor forks and its first process exits at once.
    let _ = child.wait();
    let mut line = String::new();
    BufReader::new(reader)
        .read_line(&mut line)
        .ctx(|| "read supervisor report".into())?;
    if line.trim().is_empty() {
        let log = fs::read_to_string(dir.supervisor_log()).unwrap_or_default();
        return Err(Error::Boot(format!(
            "the supervisor exited without a report: {}",
            host::tail(&log, 10)
        )));
    }
    let report: BootReport = serde_json::from_str(&line)
        .map_err(|e| Error::Boot(format!("garbled supervisor report {line:?}: {e}")))?;
    if !report.ok {
        return Err(Error::Boot(report.error.unwrap_or_default()));
    }
    if !report.restored {
        if let Some(record) = dir.read_record().ok().filter(|r| !r.restore.is_live()) {
            if let Some(state) = record.spec.snapshot {
                templates::discard(&state);
            }
        }
    }
    if !report.guest_cgroups {
        tracing::warn!(
            "the guest kernel has no cgroup v2: a command's timeout or cancel ends only its process group, not what escaped it"
        );
    }
    Ok(report)
}

/// How long a graceful stop may take before the VM is killed.
const HALT_DEADLINE: Duration = Duration::from_secs(40);

/// Stops a persistent VM gracefully (the guest syncs and powers off),
/// keeping its directory. A VM that does not stop in time, or whose
/// supervisor does not answer, is killed.
pub fn halt(dir: &VmDir) -> Result<()> {
    if dir.live_supervisor().is_none() {
        return Ok(());
    }
    let asked = VmClient::connect(dir).and_then(|c| c.with_deadline(HALT_DEADLINE).stop());
    if asked.is_err() || !wait_gone(dir, Duration::from_secs(10)) {
        kill(dir);
    }
    Ok(())
}

/// Kills whatever runs of a VM (QEMU dies with its supervisor, by its
/// parent-death signal), without asking anyone. Only a supervisor that
/// provably owns the VM (see `VmDir::live_supervisor`) is signalled.
pub fn kill(dir: &VmDir) {
    for _ in 0..3 {
        match dir.live_supervisor() {
            None => return,
            Some(pid) => host::signal(pid, libc::SIGKILL),
        }
        if wait_gone(dir, Duration::from_secs(5)) {
            return;
        }
    }
}

/// Kills whatever is left of a VM and removes its directory.
pub fn destroy(dir: &VmDir) {
    kill(dir);
    let _ = dir.remove();
}

/// Waits until nobody runs the VM; false if someone still does after
/// `limit`.
pub fn wait_gone(dir: &VmDir, limit: Duration) -> bool {
    let start = Instant::now();
    while dir.live_supervisor().is_some() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Removes the directories of one-shot VMs whose supervisor is gone (it was
/// killed before it could clean up), and sockets directories of VMs that
/// are gone. A directory without a supervisor pid
/// yet is left alone for a minute: its supervisor may still be starting.
pub fn collect_garbage(paths: &Paths) {
    crate::vmm::dir::sweep_sockets(Duration::from_secs(60));
    let Ok(entries) = fs::read_dir(paths.vms()) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = VmDir::from_path(&entry.path());
        if dir.live_supervisor().is_some() {
            continue;
        }
        let age = fs::metadata(&dir.path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default();
        // A record that cannot be read may be a lifecycle VM's, written by
        // another version: never removed. Only a directory with no record
        // at all (its creator died first) counts as a one-shot leftover.
        let ephemeral = match dir.read_record() {
            Ok(r) => r.ephemeral,
            Err(_) if dir.record().exists() => false,
            Err(_) => true,
        };
        let supervisor_died = dir.supervisor_pid().exists();
        if ephemeral && (supervisor_died || age > Duration::from_secs(60)) {
            let _ = dir.remove();
        }
    }
}
