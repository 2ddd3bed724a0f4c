//! The host: facts read from it and the tools run on it, and every
//! `unsafe` call of the library (each with its `SAFETY:` note). Every
//! external program pyro runs to completion goes through [`tool`], so
//! failures read the same everywhere; the long-lived ones (QEMU, passt,
//! the supervisor) are started by `vmm::boot` and `vmm::launch` with
//! [`die_with_parent`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, IoContext, Result};

/// Runs a host tool to completion, with stdin closed; a non-zero exit is an
/// error carrying the tail of its stderr.
pub fn tool(cmd: &mut Command) -> Result<String> {
    let none: Option<fn(&mut std::process::ChildStdin) -> io::Result<()>> = None;
    tool_fed(cmd, none).map(|(out, _)| out)
}

/// Runs a host tool whose standard input `feed` writes (from this thread,
/// while the tool runs); the tool's failure is reported before the
/// feeder's (usually only the broken pipe it caused), unless the feeder
/// refused its own input (`InvalidData`).
pub fn tool_with_input<T>(
    cmd: &mut Command,
    feed: impl FnOnce(&mut std::process::ChildStdin) -> io::Result<T>,
) -> Result<(String, T)> {
    let (out, fed) = tool_fed(cmd, Some(feed))?;
    Ok((out, fed.expect("fed")))
}

fn tool_fed<T>(
    cmd: &mut Command,
    feed: Option<impl FnOnce(&mut std::process::ChildStdin) -> io::Result<T>>,
) -> Result<(String, Option<T>)> {
    use std::io::Read;
    let name = cmd.get_program().to_string_lossy().into_owned();
    // Resolve through `which`, which also looks in the sbin directories.
    let mut resolved = Command::new(which(&name).unwrap_or_else(|| PathBuf::from(&name)));
    resolved.args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        resolved.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => resolved.env(k, v),
            None => resolved.env_remove(k),
        };
    }
    // If pyro dies, the tool is asked to stop (and can clean up after
    // itself, as mmdebstrap unmounts what it mounted).
    die_with_parent(&mut resolved, libc::SIGTERM);
    let failed = |e: io::Error| Error::Tool {
        tool: name.clone(),
        detail: if e.kind() == io::ErrorKind::NotFound {
            format!("{name} is not installed (run scripts/setup.sh)")
        } else {
            e.to_string()
        },
    };
    let mut child = resolved
        .stdin(if feed.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(failed)?;
    // Both outputs are drained while the input is written, so a chatty
    // tool never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let fed = feed.map(|f| {
        let mut stdin = child.stdin.take().expect("piped");
        f(&mut stdin)
    });
    let status = child.wait().map_err(failed)?;
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    // The feeder refusing its input (`InvalidData`) is the story; the
    // tool's complaint about the input ending early is only its echo.
    if let Some(Err(e)) = &fed {
        if e.kind() == io::ErrorKind::InvalidData {
            return Err(Error::InvalidArgument(format!("{name}'s input: {e}")));
        }
    }
    if !status.success() {
        let stderr = String::from_utf8_lossy(&stderr);
        return Err(Error::Tool {
            tool: name,
            detail: format!("{status}: {}", tail(&stderr, 15)),
        });
    }
    let fed = fed.transpose().ctx(|| format!("feed {name}"))?;
    Ok((String::from_utf8_lossy(&stdout).into_owned(), fed))
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Finds a program on `PATH` (and the sbin directories a non-root `PATH`
/// often lacks).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The host's TSC frequency in kHz, for `tsc_early_khz=` under TCG: microvm
/// has no HPET or PM timer, and early TSC calibration otherwise hangs a few
/// percent of boots.
pub fn tsc_khz() -> Option<u64> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

/// The uid of the process at the other end of a UNIX socket.
pub fn peer_uid(stream: &std::os::unix::net::UnixStream) -> Option<u32> {
    peer(stream).map(|(_, uid)| uid)
}

/// The pid of the process at the other end of a UNIX socket (for a
/// connection we made: the process that listens).
pub fn peer_pid(stream: &std::os::unix::net::UnixStream) -> Option<i32> {
    peer(stream).map(|(pid, _)| pid)
}

fn peer(stream: &std::os::unix::net::UnixStream) -> Option<(i32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given, and
    // the fd is open for the call.
    let ret = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    (ret == 0).then_some((cred.pid, cred.uid))
}

/// This process's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A random identifier of `bytes` bytes, as hex.
pub fn random_id(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // SAFETY: `buf` is valid for `bytes` writable bytes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr() as *mut libc::c_void, bytes, 0) };
    assert_eq!(n as usize, bytes, "getrandom failed");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `bytes` to `path` atomically: a temporary file (mode 0600) in the
/// same directory, flushed, renamed over the target, and the directory
/// flushed too.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        random_id(4)
    ));
    let write = || -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename itself is on the disk before we say it happened.
        File::open(dir)?.sync_all()
    };
    write()
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
        .ctx(|| format!("write {}", path.display()))
}

