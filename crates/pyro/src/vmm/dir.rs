//! One VM's directory and the records in it.
//!
//! A VM directory holds its record (`vm.json`, what the supervisor needs to
//! run it), the supervisor's pid, the sockets (agent, QMP, control), the
//! logs, the disk of a one-shot or lifecycle VM, and `exit.json` once a
//! persistent VM has ended. One-shot runs and lifecycle VMs live under
//! `$PYRO_HOME/vms/<id>/`, a workspace's VM in its `vm/` subdirectory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::assets::RuntimeAssets;
use crate::contract::IdleAction;
use crate::error::{Error, IoContext, Result};
use crate::host;
use crate::paths::Paths;
use crate::vmm::qemu::{self, VmSpec};

const RECORD_VERSION: u32 = 1;

/// What the supervisor needs to run one VM (`vm.json`); written before it
/// starts.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    pub format_version: u32,
    pub vm_id: String,
    pub environment: String,
    pub hostname: String,
    /// Delete everything when the VM ends (one-shot runs).
    pub ephemeral: bool,
    /// The VM is torn down this long after it became ready, or, with
    /// `idle_timeout`, after the last request of any client.
    pub ttl_seconds: u64,
    #[serde(default)]
    pub idle_timeout: bool,
    pub created_at_unix_ms: u64,
    pub spec: VmSpec,
    /// What the supervisor does when its time is up (`stop` for one-shot
    /// and lifecycle VMs; a workspace's choice for its idle timeout).
    #[serde(default)]
    pub on_idle: IdleAction,
    /// What `spec.snapshot` is, if there is one.
    #[serde(default)]
    pub restore: Restore,
}

/// Whose saved state a VM restores.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Restore {
    /// A template's (a guest at its welcome, with no identity yet): the
    /// VM is activated like a booted one, and a template that fails to
    /// restore is discarded.
    #[default]
    Template,
    /// Its own, saved by a pause: the guest keeps its network and
    /// published ports; the state is consumed once loaded.
    Paused,
    /// Its parent's, saved by a fork: a new identity (hostname, random
    /// seed), the parent's ports published again on free host ports; the
    /// state (this VM's link to it) is consumed once loaded.
    Fork,
}

impl Restore {
    /// The saved state was this VM's (or its parent's) running guest, not
    /// a template.
    pub fn is_live(self) -> bool {
        self != Restore::Template
    }
}

/// Why a VM's supervisor tore it down.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// A client asked (stop, delete).
    Stopped,
    /// The TTL or idle timeout passed.
    TtlExpired,
    /// The connection that owned a one-shot VM closed.
    OwnerDisconnected,
    /// The guest agent's connection closed (the guest powered off or died).
    AgentClosed,
    /// QEMU exited on its own.
    QemuExited,
    /// The VM's directory was removed under it.
    DirectoryRemoved,
    /// The control socket stopped accepting connections.
    ControlClosed,
    /// Paused: its state is saved beside its disk (`saved::Paused`).
    Paused,
    /// Written by another version of pyro.
    #[serde(other)]
    Unknown,
}

impl ExitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Stopped => "stopped",
            ExitReason::TtlExpired => "ttl_expired",
            ExitReason::OwnerDisconnected => "owner disconnected",
            ExitReason::AgentClosed => "the guest agent connection closed",
            ExitReason::QemuExited => "QEMU exited",
            ExitReason::DirectoryRemoved => "its directory was removed",
            ExitReason::ControlClosed => "control socket closed",
            ExitReason::Paused => "paused",
            ExitReason::Unknown => "the VM ended",
        }
    }
}

/// How a persistent VM ended (`exit.json`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmExit {
    pub reason: ExitReason,
    /// What QEMU's exit status was, and the like.
    #[serde(default)]
    pub detail: Option<String>,
    pub at_unix_ms: u64,
}

impl VmExit {
    pub fn new(reason: ExitReason, detail: Option<String>) -> VmExit {
        VmExit {
            reason,
            detail,
            at_unix_ms: host::now_unix_ms(),
        }
    }
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason.as_str())?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

/// The supervisor's one-line readiness report.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BootReport {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub boot_ms: u64,
    #[serde(default)]
    pub guest_boot_ms: u64,
    #[serde(default)]
    pub kernel_release: String,
    #[serde(default)]
    pub agent_version: String,
    #[serde(default)]
    pub attempts: u32,
    /// The guest was restored from a template snapshot, not booted.
    #[serde(default)]
    pub restored: bool,
    /// The guest contains each command in a cgroup of its own; without
    /// (a kernel with no cgroup v2), a timeout or cancel ends only the
    /// command's process group.
    #[serde(default)]
    pub guest_cgroups: bool,
}

