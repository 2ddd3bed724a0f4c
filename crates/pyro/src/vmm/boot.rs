//! Bringing a guest up: start passt (when the VM has a network) and QEMU,
//! restore a saved state or let the kernel boot, and wait for the agent's
//! `welcome` under a watchdog. Used by the supervisor for every VM and by
//! template builds; nothing here routes requests.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pyro_protocol::{Decoder, Frame, Message, SUPPORTED_GENERATIONS};

use crate::error::{Error, IoContext, Result};
use crate::host;
use crate::vmm::channel::stream;
use crate::vmm::dir::{VmDir, VmRecord};
use crate::vmm::jail::Jail;
use crate::vmm::qemu::{self, net, Accel, VmSpec};
use crate::vmm::qmp::{MigrationStatus, Qmp, RunState};

/// How long a boot may take before the VM is killed and booted again.
fn boot_watchdog(accel: Accel) -> Duration {
    match accel {
        Accel::Kvm => Duration::from_secs(20),
        Accel::Tcg => Duration::from_secs(45),
    }
}
const BOOT_ATTEMPTS: u32 = 2;
/// How long loading a template's state may take.
const RESTORE_WATCHDOG: Duration = Duration::from_secs(15);

/// What the agent said in its `welcome`.
#[derive(Debug, Clone, Default)]
pub struct Welcome {
    pub generation: u32,
    pub kernel_release: String,
    pub agent_version: String,
    /// The guest's clock at the welcome: kernel start to agent ready.
    pub boot_ms: u64,
    /// The guest contains each command in a cgroup (cgroup v2 mounted).
    pub cgroups: bool,
}

/// A guest that answered: QEMU, the agent's connection, its welcome.
pub struct Booted {
    pub qemu: Child,
    pub agent: UnixStream,
    pub welcome: Welcome,
    pub attempts: u32,
    /// The saved state was restored (rather than the kernel booted).
    pub restored: bool,
    /// The VM's network, ended on drop.
    pub passt: Option<Passt>,
    /// QEMU's jail (when pyro runs as root), to drop once QEMU has exited.
    pub jail: Option<Jail>,
}

/// A VM's passt, killed on drop: it would otherwise wait for a QEMU that
/// never connects for as long as the process that started it lives.
pub struct Passt(Child);

impl Drop for Passt {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct BootError {
    pub message: String,
    retry: bool,
}

/// Brings the VM of `record` up: restores its snapshot if it has one
/// (booting the same disk instead if that fails: ext4 recovers it like
/// after a crash), and boots once more if the first boot hangs.
pub fn boot(dir: &VmDir, record: &VmRecord) -> Result<Booted, String> {
    let mut record = record.clone();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match boot_once(dir, &record) {
            Ok(booted) => {
                return Ok(Booted {
                    attempts: attempt,
                    restored: record.spec.snapshot.is_some(),
                    ..booted
                })
            }
            Err(e) if record.spec.snapshot.is_some() => {
                eprintln!(
                    "supervisor: restoring the saved state failed: {}; booting instead",
                    e.message
                );
                // The disk is about to move on: a VM's own state would
                // never match it again.
                if let Some(state) = record.spec.snapshot.take() {
                    if record.restore.is_live() {
                        let _ = fs::remove_file(state);
                    }
                }
            }
            Err(e) if attempt < BOOT_ATTEMPTS && e.retry => {
                eprintln!(
                    "supervisor: boot attempt {attempt} failed: {}; retrying",
                    e.message
                );
            }
            Err(e) => return Err(e.message),
        }
    }
}

