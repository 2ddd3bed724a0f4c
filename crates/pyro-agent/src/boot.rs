//! Bringing the guest up: from the initramfs to the real root, and the
//! mounts a Linux userland expects.

use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::sys;

/// Marker file that the host puts in the initramfs it builds.
pub const INITRAMFS_MARKER: &str = "/pyro-initramfs";
/// Module load order, one file name per line, written by the host.
const MODULES_ORDER: &str = "/modules.order";
const MODULES_DIR: &str = "/modules";
const ROOT_DEVICE: &str = "/dev/vda";
const NEW_ROOT: &str = "/newroot";

fn log(msg: &str) {
    // The serial console is the only place early boot can speak to.
    eprintln!("pyro-agent: {msg}");
}

/// Stage one, inside the initramfs: load the virtio drivers, mount the root
/// disk and make it `/`. The agent stays PID 1 throughout.
pub fn switch_to_root_disk() -> io::Result<()> {
    for dir in ["/dev", "/proc", "/sys", NEW_ROOT] {
        fs::create_dir_all(dir)?;
    }
    sys::mount("devtmpfs", Path::new("/dev"), Some("devtmpfs"), 0, None)?;
    sys::mount("proc", Path::new("/proc"), Some("proc"), 0, None)?;
    sys::mount("sysfs", Path::new("/sys"), Some("sysfs"), 0, None)?;
    load_modules()?;
    wait_for(Path::new(ROOT_DEVICE), Duration::from_secs(10))?;
    sys::mount(
        ROOT_DEVICE,
        Path::new(NEW_ROOT),
        Some("ext4"),
        libc::MS_NOATIME,
        None,
    )
    .map_err(|e| io::Error::new(e.kind(), format!("mount {ROOT_DEVICE}: {e}")))?;
    for dir in ["dev", "proc", "sys"] {
        let target = Path::new(NEW_ROOT).join(dir);
        fs::create_dir_all(&target)?;
        sys::mount(&format!("/{dir}"), &target, None, libc::MS_MOVE, None)?;
    }
    std::env::set_current_dir(NEW_ROOT)?;
    sys::mount(".", Path::new("/"), None, libc::MS_MOVE, None)?;
    sys::chroot(Path::new("."))?;
    std::env::set_current_dir("/")?;
    Ok(())
}

fn load_modules() -> io::Result<()> {
    let order = match fs::read_to_string(MODULES_ORDER) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let file = fs::File::open(Path::new(MODULES_DIR).join(name))?;
        match sys::finit_module(&file) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => log(&format!("loading {name}: {e}")),
        }
    }
    Ok(())
}

fn wait_for(path: &Path, limit: Duration) -> io::Result<()> {
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() > limit {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} did not appear", path.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Stage two, on the real root: the mounts and links userland expects.
/// Each step is best effort; a missing piece is logged, not fatal.
pub fn prepare_userland() {
    let mounts: &[(&str, &str, &str, libc::c_ulong, Option<&str>)] = &[
        ("proc", "/proc", "proc", 0, None),
        ("sysfs", "/sys", "sysfs", 0, None),
        // One cgroup per command: a timeout or cancel ends everything the
        // command started, escaped from its process group or not.
        (
            "cgroup2",
            crate::cgroup::ROOT,
            "cgroup2",
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        ),
        ("devtmpfs", "/dev", "devtmpfs", 0, None),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("gid=5,mode=620,ptmxmode=666"),
        ),
        (
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=755"),
        ),
    ];
    for (source, target, fstype, flags, data) in mounts {
        let target = Path::new(target);
        if is_mountpoint(target) {
            continue;
        }
        let _ = fs::create_dir_all(target);
        if let Err(e) = sys::mount(source, target, Some(fstype), *flags, *data) {
            log(&format!("mount {}: {e}", target.display()));
        }
    }
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/ptmx", "pts/ptmx"),
    ] {
        if fs::symlink_metadata(link).is_err() {
            let _ = std::os::unix::fs::symlink(target, link);
        }
    }
    let _ = fs::create_dir_all("/run/lock");
    if let Err(e) = sys::loopback_up() {
        log(&format!("loopback: {e}"));
    }
}

fn is_mountpoint(path: &Path) -> bool {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(&*wanted))
}

/// Ends every process, flushes the disk and powers the VM off.
pub fn power_off() -> ! {
    sys::kill_all(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    sys::kill_all(libc::SIGKILL);
    sys::sync();
    let _ = sys::mount(
        "",
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY,
        None,
    );
    sys::sync();
    sys::power_off()
}
