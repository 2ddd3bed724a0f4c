//! Every `unsafe` call of the agent lives here, each behind a safe wrapper.
//! The agent runs as PID 1 inside a guest that we treat as hostile to the
//! host, not to itself: these wrappers only ever act on the guest.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no interior NUL")
}

fn path_cstr(p: &Path) -> CString {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).expect("no interior NUL")
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

pub fn mount(
    source: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = cstr(source);
    let target = path_cstr(target);
    let fstype = fstype.map(cstr);
    let data = data.map(cstr);
    // SAFETY: every pointer is either null or a NUL-terminated string that
    // outlives the call.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr() as *const libc::c_void),
        )
    })
}

pub fn chroot(path: &Path) -> io::Result<()> {
    let p = path_cstr(path);
    // SAFETY: `p` is a NUL-terminated string that outlives the call.
    check(unsafe { libc::chroot(p.as_ptr()) })
}

/// Loads a kernel module from an open file.
pub fn finit_module(file: &std::fs::File) -> io::Result<()> {
    let params = cstr("");
    // SAFETY: the fd is open for the duration of the call and `params` is a
    // NUL-terminated string.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    check(unsafe { libc::sethostname(name.as_ptr() as *const libc::c_char, name.len()) })
}

pub fn set_realtime(unix_time_ms: u64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: (unix_time_ms / 1000) as libc::time_t,
        tv_nsec: ((unix_time_ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec on the stack.
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) })
}

/// Milliseconds since the kernel started.
pub fn boottime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

pub fn kernel_release() -> String {
    // SAFETY: utsname is plain old data; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is valid and writable.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return String::new();
    }
    // SAFETY: uname NUL-terminates `release`.
    unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

pub fn kill_group(pgid: i32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions; a negative pid names
    // the process group.
    unsafe { libc::kill(-pgid, signal) };
}

pub fn kill_all(signal: i32) {
    // SAFETY: kill(-1) signals every process but PID 1 itself.
    unsafe { libc::kill(-1, signal) };
}

pub fn sync() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
}

pub fn power_off() -> ! {
    // SAFETY: reboot with RB_POWER_OFF does not return on success.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    // If it did return, exiting PID 1 panics the kernel, and `panic=-1`
    // with QEMU's `-no-reboot` ends the VM all the same.
    std::process::exit(1)
}

/// A child that has exited, found without reaping it.
pub struct Exited {
    pub pid: i32,
}

/// Waits until some child has exited and names it, leaving it unreaped
/// (`WNOWAIT`) so its owner can collect the status. `Ok(None)`: no children.
pub fn wait_any_exited() -> io::Result<Option<Exited>> {
    loop {
        // SAFETY: siginfo_t is plain old data; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is valid and writable.
        let ret = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ECHILD) => return Ok(None),
                _ => return Err(e),
            }
        }
        // SAFETY: waitid succeeded with WEXITED, so si_pid is set.
        let pid = unsafe { info.si_pid() };
        return Ok(Some(Exited { pid }));
    }
}

/// Reaps one exited child and returns its raw wait status.
pub fn reap(pid: i32) -> Option<i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is valid and writable.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret == pid {
            return Some(status);
        }
        if ret < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return None;
    }
}

/// Whether `path` is on a tmpfs (memory only, never the disk).
pub fn is_tmpfs(path: &Path) -> io::Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs is plain old data that statfs fills; `c` is a valid
    // NUL-terminated path for the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == libc::TMPFS_MAGIC)
}

/// Decodes a raw wait status into (exit code, signal).
pub fn decode_status(status: i32) -> (i32, Option<i32>) {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        (128 + sig, Some(sig))
    } else {
        (libc::WEXITSTATUS(status), None)
    }
}

/// Brings the loopback interface up.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket has no memory-safety preconditions.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain old data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq for SIOCGIFFLAGS/SIOCSIFFLAGS and `fd`
    // is an open socket; the union field written is the flags one.
    let ret = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
            -1
        } else {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req)
        }
    };
    let err = io::Error::last_os_error();
    // SAFETY: `fd` is ours to close.
    unsafe { libc::close(fd) };
    if ret < 0 {
        Err(err)
    } else {
        Ok(())
    }
}

/// Makes the child of `cmd` move itself into the cgroup whose
/// `cgroup.procs` file is `procs` before it executes, so that everything it
/// ever starts stays in that cgroup.
pub fn join_cgroup_on_spawn(cmd: &mut std::process::Command, procs: CString) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec; it only makes the
    // async-signal-safe calls open, write and close, and allocates nothing
    // (the path was built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, b"0".as_ptr() as *const libc::c_void, 1);
                libc::close(fd);
            }
            Ok(())
        });
    }
}

