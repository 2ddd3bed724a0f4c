//! The host cgroup of one jailed VM: QEMU and its passt capped in memory,
//! tasks and CPU. It is made below the cgroup pyro itself runs in, so a
//! delegated subtree serves as well as the root. cgroup v2 is used where its
//! controllers are available to us, else the v1 hierarchies of `memory`,
//! `pids` and `cpu`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What one VM's processes may use together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub tasks: u64,
    /// CPU time per 100 ms period, in microseconds.
    pub cpu_quota_us: u64,
}

pub const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "cgroup v1",
            Version::V2 => "cgroup v2",
        }
    }
}

/// One VM's cgroup (one directory per hierarchy under v1), removed on drop.
pub struct Cgroup {
    pub version: Version,
    /// memory, pids, cpu under v1; one directory under v2.
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` of each directory, open for a child to join by.
    procs: Vec<File>,
    pub limits: Limits,
}

/// Where the controllers we need live, for this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// The unified hierarchy's directory of this process.
    V2(PathBuf),
    /// This process's directory in the memory, pids and cpu hierarchies.
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: PathBuf,
    },
}

/// Finds this process's cgroups from `/proc/self/mountinfo` and
/// `/proc/self/cgroup`.
pub fn layout() -> Option<Layout> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let membership = fs::read_to_string("/proc/self/cgroup").ok()?;
    let layout = parse_layout(&mountinfo, &membership)?;
    if let Layout::V2(dir) = &layout {
        // v2 only when the controllers are ours to use there.
        let root_controllers = fs::read_to_string(dir.join("cgroup.controllers")).ok()?;
        let have = |c: &str| root_controllers.split_whitespace().any(|x| x == c);
        if !(have("memory") && have("pids")) {
            return parse_v1(&mountinfo, &membership);
        }
    }
    Some(layout)
}

/// v2 when the unified hierarchy is mounted and holds the memory
/// controller (checked by [`layout`]), else v1.
pub fn parse_layout(mountinfo: &str, membership: &str) -> Option<Layout> {
    let unified = mounts(mountinfo).find(|m| m.fstype == "cgroup2");
    if let Some(m) = unified {
        if let Some(path) = membership
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .and_then(|p| within(&m, p))
        {
            // A hybrid host mounts v2 without controllers beside v1;
            // prefer v1 then.
            if parse_v1(mountinfo, membership).is_none() {
                return Some(Layout::V2(path));
            }
        }
    }
    parse_v1(mountinfo, membership)
}

fn parse_v1(mountinfo: &str, membership: &str) -> Option<Layout> {
    let dir_of = |controller: &str| -> Option<PathBuf> {
        let mount = mounts(mountinfo)
            .find(|m| m.fstype == "cgroup" && m.options.split(',').any(|o| o == controller))?;
        let path = membership.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            controllers
                .split(',')
                .any(|c| c == controller)
                .then_some(path)
        })?;
        within(&mount, path)
    };
    Some(Layout::V1 {
        memory: dir_of("memory")?,
        pids: dir_of("pids")?,
        cpu: dir_of("cpu")?,
    })
}

struct Mount<'a> {
    root: &'a str,
    point: &'a str,
    fstype: &'a str,
    options: &'a str,
}

/// The lines of `/proc/self/mountinfo` (`ID PARENT DEV ROOT POINT ... - TYPE
/// SOURCE OPTIONS`).
fn mounts(mountinfo: &str) -> impl Iterator<Item = Mount<'_>> {
    mountinfo.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        Some(Mount {
            root: left.get(3)?,
            point: left.get(4)?,
            fstype: right.first()?,
            options: right.get(2)?,
        })
    })
}

/// A cgroup path as seen through a mount of its hierarchy.
fn within(mount: &Mount, path: &str) -> Option<PathBuf> {
    let rel = path.strip_prefix(mount.root)?.trim_start_matches('/');
    Some(Path::new(mount.point).join(rel))
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| format!("write {value} to {}: {e}", path.display()))
}

