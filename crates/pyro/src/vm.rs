//! One VM's directory and the supervisor that owns it.
//!
//! Every running VM has a directory under `$PYRO_HOME/vms/<id>/` holding its
//! record (`vm.json`), the supervisor's pid, the sockets (agent, QMP,
//! control), the console log and the disk overlay. The supervisor is the
//! `pyro` binary started in a hidden mode; it detaches, boots QEMU, and
//! reports readiness as one JSON line on the pipe it got as stdout.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::host;
use crate::paths::Paths;
use crate::qemu::VmSpec;

const RECORD_VERSION: u32 = 1;

/// What the supervisor needs to run one VM; written before it starts.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
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
}

/// How a persistent VM ended.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmExit {
    pub reason: String,
    pub at_unix_ms: u64,
}

/// The supervisor's one-line readiness report.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
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
}

#[derive(Debug, Clone)]
pub struct VmDir {
    pub id: String,
    pub path: PathBuf,
}

impl VmDir {
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
    pub fn control_socket(&self) -> PathBuf {
        self.path.join("control.sock")
    }
    pub fn agent_socket(&self) -> PathBuf {
        self.path.join("agent.sock")
    }
    pub fn qmp_socket(&self) -> PathBuf {
        self.path.join("qmp.sock")
    }
    pub fn console_log(&self) -> PathBuf {
        self.path.join("console.log")
    }
    pub fn qemu_log(&self) -> PathBuf {
        self.path.join("qemu.log")
    }
    pub fn supervisor_log(&self) -> PathBuf {
        self.path.join("supervisor.log")
    }
    pub fn supervisor_pid(&self) -> PathBuf {
        self.path.join("supervisor.pid")
    }
    /// Why a persistent VM's supervisor ended (written as it exits).
    pub fn exit_record(&self) -> PathBuf {
        self.path.join("exit.json")
    }

    pub fn read_exit(&self) -> Option<VmExit> {
        serde_json::from_slice(&fs::read(self.exit_record()).ok()?).ok()
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

    /// The live supervisor's pid, if there is one.
    pub fn live_supervisor(&self) -> Option<i32> {
        let pid: i32 = fs::read_to_string(self.supervisor_pid())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        host::process_alive(pid).then_some(pid)
    }
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
    }
}

/// Creates the VM directory with its record and a copy-on-write disk on
/// top of `base_image`.
pub fn create(dir: &VmDir, record: &VmRecord, base_image: &Path) -> Result<()> {
    fs::create_dir_all(&dir.path).ctx(|| format!("create {}", dir.path.display()))?;
    create_overlay(base_image, &record.spec.disk)?;
    write_record(dir, record)
}

pub fn write_record(dir: &VmDir, record: &VmRecord) -> Result<()> {
    fs::create_dir_all(&dir.path).ctx(|| format!("create {}", dir.path.display()))?;
    let _ = fs::remove_file(dir.exit_record());
    host::write_atomic(&dir.record(), &serde_json::to_vec_pretty(record).unwrap())
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
    )
    .map(|_| ())
}

/// Starts the supervisor for `dir` and waits for its readiness report.
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
        if let Some(state) = dir.read_record().ok().and_then(|r| r.spec.snapshot) {
            crate::templates::discard(&state);
        }
    }
    Ok(report)
}

/// Stops a persistent VM gracefully (the guest syncs and powers off; after
/// 30 s it is killed), keeping its directory.
pub fn halt(dir: &VmDir) -> Result<()> {
    if let Some(pid) = dir.live_supervisor() {
        match crate::client::VmClient::connect(dir) {
            Ok(c) => c.stop()?,
            Err(_) => host::signal(pid, libc::SIGKILL),
        }
        let start = std::time::Instant::now();
        while host::process_alive(pid) && start.elapsed().as_secs() < 30 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// Kills whatever is left of a VM and removes its directory.
pub fn destroy(dir: &VmDir) {
    if let Some(pid) = dir.live_supervisor() {
        // QEMU dies with its supervisor (parent-death signal).
        host::signal(pid, libc::SIGKILL);
        for _ in 0..200 {
            if !host::process_alive(pid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let _ = fs::remove_dir_all(&dir.path);
}

/// Removes the directories of one-shot VMs whose supervisor is gone (it was
/// killed before it could clean up). A directory without a supervisor pid
/// yet is left alone for a minute: its supervisor may still be starting.
pub fn collect_garbage(paths: &Paths) {
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
        let ephemeral = dir.read_record().map(|r| r.ephemeral).unwrap_or(true);
        let supervisor_died = dir.supervisor_pid().exists();
        if ephemeral && (supervisor_died || age > Duration::from_secs(60)) {
            let _ = fs::remove_dir_all(&dir.path);
        }
    }
}