/// Flushes a directory's entries (a rename in it) to the disk.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Creates `path` (and missing parents) as a directory only its owner may
/// enter (0700), and makes an existing one so: pyro's state (records,
/// disks, secrets, sockets) is nobody else's to read.
pub fn private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .ctx(|| format!("create {}", path.display()))?;
    let meta = fs::symlink_metadata(path).ctx(|| format!("stat {}", path.display()))?;
    if !meta.is_dir() {
        return Err(Error::Io {
            context: format!("{} is not a directory", path.display()),
            source: io::Error::from(io::ErrorKind::NotADirectory),
        });
    }
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .ctx(|| format!("chmod {}", path.display()))?;
    }
    Ok(())
}

/// Fails unless `path` is owned by this process's user (a directory in a
/// shared place such as `/tmp` that someone else made first is theirs).
pub fn owned_by_us(path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(path).ctx(|| format!("stat {}", path.display()))?;
    if meta.uid() != euid() {
        return Err(Error::Io {
            context: format!(
                "{} belongs to uid {}, not to this user ({}); remove it",
                path.display(),
                meta.uid(),
                euid()
            ),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        });
    }
    Ok(())
}

/// Makes `path` readable and writable by its owner only.
pub fn private_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .ctx(|| format!("chmod {}", path.display()))
}

/// Produces a new host file at `output`: `make` writes a temporary file
/// beside it, which is renamed into place only if `make` succeeds. An
/// existing `output` is refused unless `force`.
pub fn produce_file(
    output: &Path,
    force: bool,
    make: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    if fs::symlink_metadata(output).is_ok() && !force {
        return Err(Error::conflict_with(
            format!("{} already exists", output.display()),
            crate::error::Remedy::Overwrite,
        ));
    }
    let tmp = output.with_file_name(format!(
        ".{}.partial-{}",
        output.file_name().unwrap_or_default().to_string_lossy(),
        random_id(4)
    ));
    let result = make(&tmp)
        .and_then(|()| fs::rename(&tmp, output).ctx(|| format!("write {}", output.display())));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// An exclusive advisory lock on a file, released on drop.
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// The lock, unless another process holds it.
    pub fn try_acquire(path: &Path) -> Result<Option<FileLock>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .ctx(|| format!("open lock {}", path.display()))?;
        // SAFETY: flock on an fd we own.
        let ret = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        Ok((ret == 0).then_some(FileLock { _file: file }))
    }

    pub fn acquire(path: &Path) -> Result<FileLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .ctx(|| format!("open lock {}", path.display()))?;
        loop {
            // SAFETY: flock on an fd we own.
            let ret = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if ret == 0 {
                return Ok(FileLock { _file: file });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e).ctx(|| format!("lock {}", path.display()));
            }
        }
    }
}

/// Whether a process is stopped (SIGSTOP, a tracer).
pub fn process_stopped(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        matches!(
            stat.rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next()),
            Some("T") | Some("t")
        )
    })
}

pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Bytes as lowercase hex (how digests are written).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = File::open(path).ctx(|| format!("open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        use std::io::Read;
        let n = f
            .read(&mut buf)
            .ctx(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Copies `from` into the new file `to`, leaving holes where the data is
/// zeros (a disk image stays sparse); returns the bytes copied.
pub fn write_sparse(mut from: impl io::Read, to: &Path) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut out = File::create(to).ctx(|| format!("create {}", to.display()))?;
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match from.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).ctx(|| format!("read what goes into {}", to.display())),
            }
        }
        if filled == 0 {
            break;
        }
        if buf[..filled].iter().all(|b| *b == 0) {
            out.seek(SeekFrom::Current(filled as i64))
                .ctx(|| format!("seek {}", to.display()))?;
        } else {
            out.write_all(&buf[..filled])
                .ctx(|| format!("write {}", to.display()))?;
        }
        total += filled as u64;
    }
    out.set_len(total)
        .ctx(|| format!("size {}", to.display()))?;
    out.sync_all().ctx(|| format!("sync {}", to.display()))?;
    Ok(total)
}

/// Has the child of `cmd` receive `signal` when its parent dies. A parent
/// that died before the child asked (a killed supervisor, while its child
/// was still entering the jail) never sends it: the child then does not
/// execute at all.
pub(crate) fn die_with_parent(cmd: &mut Command, signal: i32) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure only calls prctl and getppid, which are
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::other("the parent died"));
            }
            Ok(())
        });
    }
}

/// Removes a directory tree that a killed build may have left with mounts
/// inside (mmdebstrap bind-mounts the host's `/sys` and `/proc` into its
/// chroot): everything mounted below it is detached first, and the removal
/// is refused if anything stays mounted, so it can never reach into a host
/// filesystem.
pub fn remove_tree(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    if !path.is_dir() {
        return fs::remove_file(path).ctx(|| format!("remove {}", path.display()));
    }
    let root = fs::canonicalize(path).ctx(|| format!("resolve {}", path.display()))?;
    let mounts_below = || -> Vec<PathBuf> {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut found: Vec<PathBuf> = info
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .map(|m| PathBuf::from(m.replace("\\040", " ")))
            .filter(|m| m.starts_with(&root))
            .collect();
        // Deepest first.
        found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        found
    };
    for mount in mounts_below() {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(mount.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    let left = mounts_below();
    if !left.is_empty() {
        return Err(Error::Io {
            context: format!(
                "refusing to remove {}: still mounted inside it: {left:?}",
                path.display()
            ),
            source: io::Error::from(io::ErrorKind::ResourceBusy),
        });
    }
    match fs::remove_dir_all(path) {
        // A tree unpacked by a regular user can hold directories that user
        // may not write; make them writable and try again.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied && !is_root() => {
            let _ = tool(Command::new("chmod").args(["-R", "u+rwX"]).arg(path));
            fs::remove_dir_all(path)
        }
        other => other,
    }
    .ctx(|| format!("remove {}", path.display()))
}

/// Disk space a tree really uses (sparse files count their allocated
/// blocks), without following symlinks or crossing into other filesystems.
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        if let Ok(entries) = fs::read_dir(path) {
            for e in entries.flatten() {
                let same_fs = fs::symlink_metadata(e.path())
                    .map(|m| m.dev() == meta.dev())
                    .unwrap_or(false);
                if same_fs {
                    total += disk_usage(&e.path());
                }
            }
        }
    }
    total
}

/// Detaches the calling process from its parent: fork, the parent exits at
/// once (so whoever spawned us can reap it), the child starts a new session.
/// Must be called before any thread is started.
pub fn daemonize() {
    // SAFETY: called while the process is single-threaded, so the child
    // inherits a consistent address space; the parent only calls _exit.
    unsafe {
        match libc::fork() {
            -1 => panic!("fork failed: {}", io::Error::last_os_error()),
            0 => {
                libc::setsid();
            }
            _ => libc::_exit(0),
        }
    }
}

/// Points this process's stdout at `/dev/null` (after the supervisor has
/// reported readiness through it).
pub fn stdout_to_null() {
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        // SAFETY: dup2 between two fds this process owns.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

/// Gives `path` to `uid:gid` (without following a final symlink).
pub fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
        .ctx(|| format!("chown {}", path.display()))?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    if unsafe { libc::lchown(c.as_ptr(), uid, gid) } != 0 {
        return Err(io::Error::last_os_error()).ctx(|| format!("chown {}", path.display()));
    }
    Ok(())
}

pub fn signal(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, sig) };
    }
}
