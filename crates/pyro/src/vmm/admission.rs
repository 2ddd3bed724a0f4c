//! Admission: what may run at once on this host, checked for every kind of
//! VM (one-shot runs, lifecycle VMs, workspaces) under one lock that is
//! held until the new VM has started, so concurrent starts cannot
//! overshoot. Two limits: guest memory (what the running guests and the new
//! one may be given, together) and, if the operator sets one, a count.

use std::fs;

use crate::error::{Error, Result};
use crate::host::{self, FileLock};
use crate::paths::{Context, Paths};
use crate::vmm::dir::VmDir;

/// What QEMU and the supervisor take beside a guest's own memory.
const OVERHEAD_MIB: u64 = 128;

fn env_limit(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The memory all running guests may have together (with their overhead):
/// `PYRO_MAX_GUEST_MEMORY_MIB`, or three quarters of the host's.
pub fn memory_limit_mib() -> u64 {
    if let Some(n) = env_limit("PYRO_MAX_GUEST_MEMORY_MIB") {
        return n;
    }
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(4 << 20);
    total_kib / 1024 * 3 / 4
}

/// How many VMs may run at once, if the operator said
/// (`PYRO_MAX_RUNNING_VMS`).
pub fn running_limit() -> Option<u64> {
    env_limit("PYRO_MAX_RUNNING_VMS")
}

/// A live VM, named for messages, with what it takes.
struct Running {
    name: String,
    mem_mib: u64,
}

/// Live VMs: one-shot runs, lifecycle VMs and running workspaces.
fn running(paths: &Paths) -> Vec<Running> {
    let mut out = Vec::new();
    let mut add = |dir: VmDir, kind: &str, id: String| {
        if dir.live_supervisor().is_some() {
            let mem_mib = dir
                .read_record()
                .map_or(1024, |r| u64::from(r.spec.mem_mib));
            out.push(Running {
                name: format!("{kind} {id}"),
                mem_mib: mem_mib + OVERHEAD_MIB,
            });
        }
    };
    for e in fs::read_dir(paths.vms()).into_iter().flatten().flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        add(VmDir::from_path(&e.path()), "vm", id);
    }
    for e in fs::read_dir(paths.workspaces())
        .into_iter()
        .flatten()
        .flatten()
    {
        let id = e.file_name().to_string_lossy().into_owned();
        add(VmDir::from_path(&e.path().join("vm")), "workspace", id);
    }
    out
}

/// A place for one more running VM: hold it until the VM has started.
pub struct Admission {
    _lock: FileLock,
}

/// Takes the capacity lock and checks there is room for one more running
/// VM with `mem_mib` of memory. Warm guests waiting in the run pool make
/// room when there is none.
pub fn admit(ctx: &Context, mem_mib: u32) -> Result<Admission> {
    admit_with(ctx, mem_mib, true)
}

/// [`admit`] for a guest of the run pool: it never makes room by ending
/// other pooled guests.
pub fn admit_spare(ctx: &Context, mem_mib: u32) -> Result<Admission> {
    admit_with(ctx, mem_mib, false)
}

fn admit_with(ctx: &Context, mem_mib: u32, evict: bool) -> Result<Admission> {
    let paths = &ctx.paths;
    host::private_dir(&paths.home)?;
    let lock = FileLock::acquire(&paths.home.join(".capacity.lock"))?;
    let check = || -> Result<()> { fits(ctx, &running(paths), mem_mib) };
    match check() {
        Err(Error::Capacity(_)) if evict && evict_pooled(paths) > 0 => check()?,
        other => other?,
    }
    Ok(Admission { _lock: lock })
}

/// Ends every warm guest waiting in the run pool (`$PYRO_HOME/pool/KEY/ID`
/// markers; see `pool`), claiming each first so no run takes it meanwhile.
fn evict_pooled(paths: &Paths) -> usize {
    let mut ended = 0;
    for key in fs::read_dir(paths.home.join("pool"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for marker in fs::read_dir(key.path()).into_iter().flatten().flatten() {
            let id = marker.file_name().to_string_lossy().into_owned();
            if id.starts_with('.') || fs::remove_file(marker.path()).is_err() {
                continue;
            }
            crate::vmm::launch::destroy(&VmDir::new(paths, &id));
            ended += 1;
        }
    }
    ended
}

fn fits(ctx: &Context, running: &[Running], mem_mib: u32) -> Result<()> {
    let names = || {
        running
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(limit) = ctx.max_running_vms.or_else(running_limit) {
        if running.len() as u64 >= limit {
            return Err(Error::Capacity(format!(
                "{} VMs are running, the limit of running VMs is {limit}; stop one first: {}",
                running.len(),
                names()
            )));
        }
    }
    let used: u64 = running.iter().map(|r| r.mem_mib).sum();
    let wanted = u64::from(mem_mib) + OVERHEAD_MIB;
    let limit = memory_limit_mib();
    if used + wanted > limit {
        return Err(Error::Capacity(format!(
            "a VM of {mem_mib} MiB does not fit: running guests take {used} MiB of the {limit} MiB \
             they may have together (PYRO_MAX_GUEST_MEMORY_MIB); stop one first{}",
            if running.is_empty() {
                String::new()
            } else {
                format!(": {}", names())
            }
        )));
    }
    Ok(())
}
