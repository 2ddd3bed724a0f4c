//! QEMU's jail, after Firecracker's jailer. When pyro runs as root, every
//! VM's QEMU runs
//!
//! - as a uid and gid of its own (its passt as a second uid in the same
//!   group), taken from a range no account uses, one slot per running VM;
//! - in mount, network, IPC and UTS namespaces of its own, whose root is an
//!   empty read-only tmpfs holding `/usr` (read-only), `/dev/null`,
//!   `/dev/urandom` (and `/dev/kvm` under KVM), and this VM's files at
//!   their usual paths: the kernel, initramfs and base images read-only, its
//!   disk and its directory of sockets and console writable. No `/proc`, no
//!   other VM's files, no secret store, no network;
//! - with its environment cleared, no core dumps, a file-size limit, no new
//!   privileges;
//! - in a cgroup capping memory (guest memory plus QEMU's own), tasks and
//!   CPU by the VM's shape;
//! - with a network (through passt, whose uid is the jail's second) that
//!   cannot reach the host's own addresses, link-local ones or private
//!   ranges (`egress`).
//!
//! QEMU gets no PID namespace: it spawns nothing (its sandbox forbids it),
//! sees no `/proc`, and its uid is its own, so there is nobody it could
//! signal but its own passt. `PYRO_JAIL=off` runs QEMU unjailed (as root);
//! pyro running as another user runs QEMU as that user, unjailed, and
//! `pyro doctor` says so.

mod cgroup;
mod egress;
mod enter;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, IoContext, Result};
use crate::host;
use crate::vmm::qemu::{Accel, VmSpec, TCG_CODE_CACHE_MIB};

/// Where slots are taken (host-wide: every `PYRO_HOME` shares the range).
const SLOT_DIR: &str = "/run/pyro-jail";
/// The first jail uid; slot `n` runs QEMU as `BASE + 2n` and passt as
/// `BASE + 2n + 1`, both in group `BASE + 2n`.
const DEFAULT_UID_BASE: u32 = 2_000_000_000;
const SLOTS: u32 = 16_384;
/// What QEMU holds beyond the guest's memory (its own code and buffers).
const DEFAULT_OVERHEAD_MIB: u64 = 256;

/// The identities of one jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub qemu_uid: u32,
    pub passt_uid: u32,
    pub gid: u32,
}

/// One VM's jail: its slot, its cgroup, how QEMU enters it. Dropped once
/// QEMU has exited: the cgroup is removed and the slot freed.
pub struct Jail {
    pub ids: Ids,
    cgroup: Option<cgroup::Cgroup>,
    /// Why there is no cgroup, when there is none.
    pub cgroup_missing: Option<String>,
    spec: VmSpec,
    file_size_limit: u64,
    _slot: host::FileLock,
}

/// What protects QEMU on this host, for `pyro doctor`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, serde::Serialize)]
pub struct Protections {
    /// QEMU runs as a uid of its own in namespaces of its own.
    pub jailed: bool,
    /// The cgroup hierarchy that caps each VM, if any.
    pub cgroup: Option<String>,
    /// Guests' egress cannot reach the host's own, link-local or (unless
    /// allowed) private addresses.
    pub egress_filtered: bool,
    /// What is missing and why.
    pub notes: Vec<String>,
}