/// The machine shape of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub vcpu_count: u32,
    pub mem_mib: u32,
}

/// Where VMs' sockets directories are: `/run/pyro` as root, else
/// `/tmp/pyro-<uid>`. Never from the environment: every process of a user
/// (a CLI in a terminal, an MCP server a desktop app started, a VM's
/// supervisor) must find the same sockets, and `XDG_RUNTIME_DIR` differs
/// between them or vanishes at logout.
pub fn sockets_root() -> PathBuf {
    if host::is_root() {
        PathBuf::from("/run/pyro")
    } else {
        PathBuf::from(format!("/tmp/pyro-{}", host::euid()))
    }
}

/// The file of a sockets directory that names its VM's directory.
const OWNER: &str = "vm";

/// Removes sockets directories whose VM directory is gone (its process was
/// killed before it could clean up), if they are older than `min_age`.
pub fn sweep_sockets(min_age: std::time::Duration) {
    let Ok(entries) = fs::read_dir(sockets_root()) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= min_age);
        let gone = match fs::read(path.join(OWNER)) {
            Ok(owner) => {
                use std::os::unix::ffi::OsStrExt;
                !Path::new(std::ffi::OsStr::from_bytes(&owner)).exists()
            }
            Err(_) => true,
        };
        if old && gone {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

#[derive(Debug, Clone)]
pub struct VmDir {
    pub id: String,
    pub path: PathBuf,
}

impl VmDir {
    /// The directory of a one-shot run or lifecycle VM.
    pub fn new(paths: &Paths, id: &str) -> VmDir {
        VmDir {
            id: id.to_string(),
            path: paths.vms().join(id),
        }
    }
    pub fn from_path(path: &Path) -> VmDir {
        VmDir {
            id: path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            path: path.to_path_buf(),
        }
    }
    pub fn record(&self) -> PathBuf {
        self.path.join("vm.json")
    }
    pub fn disk(&self) -> PathBuf {
        self.path.join("disk.qcow2")
    }
    /// The VM's sockets live outside its directory, in a short one of
    /// their own (`sockets_root()/<key>`, the key a hash of this
    /// directory's path): a UNIX socket's path may not exceed 107 bytes,
    /// and a VM directory under a deep `PYRO_HOME` would.
    pub fn sockets_dir(&self) -> PathBuf {
        use sha2::{Digest, Sha256};
        let absolute = std::path::absolute(&self.path).unwrap_or_else(|_| self.path.clone());
        let digest = Sha256::digest(absolute.as_os_str().as_encoded_bytes());
        let key: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        sockets_root().join(key)
    }
    /// Where clients reach the VM's supervisor.
    pub fn control_socket(&self) -> PathBuf {
        self.sockets_dir().join("control.sock")
    }
    /// QEMU's own directory: its sockets and console, the only part of
    /// the VM a jailed QEMU sees (see `vmm::jail`).
    pub fn run_dir(&self) -> PathBuf {
        self.sockets_dir().join("run")
    }
    /// Creates the sockets directory (private, ours) for a start.
    pub fn prepare_sockets(&self) -> Result<()> {
        let root = sockets_root();
        host::private_dir(&root)?;
        host::owned_by_us(&root)?;
        let dir = self.sockets_dir();
        host::private_dir(&dir)?;
        // Which VM it serves, so a sweep can tell a leftover.
        let owner = std::path::absolute(&self.path).unwrap_or_else(|_| self.path.clone());
        fs::write(dir.join(OWNER), owner.as_os_str().as_encoded_bytes())
            .ctx(|| format!("write {}", dir.join(OWNER).display()))
    }
    /// Removes what the VM keeps outside its directory: its sockets
    /// directory and its network's scratch directory (a supervisor that was
    /// killed could not).
    pub fn remove_outside(&self) {
        let _ = fs::remove_dir_all(self.sockets_dir());
        let scratch = self
            .read_record()
            .ok()
            .and_then(|r| r.spec.network_socket)
            .and_then(|s| s.parent().map(Path::to_path_buf));
        // Only a directory of the shape pyro makes, where it makes them.
        if let Some(dir) = scratch.filter(|d| {
            d.parent() == Some(std::env::temp_dir().as_path())
                && d.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("pyro-net-"))
        }) {
            let _ = fs::remove_dir_all(dir);
        }
    }
    /// Removes the VM: what it keeps outside its directory, then the
    /// directory.
    pub fn remove(&self) -> Result<()> {
        self.remove_outside();
        fs::remove_dir_all(&self.path).ctx(|| format!("remove {}", self.path.display()))
    }
    pub fn agent_socket(&self) -> PathBuf {
        self.run_dir().join("agent.sock")
    }
    pub fn qmp_socket(&self) -> PathBuf {
        self.run_dir().join("qmp.sock")
    }
    pub fn console_log(&self) -> PathBuf {
        self.run_dir().join("console.log")
    }
    /// Where QEMU sends a template's saved state.
    pub fn migrate_socket(&self) -> PathBuf {
        self.run_dir().join("migrate.sock")
    }
    pub fn qemu_log(&self) -> PathBuf {
        self.path.join("qemu.log")
    }
    pub fn passt_log(&self) -> PathBuf {
        self.path.join("passt.log")
    }
    pub fn supervisor_log(&self) -> PathBuf {
        self.path.join("supervisor.log")
    }
    pub fn supervisor_pid(&self) -> PathBuf {
        self.path.join("supervisor.pid")
    }
    /// Held by the VM's supervisor for as long as it lives.
    pub fn supervisor_lock(&self) -> PathBuf {
        self.path.join("supervisor.lock")
    }
    /// Why a persistent VM's supervisor ended (written as it exits).
    pub fn exit_record(&self) -> PathBuf {
        self.path.join("exit.json")
    }

    /// The spec of a VM living in this directory: its sockets and logs are
    /// here, its disk is `disk`. A `durable` disk survives a host crash
    /// (persistent VMs); a network device is attached to a passt of the
    /// VM's own when `network`.
    pub fn spec(
        &self,
        assets: &RuntimeAssets,
        shape: Shape,
        disk: PathBuf,
        durable: bool,
        network: bool,
    ) -> VmSpec {
        VmSpec {
            accel: qemu::choose_accel().accel,
            vcpu_count: shape.vcpu_count,
            mem_mib: shape.mem_mib,
            kernel: assets.kernel.clone(),
            initramfs: assets.initramfs.clone(),
            disk,
            disk_cache_unsafe: !durable,
            tsc_khz: host::tsc_khz(),
            agent_socket: self.agent_socket(),
            qmp_socket: self.qmp_socket(),
            console_log: self.console_log(),
            network_socket: network.then(|| qemu::net::socket_path(&self.id)),
            snapshot: None,
        }
    }

    pub fn read_exit(&self) -> Option<VmExit> {
        serde_json::from_slice(&fs::read(self.exit_record()).ok()?).ok()
    }

    pub fn write_exit(&self, exit: &VmExit) -> Result<()> {
        host::write_atomic(&self.exit_record(), &to_json(exit))
    }

    pub fn read_record(&self) -> Result<VmRecord> {
        let bytes = fs::read(self.record()).ctx(|| format!("read {}", self.record().display()))?;
        let record: VmRecord = serde_json::from_slice(&bytes).map_err(|e| {
            Error::VmLost(format!(
                "unreadable record {}: {e}",
                self.record().display()
            ))
        })?;
        if record.format_version != RECORD_VERSION {
            return Err(Error::VmLost(format!(
                "record format {} is not {RECORD_VERSION}",
                record.format_version
            )));
        }
        Ok(record)
    }

    /// Writes the record (and forgets how the VM last ended).
    pub fn write_record(&self, record: &VmRecord) -> Result<()> {
        host::private_dir(&self.path)?;
        let _ = fs::remove_file(self.exit_record());
        host::write_atomic(&self.record(), &to_json(record))
    }

    /// The live supervisor's pid, if one runs (0 while it is starting and
    /// has not written its pid yet). A supervisor holds
    /// [`supervisor_lock`](Self::supervisor_lock) for its whole life, so
    /// liveness is that lock being held, and a pid is only ever read while
    /// its owner holds it: a stale `supervisor.pid` (a killed supervisor,
    /// a reboot, a reused pid) names nobody, and nobody is signalled.
    pub fn live_supervisor(&self) -> Option<i32> {
        if !self.path.is_dir() {
            return None;
        }
        match host::FileLock::try_acquire(&self.supervisor_lock()) {
            Ok(None) => Some(
                fs::read_to_string(self.supervisor_pid())
                    .ok()
                    .and_then(|p| p.trim().parse().ok())
                    .unwrap_or(0),
            ),
            // Free (nobody runs this VM), or unreadable.
            Ok(Some(_)) | Err(_) => None,
        }
    }
}