impl Cgroup {
    /// Makes (or remakes, after a VM killed with its supervisor) the cgroup
    /// `name` with `limits`.
    pub fn create(name: &str, limits: Limits) -> Result<Cgroup, String> {
        let layout =
            layout().ok_or("no usable cgroup hierarchy with memory and pids controllers")?;
        let (version, dirs) = match &layout {
            Layout::V2(parent) => {
                // The controllers must be enabled for our children.
                let _ = write(&parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
                (Version::V2, vec![parent.join(name)])
            }
            Layout::V1 { memory, pids, cpu } => (
                Version::V1,
                vec![memory.join(name), pids.join(name), cpu.join(name)],
            ),
        };
        for dir in &dirs {
            remove_dir(dir);
            fs::create_dir(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
        // Removed on drop should anything below fail.
        let mut cgroup = Cgroup {
            version,
            procs: Vec::new(),
            dirs,
            limits,
        };
        cgroup.set_limits()?;
        cgroup.procs = cgroup
            .dirs
            .iter()
            .map(|d| {
                let p = d.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map_err(|e| format!("open {}: {e}", p.display()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(cgroup)
    }

    fn set_limits(&self) -> Result<(), String> {
        let l = self.limits;
        match self.version {
            Version::V2 => {
                let d = &self.dirs[0];
                write(&d.join("memory.max"), &l.memory_bytes.to_string())?;
                let _ = write(&d.join("memory.swap.max"), "0");
                write(&d.join("pids.max"), &l.tasks.to_string())?;
                // The cpu controller is optional: a cap, not a protection.
                let _ = write(
                    &d.join("cpu.max"),
                    &format!("{} {CPU_PERIOD_US}", l.cpu_quota_us),
                );
            }
            Version::V1 => {
                let (memory, pids, cpu) = (&self.dirs[0], &self.dirs[1], &self.dirs[2]);
                write(
                    &memory.join("memory.limit_in_bytes"),
                    &l.memory_bytes.to_string(),
                )?;
                // Where swap is accounted, none beyond the memory itself.
                let memsw = memory.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, &l.memory_bytes.to_string())?;
                }
                write(&pids.join("pids.max"), &l.tasks.to_string())?;
                let _ = write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string());
                let _ = write(&cpu.join("cpu.cfs_quota_us"), &l.cpu_quota_us.to_string());
            }
        }
        Ok(())
    }

    /// Open `cgroup.procs` files: a child writes `0` to each to join
    /// before it runs anything.
    pub fn procs(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.procs.iter().map(|f| f.as_raw_fd()).collect()
    }

    fn memory_dir(&self) -> &Path {
        &self.dirs[0]
    }

    /// How many processes the memory limit killed.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        };
        fs::read_to_string(self.memory_dir().join(file))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// The most memory the VM's processes held at once.
    pub fn peak_memory(&self) -> Option<u64> {
        let file = match self.version {
            Version::V2 => "memory.peak",
            Version::V1 => "memory.max_usage_in_bytes",
        };
        fs::read_to_string(self.memory_dir().join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.procs.clear();
        for dir in &self.dirs {
            remove_dir(dir);
        }
    }
}

/// Removes a VM's cgroup directory, killing what is left in it first (only
/// its own QEMU and passt can be, under uids of their own).
fn remove_dir(dir: &Path) {
    for _ in 0..50 {
        if !dir.exists() || fs::remove_dir(dir).is_ok() {
            return;
        }
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
            crate::host::signal(pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";

    #[test]
    fn a_hybrid_host_uses_the_v1_hierarchies_of_this_process() {
        let membership = "8:pids:/\n4:memory:/api/abc\n1:cpu:/\n0::/\n";
        assert_eq!(
            parse_layout(HYBRID, membership),
            Some(Layout::V1 {
                memory: "/sys/fs/cgroup/memory/api/abc".into(),
                pids: "/sys/fs/cgroup/pids".into(),
                cpu: "/sys/fs/cgroup/cpu".into(),
            })
        );
    }

    #[test]
    fn a_unified_host_uses_this_process_s_v2_directory() {
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate";
        assert_eq!(
            parse_layout(mountinfo, "0::/user.slice/session-1.scope\n"),
            Some(Layout::V2(
                "/sys/fs/cgroup/user.slice/session-1.scope".into()
            ))
        );
    }

    #[test]
    fn a_mount_of_a_subtree_is_followed() {
        // Inside a container the hierarchy's root is our own cgroup.
        let mountinfo = "30 23 0:26 /docker/x /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        assert_eq!(
            parse_layout(mountinfo, "0::/docker/x/inner\n"),
            Some(Layout::V2("/sys/fs/cgroup/inner".into()))
        );
        assert_eq!(parse_layout(mountinfo, "0::/elsewhere\n"), None);
    }
}
