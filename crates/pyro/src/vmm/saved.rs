//! A running guest's memory and device state saved to a file, and where a
//! paused VM keeps it.
//!
//! Three things save a guest: a template build (once, at the agent's
//! `welcome`), a pause (the VM's QEMU ends; its saved state and its disk
//! are all that is left) and a fork (the state is restored by new VMs on
//! copies of the disk, while the original runs on). QEMU streams the state
//! with QMP `migrate` into a UNIX socket (its sandbox forbids spawning a
//! helper, so no `exec:` target); a restore reads it on `-incoming fd:0`
//! (see `boot`). When a migration completes QEMU has flushed and released
//! the disk, so the saved state and the disk agree from then on, until
//! the guest runs again.
//!
//! A paused VM's directory holds `paused/state.bin` and `paused/resume.json`
//! ([`ResumeInfo`]). A pause writes `state.bin.partial` and renames it only
//! once the migration completed and `resume.json` is on disk: a VM is
//! paused exactly when `state.bin` exists. The state is consumed when the
//! guest runs again (removed after it loaded, before the guest continues):
//! from then on the disk moves on and the state no longer matches it.

use std::fs;
use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::error::{Error, IoContext, Result};
use crate::host;
use crate::vmm::control::ResumeInfo;
use crate::vmm::dir::VmDir;
use crate::vmm::qmp::{MigrationStatus, Qmp, QmpError};

/// The saved state of a paused VM, in its directory.
#[derive(Debug, Clone)]
pub struct Paused {
    dir: PathBuf,
}

impl Paused {
    pub fn of(vm: &VmDir) -> Paused {
        Paused {
            dir: vm.path.join("paused"),
        }
    }
    /// The committed state: present exactly while the VM is paused.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.bin")
    }
    /// Where a pause writes before it commits.
    pub fn partial(&self) -> PathBuf {
        self.dir.join("state.bin.partial")
    }
    fn info_path(&self) -> PathBuf {
        self.dir.join("resume.json")
    }
    pub fn exists(&self) -> bool {
        self.state().is_file()
    }
    /// A pause began and never committed (its supervisor or QEMU died).
    pub fn interrupted(&self) -> bool {
        !self.exists() && self.partial().exists()
    }
    pub fn read_info(&self) -> ResumeInfo {
        fs::read(self.info_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
    /// Makes the directory for a save, clearing what an interrupted one
    /// left.
    pub fn prepare(&self) -> Result<()> {
        let _ = fs::remove_file(self.partial());
        host::private_dir(&self.dir)
    }
    /// Commits a save whose state is in [`partial`](Self::partial).
    pub fn commit(&self, info: &ResumeInfo) -> Result<()> {
        host::write_atomic(
            &self.info_path(),
            &serde_json::to_vec_pretty(info).expect("resume info serializes"),
        )?;
        fs::rename(self.partial(), self.state())
            .ctx(|| format!("commit {}", self.dir.display()))?;
        host::sync_dir(&self.dir);
        Ok(())
    }
    /// Forgets the saved state (the disk moved on, or is thrown away).
    pub fn discard(&self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Streams a stopped guest's state into `dest` (created new) through a
/// UNIX socket in the VM's run directory, and waits until QEMU says the
/// migration completed. `qemu_ids` is the jailed QEMU's uid and gid (it
/// must be able to connect). Returns the state's size.
pub fn save_state(
    qmp: &mut Qmp,
    vm_dir: &VmDir,
    qemu_ids: Option<(u32, u32)>,
    dest: &Path,
) -> Result<u64> {
    let qmp_err = |e: QmpError| Error::Boot(format!("saving the guest: {e}"));
    // The default bandwidth cap (32 MiB/s) is for live migration.
    qmp.execute(
        "migrate-set-parameters",
        json!({ "max-bandwidth": 1u64 << 40 }),
    )
    .map_err(qmp_err)?;
    let sock = vm_dir.migrate_socket();
    let _ = fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).ctx(|| format!("bind {}", sock.display()))?;
    let cleanup = scopeguard(&sock);
    if let Some((uid, gid)) = qemu_ids {
        host::chown(&sock, uid, gid)?;
    }
    listener
        .set_nonblocking(true)
        .ctx(|| "nonblocking listener".into())?;
    qmp.execute(
        "migrate",
        json!({ "uri": format!("unix:{}", sock.display()) }),
    )
    .map_err(qmp_err)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e).ctx(|| "QEMU never sent its state".into()),
        }
    };
    drop(cleanup);
    conn.set_nonblocking(false)
        .ctx(|| "blocking migration socket".into())?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .ctx(|| format!("create {}", dest.display()))?;
    host::private_file(dest)?;
    let bytes = io::copy(&mut conn, &mut file).ctx(|| "receive the guest's state".into())?;
    file.sync_all().ctx(|| "sync the guest's state".into())?;
    loop {
        match qmp.migration().map_err(qmp_err)? {
            (MigrationStatus::Completed, _) => return Ok(bytes),
            (MigrationStatus::Failed, answer) => {
                return Err(Error::Boot(format!("saving the guest failed: {answer}")))
            }
            _ if Instant::now() > deadline => {
                return Err(Error::Boot("saving the guest timed out".into()))
            }
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// Removes the migration socket when dropped.
fn scopeguard(path: &Path) -> impl Drop + '_ {
    struct Remove<'a>(&'a Path);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = fs::remove_file(self.0);
        }
    }
    Remove(path)
}