/// Starts QEMU and waits for the agent's welcome, within the watchdog.
pub fn boot_once(dir: &VmDir, record: &VmRecord) -> Result<Booted, BootError> {
    let fatal = |e: Error| BootError {
        message: e.to_string(),
        retry: false,
    };
    // The sockets are where this directory keeps them, whatever an older
    // record says.
    let mut record = record.clone();
    record.spec.agent_socket = dir.agent_socket();
    record.spec.qmp_socket = dir.qmp_socket();
    record.spec.console_log = dir.console_log();
    let record = &record;
    dir.prepare_sockets().map_err(fatal)?;
    let _ = fs::remove_file(dir.agent_socket());
    let _ = fs::remove_file(dir.qmp_socket());
    if let Some(run) = record.spec.agent_socket.parent() {
        host::private_dir(run).map_err(fatal)?;
    }
    let jail = Jail::prepare(&record.spec).map_err(fatal)?;
    if let Some(why) = jail.as_ref().and_then(|j| j.cgroup_missing.as_deref()) {
        eprintln!("supervisor: QEMU runs without a cgroup: {why}");
    }
    // The network (if any) listens before QEMU connects to it; it exits
    // with QEMU, so each boot attempt gets its own.
    let passt = match &record.spec.network_socket {
        Some(sock) => Some(Passt(
            spawn_passt(sock, &dir.passt_log(), jail.as_ref()).map_err(fatal)?,
        )),
        None => None,
    };
    let mut child = spawn_qemu(&record.spec, &dir.qemu_log(), jail.as_ref()).map_err(fatal)?;
    let deadline = Instant::now() + boot_watchdog(record.spec.accel);
    let give_up = |child: &mut Child, why: String, retry: bool| {
        let _ = child.kill();
        let _ = child.wait();
        let console = tail_of(&dir.console_log());
        let qemu = tail_of(&dir.qemu_log());
        let mut message = why;
        if let Some(verdict) = jail.as_ref().and_then(Jail::memory_verdict) {
            message.push_str(&format!(" ({verdict})"));
        }
        if !qemu.trim().is_empty() {
            message.push_str(&format!("\nqemu said:\n{}", host::tail(&qemu, 10)));
        }
        if !console.trim().is_empty() {
            message.push_str(&format!(
                "\nguest console (last lines):\n{}",
                host::tail(&console, 15)
            ));
        }
        BootError { message, retry }
    };

    // A restored guest stays paused (it was saved paused) until resumed.
    if record.spec.snapshot.is_some() {
        let until = Instant::now() + RESTORE_WATCHDOG;
        let consume = record
            .spec
            .snapshot
            .as_deref()
            .filter(|_| record.restore.is_live());
        if let Err(why) = resume_restored(dir, &mut child, until, consume) {
            return Err(give_up(&mut child, why, true));
        }
    }

    // QEMU creates the agent socket as it starts.
    let mut agent = loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(give_up(
                &mut child,
                format!("QEMU exited at start ({status})"),
                false,
            ));
        }
        if let Ok(s) = crate::vmm::qmp::connect_to(&dir.agent_socket(), child.id() as i32) {
            break s;
        }
        if Instant::now() > deadline {
            return Err(give_up(
                &mut child,
                "QEMU never opened the agent socket".into(),
                true,
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    };

    let hello = Frame::message(
        stream::CONTROL,
        &Message::Hello {
            generations: SUPPORTED_GENERATIONS.to_vec(),
            host_version: env!("CARGO_PKG_VERSION").into(),
        },
    );
    let mut decoder = Decoder::default();
    let mut buf = [0u8; 4096];
    let mut next_hello = Instant::now();
    if let Err(e) = agent.set_read_timeout(Some(Duration::from_millis(50))) {
        return Err(give_up(&mut child, format!("agent socket: {e}"), false));
    }
    loop {
        let now = Instant::now();
        if now >= next_hello {
            // Repeated until answered: bytes sent before the guest opened its
            // port may be lost.
            let _ = agent.write_all(&hello.encode());
            next_hello = now + Duration::from_millis(500);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(give_up(
                &mut child,
                format!("QEMU exited during boot ({status})"),
                true,
            ));
        }
        if now > deadline {
            return Err(give_up(
                &mut child,
                format!(
                    "the guest agent did not answer within {}s",
                    boot_watchdog(record.spec.accel).as_secs()
                ),
                true,
            ));
        }
        match agent.read(&mut buf) {
            Ok(0) => {
                return Err(give_up(
                    &mut child,
                    "QEMU closed the agent socket".into(),
                    true,
                ));
            }
            Ok(n) => decoder.push(&buf[..n]),
            Err(_) => continue,
        }
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                // Nothing after a broken frame can be trusted (and the
                // buffer would only grow): this boot failed.
                Err(e) => {
                    return Err(give_up(
                        &mut child,
                        format!("the agent's port carried a malformed frame: {e}"),
                        true,
                    ))
                }
            };
            match frame.decode_message() {
                Ok(Message::Welcome {
                    generation,
                    agent_version,
                    kernel_release,
                    boot_ms,
                    cgroups,
                }) => {
                    if let Err(e) = agent.set_read_timeout(None) {
                        return Err(give_up(&mut child, format!("agent socket: {e}"), false));
                    }
                    let welcome = Welcome {
                        generation,
                        kernel_release,
                        agent_version,
                        boot_ms,
                        cgroups,
                    };
                    return Ok(Booted {
                        qemu: child,
                        agent,
                        welcome,
                        attempts: 1,
                        restored: record.spec.snapshot.is_some(),
                        passt,
                        jail,
                    });
                }
                Ok(Message::Error { message }) => {
                    return Err(give_up(
                        &mut child,
                        format!("the agent refused: {message}"),
                        false,
                    ));
                }
                _ => {}
            }
        }
    }
}

