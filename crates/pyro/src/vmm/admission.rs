//! Admission: how many VMs may run at once on this host, checked for every
//! kind of VM (one-shot runs, lifecycle VMs, workspaces) under one lock
//! that is held until the new VM has started, so concurrent starts cannot
//! overshoot.

use std::fs;

use crate::error::{Error, Result};
use crate::host::{self, FileLock};
use crate::paths::Paths;
use crate::vmm::dir::VmDir;

/// How many VMs may run at once: `PYRO_MAX_RUNNING_VMS`, or what host
/// memory allows at 1 GiB and some overhead each.
pub fn running_limit() -> usize {
    if let Some(n) = std::env::var("PYRO_MAX_RUNNING_VMS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(4 << 20);
    ((total_kib / 1024 * 3 / 4) / 1152).max(1) as usize
}

/// Live VMs, named for the error message: one-shot runs, lifecycle VMs and
/// running workspaces.
fn running(paths: &Paths) -> Vec<String> {
    let live = |dir: VmDir| dir.live_supervisor().is_some();
    let mut out = Vec::new();
    for e in fs::read_dir(paths.vms()).into_iter().flatten().flatten() {
        if live(VmDir::from_path(&e.path())) {
            out.push(format!("vm {}", e.file_name().to_string_lossy()));
        }
    }
    for e in fs::read_dir(paths.workspaces())
        .into_iter()
        .flatten()
        .flatten()
    {
        if live(VmDir::from_path(&e.path().join("vm"))) {
            out.push(format!("workspace {}", e.file_name().to_string_lossy()));
        }
    }
    out
}

/// A place for one more running VM: hold it until the VM has started.
pub struct Admission {
    _lock: FileLock,
}

/// Takes the capacity lock and checks there is room for one more running
/// VM.
pub fn admit(paths: &Paths) -> Result<Admission> {
    host::private_dir(&paths.home)?;
    let lock = FileLock::acquire(&paths.home.join(".capacity.lock"))?;
    let running = running(paths);
    let limit = running_limit();
    if running.len() >= limit {
        return Err(Error::Capacity(format!(
            "{} VMs are running, the limit (PYRO_MAX_RUNNING_VMS) is {limit}; stop one first: {}",
            running.len(),
            running.join(", ")
        )));
    }
    Ok(Admission { _lock: lock })
}
