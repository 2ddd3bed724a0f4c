//! Entering the jail, in the child between `fork` and `exec`: everything is
//! prepared beforehand as C strings, so the child only makes system calls
//! (no allocation, no locks: the parent has threads).

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

/// One thing the child does to build its root.
enum Step {
    Dir(CString),
    File(CString),
    Symlink {
        target: CString,
        link: CString,
    },
    /// A bind mount of `source` on `target`, made read-only unless `rw`.
    Bind {
        source: CString,
        target: CString,
        rw: bool,
    },
}

/// How a child becomes jailed: namespaces, a root of only what is bound in,
/// a cgroup, limits, an unprivileged identity.
pub struct Plan {
    root: CString,
    steps: Vec<Step>,
    uid: u32,
    gid: u32,
    file_size_limit: u64,
    cgroup_procs: Vec<RawFd>,
}

fn cstr(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("paths hold no NUL")
}

impl Plan {
    /// A plan whose root is a fresh tmpfs mounted on `root` (an empty
    /// directory of the host, the same for every jail: each mounts it in a
    /// mount namespace of its own).
    pub fn new(root: &Path, uid: u32, gid: u32, file_size_limit: u64) -> Plan {
        Plan {
            root: cstr(root),
            steps: Vec::new(),
            uid,
            gid,
            file_size_limit,
            cgroup_procs: Vec::new(),
        }
    }

    fn inside(&self, path: &Path) -> CString {
        let mut bytes = self.root.as_bytes().to_vec();
        bytes.extend_from_slice(path.as_os_str().as_bytes());
        CString::new(bytes).expect("paths hold no NUL")
    }

    /// The directories leading to `path` inside the root.
    fn parents(&mut self, path: &Path) {
        let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
        ancestors.reverse();
        for dir in ancestors.into_iter().filter(|d| *d != Path::new("/")) {
            let inside = self.inside(dir);
            let known = self
                .steps
                .iter()
                .any(|s| matches!(s, Step::Dir(d) if *d == inside));
            if !known {
                self.steps.push(Step::Dir(inside));
            }
        }
    }

    /// Makes the host's `path` (a file or a directory) visible at the same
    /// path inside the jail.
    pub fn bind(&mut self, path: &Path, rw: bool) {
        self.parents(path);
        let target = self.inside(path);
        self.steps.push(if path.is_dir() {
            Step::Dir(target.clone())
        } else {
            Step::File(target.clone())
        });
        self.steps.push(Step::Bind {
            source: cstr(path),
            target,
            rw,
        });
    }

    /// A symbolic link at `link` inside the jail.
    pub fn symlink(&mut self, target: &str, link: &Path) {
        self.parents(link);
        self.steps.push(Step::Symlink {
            target: CString::new(target).expect("no NUL"),
            link: self.inside(link),
        });
    }

    /// The child joins the cgroup(s) whose `cgroup.procs` these are.
    pub fn join(&mut self, procs: Vec<RawFd>) {
        self.cgroup_procs = procs;
    }

    /// Has `cmd`'s child enter the jail before it executes.
    pub fn apply(self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        // SAFETY: `enter` makes only async-signal-safe system calls on data
        // prepared here.
        unsafe {
            cmd.pre_exec(move || self.enter());
        }
    }

    fn enter(&self) -> io::Result<()> {
        // SAFETY: system calls on NUL-terminated strings and descriptors
        // this plan owns; none allocates.
        unsafe {
            let none = std::ptr::null::<libc::c_char>();
            check(libc::unshare(
                libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS,
            ))?;
            // Nothing mounted here reaches the host's namespace.
            check(libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                c"tmpfs".as_ptr(),
                self.root.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"mode=0755,size=1m".as_ptr().cast(),
            ))?;
            for step in &self.steps {
                match step {
                    Step::Dir(path) => {
                        if libc::mkdir(path.as_ptr(), 0o755) != 0
                            && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
                        {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    Step::File(path) => {
                        let fd = libc::open(
                            path.as_ptr(),
                            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                            0o644,
                        );
                        check(fd)?;
                        libc::close(fd);
                    }
                    Step::Symlink { target, link } => {
                        check(libc::symlink(target.as_ptr(), link.as_ptr()))?
                    }
                    Step::Bind { source, target, rw } => {
                        check(libc::mount(
                            source.as_ptr(),
                            target.as_ptr(),
                            none,
                            libc::MS_BIND | libc::MS_REC,
                            std::ptr::null(),
                        ))?;
                        let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID;
                        if !rw {
                            flags |= libc::MS_RDONLY;
                        }
                        check(libc::mount(
                            none,
                            target.as_ptr(),
                            none,
                            flags,
                            std::ptr::null(),
                        ))?;
                    }
                }
            }
            // The root itself becomes read-only, then the only root.
            check(libc::mount(
                none,
                self.root.as_ptr(),
                none,
                libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                std::ptr::null(),
            ))?;
            check(libc::chdir(self.root.as_ptr()))?;
            check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as i32)?;
            check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
            check(libc::chdir(c"/".as_ptr()))?;

            for &fd in &self.cgroup_procs {
                let zero = b"0";
                if libc::write(fd, zero.as_ptr().cast(), zero.len()) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            let limit = |resource, value: u64| {
                let r = libc::rlimit {
                    rlim_cur: value,
                    rlim_max: value,
                };
                check(libc::setrlimit(resource, &r))
            };
            limit(libc::RLIMIT_CORE, 0)?;
            limit(libc::RLIMIT_FSIZE, self.file_size_limit)?;

            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setresgid(self.gid, self.gid, self.gid))?;
            check(libc::setresuid(self.uid, self.uid, self.uid))?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        Ok(())
    }
}

fn check(ret: i32) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Has `cmd`'s child join cgroups and create files only its group may use,
/// for a helper that drops its privileges itself (passt).
pub fn join_only(cmd: &mut Command, cgroup_procs: Vec<RawFd>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: write and umask are async-signal-safe; the descriptors stay
    // open in the parent until the child has executed.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &cgroup_procs {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            libc::umask(0o007);
            Ok(())
        });
    }
}
