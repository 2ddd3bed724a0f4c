//! How much memory the running guests hold, and what the kernel's
//! same-page merging (KSM) saves or would save, for `pyro doctor`.
//!
//! QEMU marks guest RAM mergeable, so with KSM on the identical pages of
//! guests restored from one template (the kernel, the agent, the page cache
//! of the environment) are kept once. With KSM off, the saving is estimated
//! by sampling: every 64th resident page of each guest's RAM is hashed, and
//! the duplicates among the samples, scaled up, are what merging would
//! free. Reading another process's memory needs root; without it no
//! estimate is made.

use std::collections::HashMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::FileExt;

use serde::Serialize;

use crate::paths::Paths;
use crate::vmm::dir;

const PAGE: u64 = 4096;
/// One page in this many is sampled.
const SAMPLE_EVERY: u64 = 64;

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Serialize)]
pub struct Density {
    /// The kernel offers KSM (`/sys/kernel/mm/ksm`).
    pub ksm_available: bool,
    pub ksm_running: bool,
    /// What KSM saves now (pages sharing a merged page), MiB.
    pub ksm_saved_mib: u64,
    /// With KSM off: what merging the identical pages of the running guests
    /// would save, estimated by sampling (root only), MiB.
    pub ksm_estimated_saving_mib: Option<u64>,
    /// Running guests (their QEMUs), and the memory those hold.
    pub running_vms: usize,
    pub qemu_rss_mib: u64,
    /// Shared pages counted once, split between their users.
    pub qemu_pss_mib: u64,
    /// Warm guests of the one-shot run pool waiting now, and how many each
    /// shape keeps (`PYRO_POOL_SIZE`).
    pub pooled_vms: usize,
    pub pool_size: usize,
    pub hint: Option<String>,
}

fn read_u64(path: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The pids of pyro's QEMUs: those whose sockets are in pyro's sockets
/// directory.
fn pyro_qemus() -> Vec<i32> {
    let root = dir::sockets_root().display().to_string();
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        let qemu =
            cmdline.starts_with("/usr/bin/qemu-system") || cmdline.starts_with("qemu-system");
        if qemu && cmdline.contains(&format!("path={root}/")) {
            pids.push(pid);
        }
    }
    pids
}

/// Rss and Pss of a process, KiB.
fn rollup(pid: i32) -> (u64, u64) {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

/// The guest RAM of a QEMU: its largest anonymous writable mapping.
fn guest_ram(pid: i32) -> Option<(u64, u64)> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let range = f.next()?;
            let perms = f.next()?;
            let path = f.nth(3);
            if !perms.starts_with("rw") || path.is_some() {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            );
            Some((a, b - a))
        })
        .max_by_key(|(_, len)| *len)
}

/// Hashes of every `SAMPLE_EVERY`th resident page of `pid`'s guest RAM.
fn sample(pid: i32, out: &mut HashMap<u64, u64>) -> Option<u64> {
    let (start, len) = guest_ram(pid)?;
    let pagemap = fs::File::open(format!("/proc/{pid}/pagemap")).ok()?;
    let mem = fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut sampled = 0;
    let mut entry = [0u8; 8];
    let mut page = vec![0u8; PAGE as usize];
    for i in (0..len / PAGE).step_by(SAMPLE_EVERY as usize) {
        let addr = start + i * PAGE;
        if pagemap.read_exact_at(&mut entry, addr / PAGE * 8).is_err() {
            return None;
        }
        // Bit 63: present in RAM; bit 56: mapped by this process alone (a
        // page the guest wrote, counted in its RSS; not the shared zero
        // page that reads of untouched memory map).
        let bits = u64::from_le_bytes(entry);
        if bits >> 63 == 0 || (bits >> 56) & 1 == 0 {
            continue;
        }
        if mem.read_exact_at(&mut page, addr).is_err() {
            continue;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        page.hash(&mut h);
        *out.entry(h.finish()).or_default() += 1;
        sampled += 1;
    }
    Some(sampled)
}

pub(crate) fn report(paths: &Paths) -> Density {
    let ksm = "/sys/kernel/mm/ksm";
    let ksm_available = std::path::Path::new(ksm).join("run").exists();
    let ksm_running = read_u64(&format!("{ksm}/run")) == Some(1);
    let sharing = read_u64(&format!("{ksm}/pages_sharing")).unwrap_or(0);
    let qemus = pyro_qemus();
    let (rss, pss) = qemus.iter().fold((0, 0), |(r, p), pid| {
        let (a, b) = rollup(*pid);
        (r + a, p + b)
    });
    let estimate = (ksm_available && !ksm_running && qemus.len() > 1 && crate::host::is_root())
        .then(|| {
            let mut hashes = HashMap::new();
            let mut sampled = 0;
            for pid in &qemus {
                sampled += sample(*pid, &mut hashes)?;
            }
            let distinct = hashes.len() as u64;
            Some(((sampled - distinct) * SAMPLE_EVERY * PAGE) >> 20)
        })
        .flatten();
    let pool_size = crate::pool::pool_size();
    let pooled_vms = fs::read_dir(paths.home.join("pool"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|k| fs::read_dir(k.path()).into_iter().flatten().flatten())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count();
    let hint = match (ksm_available, ksm_running, estimate) {
        (true, false, Some(mib)) if mib > 0 => Some(format!(
            "turning KSM on would save about {mib} MiB of the {} MiB the running guests hold: echo 1 > /sys/kernel/mm/ksm/run",
            rss >> 10
        )),
        (true, false, _) => Some(
            "KSM is off: guests restored from one template share most of their pages once it is on (echo 1 > /sys/kernel/mm/ksm/run)".into(),
        ),
        _ => None,
    };
    Density {
        ksm_available,
        ksm_running,
        ksm_saved_mib: (sharing * PAGE) >> 20,
        ksm_estimated_saving_mib: estimate,
        running_vms: qemus.len(),
        qemu_rss_mib: rss >> 10,
        qemu_pss_mib: pss >> 10,
        pooled_vms,
        pool_size,
        hint,
    }
}