/// Has the child of `cmd` drop to `uid` and `gid` (and no supplementary
/// groups) just before its exec, after the closures registered earlier
/// (joining a cgroup needs root).
pub fn become_on_spawn(cmd: &mut std::process::Command, uid: u32, gid: u32) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only makes the
    // async-signal-safe calls setgroups, setgid and setuid.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Gives `path` (not what a symlink points to) to `uid`:`gid`.
pub fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated path for the call's duration.
    if unsafe { libc::lchown(c.as_ptr(), uid, gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;

/// Freezes (or thaws) the filesystem holding `path`: writes are flushed
/// and blocked until the thaw, so a disk snapshot taken meanwhile is
/// consistent.
pub fn freeze(path: &Path, frozen: bool) -> io::Result<()> {
    let dir = std::fs::File::open(path)?;
    let request = if frozen { FIFREEZE } else { FITHAW };
    // SAFETY: FIFREEZE/FITHAW take an int argument that the kernel ignores;
    // the fd is open for the call.
    check(unsafe { libc::ioctl(dir.as_raw_fd(), request as _, 0) })
}

const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Mixes `seed` into the kernel's entropy pool, credited, and reseeds the
/// CRNG at once: a guest restored from a snapshot must not share random
/// state with its siblings.
pub fn reseed_random(seed: &[u8]) -> io::Result<()> {
    let urandom = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; u32 buf[]; }
    let mut info = Vec::with_capacity(8 + seed.len());
    info.extend_from_slice(&((seed.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(seed.len() as i32).to_ne_bytes());
    info.extend_from_slice(seed);
    // SAFETY: `info` is a complete rand_pool_info with `buf_size` bytes of
    // buffer, alive for the call; the fd is open.
    check(unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) })?;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    check(unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG as _, 0) })
}

/// A new pseudo-terminal pair sized `cols` x `rows`: (master, slave).
pub fn open_pty(cols: u16, rows: u16) -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut master = 0;
    let mut slave = 0;
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two fds into the provided ints; the name
    // pointer may be null; termios null means defaults; `size` outlives it.
    check(unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    })?;
    // SAFETY: both fds were just returned by openpty and are owned by us.
    let (master, slave) = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(master),
            std::os::fd::OwnedFd::from_raw_fd(slave),
        )
    };
    // SAFETY: fcntl on an fd we own.
    unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok((master, slave))
}

/// Makes the child of `cmd` a session leader whose controlling terminal is
/// its stdin (the PTY slave).
pub fn controlling_terminal_on_spawn(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only the async-signal-safe setsid and
    // ioctl are called.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The foreground process group of the terminal `fd` is the master of.
/// Grows a pipe's buffer (best effort), so a command's output crosses in
/// fewer, larger reads.
pub fn grow_pipe(fd: &impl AsRawFd, bytes: i32) {
    // SAFETY: fcntl on an fd the caller owns; failure changes nothing.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) };
}

pub fn foreground_group(fd: &impl AsRawFd) -> Option<i32> {
    // SAFETY: tcgetpgrp on an fd we own.
    let pgrp = unsafe { libc::tcgetpgrp(fd.as_raw_fd()) };
    (pgrp > 0).then_some(pgrp)
}

fn sockaddr_in(addr: std::net::Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size and sockaddr is
    // the generic view of it, as the ioctls expect.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Gives interface `name` an IPv4 address, brings it up and routes
/// everything through `gateway`.
pub fn configure_ipv4(
    name: &str,
    address: std::net::Ipv4Addr,
    prefix: u8,
    gateway: std::net::Ipv4Addr,
) -> io::Result<()> {
    // SAFETY: socket has no memory-safety preconditions.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let result = (|| {
        // SAFETY: ifreq is plain old data.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (i, b) in name.bytes().take(15).enumerate() {
            req.ifr_name[i] = b as libc::c_char;
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix as u32)
        };
        // SAFETY: each ioctl gets a valid ifreq whose union member matches
        // the request; `fd` is an open socket.
        unsafe {
            req.ifr_ifru.ifru_addr = sockaddr_in(address);
            check(libc::ioctl(fd, libc::SIOCSIFADDR, &req))?;
            req.ifr_ifru.ifru_netmask = sockaddr_in(std::net::Ipv4Addr::from(mask));
            check(libc::ioctl(fd, libc::SIOCSIFNETMASK, &req))?;
            check(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req))?;
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            check(libc::ioctl(fd, libc::SIOCSIFFLAGS, &req))?;
        }
        // SAFETY: rtentry is plain old data.
        let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
        route.rt_dst = sockaddr_in(std::net::Ipv4Addr::UNSPECIFIED);
        route.rt_genmask = sockaddr_in(std::net::Ipv4Addr::UNSPECIFIED);
        route.rt_gateway = sockaddr_in(gateway);
        route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        // SAFETY: a valid rtentry for SIOCADDRT on an open socket.
        check(unsafe { libc::ioctl(fd, libc::SIOCADDRT, &route) })
    })();
    // SAFETY: `fd` is ours to close.
    unsafe { libc::close(fd) };
    result
}