fn to_json(v: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec_pretty(v).expect("records serialize")
}

/// Every image some disk under `PYRO_HOME` (a workspace's, a VM's) is
/// built on: the backing chains of the qcow2 files there. Templates do not
/// count: they are rebuilt, and go when their image goes.
pub fn images_in_use(paths: &Paths) -> std::collections::HashSet<PathBuf> {
    fn walk(dir: &Path, depth: usize, out: &mut std::collections::HashSet<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            let path = e.path();
            if t.is_dir() && depth > 0 {
                walk(&path, depth - 1, out);
            } else if t.is_file() && path.extension().is_some_and(|x| x == "qcow2") {
                if let Ok(chain) = crate::vmm::jail::backing_chain(&path) {
                    out.extend(chain.into_iter().skip(1));
                }
            }
        }
    }
    let mut out = std::collections::HashSet::new();
    walk(&paths.home, 4, &mut out);
    out
}

pub fn new_record(
    id: &str,
    environment: &str,
    ephemeral: bool,
    ttl_seconds: u64,
    spec: VmSpec,
) -> VmRecord {
    VmRecord {
        format_version: RECORD_VERSION,
        vm_id: id.to_string(),
        environment: environment.to_string(),
        hostname: format!("pyro-{}", &id[..8.min(id.len())]),
        ephemeral,
        ttl_seconds,
        idle_timeout: !ephemeral,
        created_at_unix_ms: host::now_unix_ms(),
        spec,
        on_idle: IdleAction::Stop,
        restore: Restore::Template,
    }
}

