//! One cgroup (v2) per command, so that a timeout or a cancel ends every
//! process the command started, including those that left its process
//! group or session.

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};

pub const ROOT: &str = "/sys/fs/cgroup";

pub struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// A fresh cgroup under `root`'s `pyro/`, or `None` without a root or
    /// where cgroup v2 is not mounted there.
    pub fn create(root: Option<&Path>, name: &str) -> Option<Cgroup> {
        let root = root?;
        if !root.join("cgroup.procs").exists() {
            return None;
        }
        let dir = root.join("pyro").join(name);
        fs::create_dir_all(&dir).ok()?;
        Some(Cgroup { dir })
    }

    pub fn procs_path(&self) -> CString {
        use std::os::unix::ffi::OsStrExt;
        CString::new(self.dir.join("cgroup.procs").as_os_str().as_bytes()).unwrap()
    }

    /// SIGKILLs every process in the cgroup.
    pub fn kill(&self) {
        let _ = fs::write(self.dir.join("cgroup.kill"), b"1");
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Fails while processes remain (a command's background children);
        // such a cgroup stays until the VM ends.
        let _ = fs::remove_dir(&self.dir);
    }
}