fn uid_base() -> u32 {
    std::env::var("PYRO_JAIL_UID_BASE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_UID_BASE)
}

/// Whether `uid` is one jails use (a directory a jail's passt owned).
pub fn is_jail_uid(uid: u32) -> bool {
    let base = uid_base();
    uid >= base && uid < base + 2 * SLOTS
}

fn enabled() -> std::result::Result<(), String> {
    if std::env::var("PYRO_JAIL").is_ok_and(|v| v == "off") {
        return Err("PYRO_JAIL=off".into());
    }
    if !host::is_root() {
        return Err(
            "pyro is not running as root: QEMU runs as this user, without namespaces".into(),
        );
    }
    Ok(())
}

pub fn protections() -> Protections {
    let mut notes = Vec::new();
    let jailed = match enabled() {
        Ok(()) => true,
        Err(why) => {
            notes.push(format!("QEMU is not jailed: {why}"));
            false
        }
    };
    let cgroup = match cgroup::layout() {
        Some(cgroup::Layout::V2(_)) if jailed => Some("cgroup v2".to_string()),
        Some(cgroup::Layout::V1 { .. }) if jailed => Some("cgroup v1".to_string()),
        Some(_) => None,
        None => {
            notes.push("no cgroup hierarchy with memory and pids controllers".into());
            None
        }
    };
    let nft = host::which("nft").is_some() || Path::new("/usr/sbin/nft").exists();
    if jailed && !nft {
        notes.push(
            "nft is not installed: VMs with a network will not start (apt-get install nftables)"
                .into(),
        );
    }
    if !jailed {
        notes.push("guests' egress is not filtered: they can reach the host's addresses and its private networks".into());
    }
    Protections {
        jailed,
        cgroup,
        egress_filtered: jailed && nft,
        notes,
    }
}

/// The memory QEMU (with its passt) may hold: the guest's, and an
/// allowance for QEMU's own (`PYRO_QEMU_MEMORY_OVERHEAD_MIB`; by default
/// 256 MiB, plus TCG's code cache when there is no KVM).
pub fn memory_limit_bytes(spec: &VmSpec) -> u64 {
    let code_cache = match spec.accel {
        Accel::Tcg => TCG_CODE_CACHE_MIB,
        Accel::Kvm => 0,
    };
    let overhead = std::env::var("PYRO_QEMU_MEMORY_OVERHEAD_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_OVERHEAD_MIB + code_cache);
    (u64::from(spec.mem_mib) + overhead) << 20
}

impl Jail {
    /// The jail for a VM of `spec`, unless jails are off here. Makes the
    /// VM's files usable by its uid (its disk and its run directory become
    /// its own; the read-only images readable).
    pub fn prepare(spec: &VmSpec) -> Result<Option<Jail>> {
        if enabled().is_err() {
            return Ok(None);
        }
        let jail_err = |detail: String| Error::Tool {
            tool: "jail".into(),
            detail,
        };
        let (slot, lock) = take_slot().map_err(jail_err)?;
        let base = uid_base() + 2 * slot;
        let ids = Ids {
            qemu_uid: base,
            passt_uid: base + 1,
            gid: base,
        };
        if spec.network_socket.is_some() {
            egress::install((uid_base(), uid_base() + 2 * SLOTS - 1), ids.passt_uid)
                .map_err(jail_err)?;
        }
        let run = run_dir(spec).map_err(jail_err)?;
        host::chown(run, ids.qemu_uid, ids.gid)?;
        // An earlier boot's console belongs to that boot's uid.
        for entry in fs::read_dir(run)
            .ctx(|| format!("read {}", run.display()))?
            .flatten()
        {
            host::chown(&entry.path(), ids.qemu_uid, ids.gid)?;
        }
        fs::set_permissions(run, fs::Permissions::from_mode(0o700))
            .ctx(|| format!("chmod {}", run.display()))?;
        host::chown(&spec.disk, ids.qemu_uid, ids.gid)?;
        host::private_file(&spec.disk)?;
        let chain = backing_chain(&spec.disk).map_err(jail_err)?;
        for image in chain.iter().skip(1).chain([&spec.kernel, &spec.initramfs]) {
            readable_by_all(image)?;
        }
        let virtual_size = chain_size(&spec.disk);
        let limits = cgroup::Limits {
            memory_bytes: memory_limit_bytes(spec),
            tasks: 128 + 2 * u64::from(spec.vcpu_count),
            cpu_quota_us: (u64::from(spec.vcpu_count) + 1) * cgroup::CPU_PERIOD_US,
        };
        let (cgroup, cgroup_missing) =
            match cgroup::Cgroup::create(&format!("pyro-jail-{slot}"), limits) {
                Ok(c) => (Some(c), None),
                Err(why) => (None, Some(why)),
            };
        Ok(Some(Jail {
            ids,
            cgroup,
            cgroup_missing,
            spec: spec.clone(),
            // The disk can grow to its size plus qcow2's metadata; the
            // console is cut by the supervisor long before this.
            file_size_limit: virtual_size + virtual_size / 8 + (1 << 30),
            _slot: lock,
        }))
    }

    /// Has `cmd` (QEMU) run inside the jail.
    pub fn confine_qemu(&self, cmd: &mut Command) {
        cmd.env_clear();
        let root = Path::new(SLOT_DIR).join("root");
        let mut plan =
            enter::Plan::new(&root, self.ids.qemu_uid, self.ids.gid, self.file_size_limit);
        plan.bind(Path::new("/usr"), false);
        for (link, target) in [
            ("/lib", "usr/lib"),
            ("/lib64", "usr/lib64"),
            ("/bin", "usr/bin"),
            ("/sbin", "usr/sbin"),
        ] {
            plan.symlink(target, Path::new(link));
        }
        plan.bind(Path::new("/dev/null"), true);
        plan.bind(Path::new("/dev/urandom"), true);
        if self.spec.accel == Accel::Kvm {
            plan.bind(Path::new("/dev/kvm"), true);
        }
        plan.bind(&self.spec.kernel, false);
        plan.bind(&self.spec.initramfs, false);
        for image in backing_chain(&self.spec.disk)
            .unwrap_or_default()
            .iter()
            .skip(1)
        {
            plan.bind(image, false);
        }
        plan.bind(&self.spec.disk, true);
        if let Ok(run) = run_dir(&self.spec) {
            plan.bind(run, true);
        }
        if let Some(net) = self.spec.network_socket.as_ref().and_then(|s| s.parent()) {
            plan.bind(net, true);
        }
        if let Some(c) = &self.cgroup {
            plan.join(c.procs());
        }
        plan.apply(cmd);
    }

    /// Has `cmd` (passt, which drops root itself: `--runas`) join the
    /// VM's cgroup and give its socket to the VM's group.
    pub fn confine_passt(&self, cmd: &mut Command) {
        cmd.env_clear();
        cmd.arg("--runas")
            .arg(format!("{}:{}", self.ids.passt_uid, self.ids.gid));
        enter::join_only(
            cmd,
            self.cgroup.as_ref().map(|c| c.procs()).unwrap_or_default(),
        );
    }

    /// Whether the memory limit killed something, and what the limit is.
    pub fn memory_verdict(&self) -> Option<String> {
        let c = self.cgroup.as_ref()?;
        (c.oom_kills() > 0).then(|| {
            format!(
                "killed at its memory limit of {} MiB ({}); raise PYRO_QEMU_MEMORY_OVERHEAD_MIB or lower the guest's memory",
                c.limits.memory_bytes >> 20,
                c.version.as_str()
            )
        })
    }

    /// The most memory QEMU and passt held together, when known.
    pub fn peak_memory(&self) -> Option<u64> {
        self.cgroup.as_ref()?.peak_memory()
    }

    /// The cgroup's memory limit, when there is a cgroup.
    pub fn memory_limit(&self) -> Option<u64> {
        Some(self.cgroup.as_ref()?.limits.memory_bytes)
    }
}

/// The directory of QEMU's sockets and console: one, the VM's own.
fn run_dir(spec: &VmSpec) -> std::result::Result<&Path, String> {
    let dir = spec.agent_socket.parent().unwrap_or(Path::new("/"));
    let same = [&spec.qmp_socket, &spec.console_log]
        .iter()
        .all(|p| p.parent() == Some(dir));
    if !same || dir == Path::new("/") {
        return Err(format!(
            "the VM's sockets and console are not in one directory of their own ({}); recreate the VM",
            dir.display()
        ));
    }
    Ok(dir)
}

/// A slot no other jail holds, with its lock. Slots are tried from a
/// random start so concurrent starts rarely contend.
fn take_slot() -> std::result::Result<(u32, host::FileLock), String> {
    let dir = Path::new(SLOT_DIR);
    host::private_dir(dir).map_err(|e| e.to_string())?;
    fs::create_dir_all(dir.join("root")).map_err(|e| format!("create {SLOT_DIR}/root: {e}"))?;
    let start = u32::from_str_radix(&host::random_id(2), 16).unwrap_or(0) % SLOTS;
    for i in 0..SLOTS {
        let slot = (start + i) % SLOTS;
        match host::FileLock::try_acquire(&dir.join(format!("{slot}.lock"))) {
            Ok(Some(lock)) => return Ok((slot, lock)),
            Ok(None) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!("all {SLOTS} jail slots are in use"))
}

/// A disk and the images below it: the qcow2 header's backing file, read
/// the way QEMU reads it (a relative name is relative to the image).
pub fn backing_chain(disk: &Path) -> std::result::Result<Vec<PathBuf>, String> {
    let mut chain = vec![disk.to_path_buf()];
    while chain.len() < 16 {
        let image = chain.last().expect("never empty");
        let Some(backing) = qcow2_header(image)?.backing else {
            return Ok(chain);
        };
        let backing = image.parent().unwrap_or(Path::new("/")).join(backing);
        chain.push(backing);
    }
    Err(format!("{}: backing chain too long", disk.display()))
}

/// The virtual size of a disk (its header's, or the file's for a raw one).
fn chain_size(disk: &Path) -> u64 {
    qcow2_header(disk)
        .ok()
        .map(|h| h.size)
        .filter(|s| *s > 0)
        .or_else(|| fs::metadata(disk).ok().map(|m| m.len()))
        .unwrap_or(0)
}

struct Qcow2Header {
    size: u64,
    backing: Option<PathBuf>,
}

fn qcow2_header(image: &Path) -> std::result::Result<Qcow2Header, String> {
    use std::os::unix::ffi::OsStringExt;
    let failed = |e: std::io::Error| format!("read {}: {e}", image.display());
    let mut f = fs::File::open(image).map_err(failed)?;
    let mut header = [0u8; 32];
    if f.read_exact(&mut header).is_err() || &header[..4] != b"QFI\xfb" {
        // Raw: no header, no backing file.
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        return Ok(Qcow2Header {
            size,
            backing: None,
        });
    }
    let be64 = |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    let offset = be64(8);
    let len = u32::from_be_bytes(header[16..20].try_into().expect("4 bytes"));
    let size = be64(24);
    if offset == 0 || len == 0 {
        return Ok(Qcow2Header {
            size,
            backing: None,
        });
    }
    if len > 1023 {
        return Err(format!("{}: backing file name too long", image.display()));
    }
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(offset)).map_err(failed)?;
    let mut name = vec![0u8; len as usize];
    f.read_exact(&mut name).map_err(failed)?;
    Ok(Qcow2Header {
        size,
        backing: Some(PathBuf::from(std::ffi::OsString::from_vec(name))),
    })
}

/// Read-only images are read by every jail's uid; what keeps them from
/// the host's other users is their private directory.
fn readable_by_all(path: &Path) -> Result<()> {
    let mode = fs::metadata(path)
        .ctx(|| format!("stat {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o004 == 0 {
        fs::set_permissions(path, fs::Permissions::from_mode((mode | 0o444) & 0o7777))
            .ctx(|| format!("chmod {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backing_chain_is_read_from_qcow2_headers() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("base.ext4");
        fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
        let mid = dir.path().join("mid.qcow2");
        let top = dir.path().join("top.qcow2");
        let create = |base: &Path, fmt: &str, out: &Path| {
            let ok = Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", fmt, "-b"])
                .arg(base)
                .arg(out)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "qemu-img create");
        };
        create(&raw, "raw", &mid);
        // A relative backing name is relative to the image.
        create(Path::new("mid.qcow2"), "qcow2", &top);
        assert_eq!(
            backing_chain(&top).unwrap(),
            vec![top.clone(), dir.path().join("mid.qcow2"), raw.clone()]
        );
        assert_eq!(chain_size(&top), 1 << 20);
        assert_eq!(backing_chain(&raw).unwrap(), vec![raw]);
    }
}