/// Waits for QEMU to load the saved state it reads on `-incoming`, then
/// resumes the guest. A VM's own saved state (`consume`) is removed once
/// loaded, before the guest runs and its disk moves on.
fn resume_restored(
    dir: &VmDir,
    child: &mut Child,
    until: Instant,
    consume: Option<&Path>,
) -> Result<(), String> {
    let exited = |child: &mut Child| match child.try_wait() {
        Ok(Some(status)) => Some(format!("QEMU exited while restoring ({status})")),
        _ => None,
    };
    let mut qmp = loop {
        if let Some(why) = exited(child) {
            return Err(why);
        }
        match Qmp::connect(&dir.qmp_socket(), child.id() as i32, Duration::from_secs(5)) {
            Ok(q) => break q,
            Err(e) if Instant::now() > until => return Err(format!("QMP: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    let why = |e: crate::vmm::qmp::QmpError, child: &mut Child| {
        exited(child).unwrap_or_else(|| e.to_string())
    };
    loop {
        match qmp.run_state().map_err(|e| why(e, child))? {
            RunState::Running => return Ok(()),
            RunState::InMigrate => {}
            RunState::Other => match qmp.migration().map_err(|e| why(e, child))? {
                (MigrationStatus::Completed, _) => {
                    if let Some(state) = consume {
                        fs::remove_file(state)
                            .map_err(|e| format!("consume {}: {e}", state.display()))?;
                        if let Some(parent) = state.parent() {
                            host::sync_dir(parent);
                        }
                    }
                    return qmp
                        .execute("cont", serde_json::json!({}))
                        .map(|_| ())
                        .map_err(|e| why(e, child));
                }
                (MigrationStatus::Failed, answer) => {
                    return Err(format!("restoring the saved state failed: {answer}"))
                }
                (MigrationStatus::InProgress, _) => {}
            },
        }
        if Instant::now() > until {
            return Err(format!(
                "restoring the saved state took over {}s",
                RESTORE_WATCHDOG.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A log QEMU may have replaced (its run directory is its own, jailed):
/// opened only if it is a regular file, never through a symbolic link,
/// never blocking on a FIFO.
fn open_log(path: &Path, write: bool) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(f)
}

/// The last 64 KiB of a log, whatever its size.
fn tail_of(path: &Path) -> String {
    use std::io::Seek;
    let Ok(mut f) = open_log(path, false) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(io::SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut bytes = Vec::new();
    let _ = f.take(64 * 1024).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// How large a VM's console log grows before its start is cut away
/// (the last [`LOG_KEEP`] bytes are kept beside it, in `.1`).
pub const LOG_LIMIT: u64 = 1 << 20;
const LOG_KEEP: u64 = 256 * 1024;

/// Keeps a log that a process appends to within [`LOG_LIMIT`] (plus the
/// kept tail): a guest that prints without end fills no disk.
pub fn bound_log(path: &Path) {
    use std::io::Seek;
    let Ok(len) = fs::symlink_metadata(path).map(|m| m.len()) else {
        return;
    };
    if len <= LOG_LIMIT {
        return;
    }
    if let Ok(mut f) = open_log(path, false) {
        let _ = f.seek(io::SeekFrom::Start(len - LOG_KEEP));
        let mut tail = Vec::new();
        let _ = f.take(LOG_KEEP).read_to_end(&mut tail);
        let mut kept = path.as_os_str().to_owned();
        kept.push(".1");
        // Written fresh: whatever stood there (a link) is replaced.
        let kept = Path::new(&kept);
        let _ = fs::remove_file(kept);
        if let Ok(mut out) = OpenOptions::new().write(true).create_new(true).open(kept) {
            let _ = out.write_all(&tail);
        }
    }
    // The writer appends: after the cut it writes at the new end.
    if let Ok(f) = open_log(path, true) {
        let _ = f.set_len(0);
    }
}

fn append_log(log: &Path) -> Result<fs::File> {
    // Each boot appends; one that starts over a long log cuts it first.
    bound_log(log);
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .ctx(|| format!("open {}", log.display()))
}

fn not_installed(tool: &str, e: io::Error, package: &str) -> Error {
    Error::Tool {
        tool: tool.into(),
        detail: if e.kind() == io::ErrorKind::NotFound {
            format!("{tool} is not installed (run scripts/setup.sh, or apt-get install {package})")
        } else {
            e.to_string()
        },
    }
}

/// Starts QEMU for `spec`, as a child that dies with its parent (the
/// supervisor), with its stderr in `log`, inside `jail` if there is one.
pub fn spawn_qemu(spec: &VmSpec, log: &Path, jail: Option<&Jail>) -> Result<Child> {
    let log = append_log(log)?;
    // A snapshot to restore is QEMU's standard input (`-incoming fd:0`).
    let stdin = match &spec.snapshot {
        Some(state) => {
            Stdio::from(fs::File::open(state).ctx(|| format!("open {}", state.display()))?)
        }
        None => Stdio::null(),
    };
    // An absolute path: a jailed QEMU finds no PATH.
    let program = host::which(qemu::QEMU).unwrap_or_else(|| qemu::QEMU.into());
    let mut cmd = Command::new(program);
    cmd.args(qemu::args(spec))
        .env_clear()
        .stdin(stdin)
        .stdout(log.try_clone().ctx(|| "dup log".into())?)
        .stderr(log);
    if let Some(jail) = jail {
        jail.confine_qemu(&mut cmd);
    }
    // After the jail's change of uid, which clears the parent-death signal.
    host::die_with_parent(&mut cmd, libc::SIGKILL);
    cmd.spawn()
        .map_err(|e| not_installed(qemu::QEMU, e, "qemu-system-x86"))
}

/// Starts passt, the user-mode network for one VM: the guest gets
/// `qemu::net`'s address behind its gateway, DNS queries to its DNS address
/// go to the host's resolver, and `--no-map-gw` keeps the host's own
/// loopback out of the guest's reach. It serves one QEMU and exits when
/// that one goes.
pub fn spawn_passt(socket: &Path, log: &Path, jail: Option<&Jail>) -> Result<Child> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = socket.parent().unwrap_or(Path::new("."));
    // The directory is made fresh, by us, for this boot: one left by an
    // earlier boot of this VM is ours to remove; anything else in its
    // place (another user's, a symlink) stops the boot.
    if let Ok(m) = fs::symlink_metadata(dir) {
        let ours =
            m.uid() == host::euid() || m.uid() == 65534 || crate::vmm::jail::is_jail_uid(m.uid());
        if m.is_dir() && ours {
            fs::remove_dir_all(dir).ctx(|| format!("remove {}", dir.display()))?;
        } else {
            return Err(Error::Tool {
                tool: "passt".into(),
                detail: format!("{} exists and is not this VM's", dir.display()),
            });
        }
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .ctx(|| format!("create {}", dir.display()))?;
    match jail {
        // passt runs as the jail's second uid and makes its socket for the
        // jail's group, so QEMU (the group's other member) can connect.
        Some(jail) => {
            host::chown(dir, jail.ids.passt_uid, jail.ids.gid)?;
            fs::set_permissions(
                dir,
                <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o750),
            )
            .ctx(|| format!("chmod {}", dir.display()))?;
        }
        // passt drops root for `nobody`, who must be able to create the
        // socket; the directory is this VM's alone.
        None if host::is_root() => host::chown(dir, 65534, 65534)?,
        None => {}
    }
    let _ = fs::remove_file(socket);
    let log = append_log(log)?;
    let mut cmd = Command::new(host::which("passt").unwrap_or_else(|| "passt".into()));
    cmd.args(["-f", "-q", "-1", "--no-map-gw", "-a", net::ADDRESS, "-n"])
        .arg(net::PREFIX.to_string())
        .args(["-g", net::GATEWAY, "--dns-forward", net::DNS, "-s"])
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(log.try_clone().ctx(|| "dup log".into())?)
        .stderr(log);
    if let Some(jail) = jail {
        jail.confine_passt(&mut cmd);
    }
    host::die_with_parent(&mut cmd, libc::SIGKILL);
    let child = cmd
        .spawn()
        .map_err(|e| not_installed("passt", e, "passt"))?;
    for _ in 0..500 {
        if socket.exists() {
            return Ok(child);
        }
        std::thread::sleep(Duration::from_millis(4));
    }
    Err(Error::Tool {
        tool: "passt".into(),
        detail: "its socket never appeared".into(),
    })
}