/// Creates the VM directory with its record and a copy-on-write disk on
/// top of `base_image`.
pub fn create(dir: &VmDir, record: &VmRecord, base_image: &Path) -> Result<()> {
    host::private_dir(&dir.path)?;
    create_overlay(base_image, &record.spec.disk)?;
    dir.write_record(record)
}

/// A qcow2 disk whose unwritten blocks read from the (read-only) base: an
/// environment's raw image, or a template's qcow2 disk.
pub fn create_overlay(base_image: &Path, disk: &Path) -> Result<()> {
    let format = match base_image.extension() {
        Some(e) if e == "qcow2" => "qcow2",
        _ => "raw",
    };
    host::tool(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
            .arg(base_image)
            .arg(disk),
    )?;
    host::private_file(disk)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `vm.json` is what a supervisor of another build may read: a change to
    /// its encoding shows here. Regenerate with `PYRO_BLESS=1`.
    #[test]
    fn the_record_format_is_unchanged() {
        let dir = VmDir::from_path(Path::new("/home/u/.local/share/pyro/vms/0123456789ab"));
        let assets = RuntimeAssets {
            kernel: "/c/vmlinuz".into(),
            kernel_release: "6.1.0-56-cloud-amd64".into(),
            kernel_source: "linux-image-cloud-amd64".into(),
            initramfs: "/c/initramfs.cpio".into(),
            agent_sha256: String::new(),
        };
        let shape = Shape {
            vcpu_count: 2,
            mem_mib: 2048,
        };
        let mut spec = dir.spec(&assets, shape, dir.disk(), true, true);
        spec.accel = qemu::Accel::Tcg;
        spec.tsc_khz = Some(2_596_128);
        spec.network_socket = Some("/tmp/pyro-net-0123456789ab/passt.sock".into());
        // Socket paths depend on the user (`sockets_root`); fixed here.
        spec.agent_socket = "/run/pyro/e53f7ae44d98ad7d/run/agent.sock".into();
        spec.qmp_socket = "/run/pyro/e53f7ae44d98ad7d/run/qmp.sock".into();
        spec.console_log = "/run/pyro/e53f7ae44d98ad7d/run/console.log".into();
        spec.snapshot = Some("/c/templates/abc/state.bin".into());
        let mut r = new_record(&dir.id, "debian:12", false, 600, spec);
        r.created_at_unix_ms = 1_700_000_000_000;
        crate::golden::check("vm.json", &r);
        let deep = VmDir::from_path(&Path::new("/tmp").join("d".repeat(200)).join("vm"));
        assert!(
            deep.agent_socket().as_os_str().len() < 64,
            "{}",
            deep.agent_socket().display()
        );
        assert_ne!(deep.sockets_dir(), dir.sockets_dir());
        let back: VmRecord = serde_json::from_slice(&to_json(&r)).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn exits_read_as_they_were_written_and_old_ones_stay_readable() {
        let e = VmExit::new(ExitReason::QemuExited, Some("signal: 9".into()));
        let back: VmExit = serde_json::from_slice(&to_json(&e)).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.to_string(), "QEMU exited (signal: 9)");
        let old: VmExit =
            serde_json::from_str(r#"{"reason": "QEMU exited (signal: 9)", "at_unix_ms": 1}"#)
                .unwrap();
        assert_eq!(old.reason, ExitReason::Unknown);
        let ttl: VmExit =
            serde_json::from_str(r#"{"reason": "ttl_expired", "at_unix_ms": 1}"#).unwrap();
        assert_eq!(ttl.reason, ExitReason::TtlExpired);
    }
}
