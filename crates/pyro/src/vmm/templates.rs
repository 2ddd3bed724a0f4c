//! Template snapshots: fast start.
//!
//! Booting a guest costs seconds under TCG. Instead, one VM per
//! environment and machine shape is booted once, up to the agent's
//! `welcome` (a state that carries nothing of any sandbox), then stopped
//! and its memory and device state saved with QMP `migrate`. Its disk,
//! frozen from then on, becomes `base.qcow2`. A later VM of that shape gets
//! a new overlay on `base.qcow2` (so disk and restored page cache agree),
//! QEMU restores the saved state (`-incoming fd:0`), and activation gives
//! it its identity, a fresh random seed and the current time.
//!
//! A template is keyed by everything the saved state depends on: the
//! machine shape, kernel, initramfs (the agent), environment image and
//! QEMU binary. Anything else gets a new key, and the old template of the
//! same environment and shape is removed once the new one exists (a VM
//! still using it keeps its open files). A template that fails to build is
//! not tried again for ten minutes; a VM whose restore fails boots normally
//! (see `boot`).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::environments::{Installed, PruneReport};
use crate::error::{Error, IoContext, Result};
use crate::host::{self, FileLock};
use crate::paths::Paths;
use crate::progress::Progress;
use crate::vmm::boot;
use crate::vmm::channel::{self, stream};
use crate::vmm::dir::{self, VmDir};
use crate::vmm::jail::Jail;
use crate::vmm::qemu::{self, VmSpec};
use crate::vmm::qmp::{Qmp, QmpError};
use crate::vmm::saved;

/// 3: guests have a balloon device (free page reporting).
const FORMAT_VERSION: u32 = 3;

/// A ready template: the disk to layer on and the state to restore.
#[derive(Debug, Clone)]
pub struct Template {
    pub disk: PathBuf,
    pub state: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct TemplateInfo {
    format_version: u32,
    key: String,
    environment: String,
    vcpu_count: u32,
    mem_mib: u32,
    #[serde(default)]
    network: bool,
    /// The environment image under `base.qcow2`, and its sha256 then.
    #[serde(default)]
    image: PathBuf,
    #[serde(default)]
    image_sha256: String,
    built_at_unix_ms: u64,
    build_ms: u64,
    state_bytes: u64,
}

/// Fast start is on unless `PYRO_FAST_START=0`.
pub fn enabled() -> bool {
    std::env::var("PYRO_FAST_START").map_or(true, |v| v != "0")
}

fn stamp(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match fs::metadata(path) {
        Ok(m) => format!("{}:{}:{}:{}", path.display(), m.len(), m.ino(), m.mtime()),
        Err(_) => format!("{}:missing", path.display()),
    }
}

fn key(spec: &VmSpec, env: &Installed) -> String {
    let qemu = host::which(qemu::QEMU).unwrap_or_else(|| PathBuf::from(qemu::QEMU));
    let facts = json!({
        "format": FORMAT_VERSION,
        "accel": spec.accel,
        "vcpu_count": spec.vcpu_count,
        "mem_mib": spec.mem_mib,
        "tsc_khz": spec.tsc_khz,
        // A network device is part of the machine (its backend, passt, is not).
        "network": spec.network_socket.is_some(),
        "kernel": stamp(&spec.kernel),
        "initramfs": stamp(&spec.initramfs),
        "image": env.rootfs,
        "image_sha256": env.image_sha256,
        "qemu": stamp(&qemu),
    });
    let digest = Sha256::digest(facts.to_string().as_bytes());
    digest[..10].iter().map(|b| format!("{b:02x}")).collect()
}

/// The key of a ready template: everything its saved guest depends on.
pub fn key_of(t: &Template) -> String {
    t.disk
        .parent()
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn ready(dir: &Path) -> Option<Template> {
    dir.join("template.json").exists().then(|| Template {
        disk: dir.join("base.qcow2"),
        state: dir.join("state.bin"),
    })
}

/// The template for VMs like `spec` (whose per-VM paths are ignored),
/// built first if there is none.
pub fn ensure(
    paths: &Paths,
    spec: &VmSpec,
    env: &Installed,
    progress: &dyn Progress,
) -> Result<Template> {
    let root = &paths.template_cache;
    let key = key(spec, env);
    let dir = root.join(&key);
    if let Some(t) = ready(&dir) {
        return Ok(t);
    }
    let failed = root.join(format!("{key}.failed"));
    if let Some(why) = recent_failure(&failed) {
        return Err(Error::Boot(format!(
            "building the template failed less than {} minutes ago ({}); remove {} to retry now",
            RETRY_AFTER.as_secs() / 60,
            why.trim(),
            failed.display()
        )));
    }
    fs::create_dir_all(root).ctx(|| format!("create {}", root.display()))?;
    // One lock for all builds: they are rare, and per-key lock files would
    // pile up as keys change.
    let _lock = FileLock::acquire(&root.join(".lock"))?;
    if let Some(t) = ready(&dir) {
        return Ok(t);
    }
    // Holding the lock, partial builds of this key are dead ones' leftovers.
    if let Ok(entries) = fs::read_dir(root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!(".partial-{key}-")) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    progress.phase("template", &format!("phase=build environment={}", env.name));
    let partial = root.join(format!(".partial-{key}-{}", host::random_id(4)));
    let started = Instant::now();
    let built = build(&partial, spec, env).and_then(|state_bytes| {
        let info = TemplateInfo {
            format_version: FORMAT_VERSION,
            key: key.clone(),
            environment: env.name.clone(),
            vcpu_count: spec.vcpu_count,
            mem_mib: spec.mem_mib,
            network: spec.network_socket.is_some(),
            image: env.rootfs.clone(),
            image_sha256: env.image_sha256.clone(),
            built_at_unix_ms: host::now_unix_ms(),
            build_ms: started.elapsed().as_millis() as u64,
            state_bytes,
        };
        host::write_atomic(
            &partial.join("template.json"),
            &serde_json::to_vec_pretty(&info).expect("template info serializes"),
        )?;
        fs::rename(&partial, &dir).ctx(|| format!("install {}", dir.display()))
    });
    if let Err(e) = built {
        let _ = fs::remove_dir_all(&partial);
        let _ = fs::write(&failed, e.to_string());
        return Err(e);
    }
    let _ = fs::remove_file(&failed);
    remove_replaced(root, &key, spec, env);
    ready(&dir).ok_or_else(|| Error::Boot("the template vanished after its build".into()))
}

/// A failed build is not retried for this long, so a host that cannot
/// build one does not pay for a try on every VM.
const RETRY_AFTER: Duration = Duration::from_secs(600);

fn recent_failure(marker: &Path) -> Option<String> {
    let age = fs::metadata(marker).ok()?.modified().ok()?.elapsed().ok()?;
    (age < RETRY_AFTER).then(|| fs::read_to_string(marker).unwrap_or_default())
}

/// The template to start VMs like `spec` from, unless fast start is off or
/// no template can be had (then the VM boots; the reason is logged).
pub fn usable(
    paths: &Paths,
    spec: &VmSpec,
    env: &Installed,
    progress: &dyn Progress,
) -> Option<Template> {
    if !enabled() {
        return None;
    }
    ensure(paths, spec, env, progress)
        .map_err(|e| tracing::warn!("fast start unavailable: {e}"))
        .ok()
}

/// Creates the disk of a VM that will outlive any template (a workspace, a
/// lifecycle VM) at `spec.disk`: a copy of the template's small overlay
/// when it can start from one (returned, to restore on first start), else
/// a fresh overlay on the environment image.
pub fn first_disk(
    paths: &Paths,
    spec: &VmSpec,
    env: &Installed,
    progress: &dyn Progress,
) -> Result<Option<Template>> {
    let template = usable(paths, spec, env, progress);
    match &template {
        Some(t) => {
            fs::copy(&t.disk, &spec.disk).ctx(|| format!("copy {}", t.disk.display()))?;
            host::private_file(&spec.disk)?;
        }
        None => dir::create_overlay(&env.rootfs, &spec.disk)?,
    }
    Ok(template)
}

/// How many templates are ready.
pub fn count(paths: &Paths) -> usize {
    fs::read_dir(&paths.template_cache)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| ready(&e.path()).is_some())
                .count()
        })
        .unwrap_or(0)
}

/// Removes what `env prune` may remove here, into `report`: partial
/// builds (when no build runs), failure markers, and templates over an
/// image of this environment cache that is gone or was rebuilt since.
pub fn prune(paths: &Paths, report: &mut PruneReport) -> Result<()> {
    let root = &paths.template_cache;
    let Ok(entries) = fs::read_dir(root) else {
        return Ok(());
    };
    let Some(_idle) = FileLock::try_acquire(&root.join(".lock"))? else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.starts_with(".partial-") {
            report.remove(path, "partial template build")?;
        } else if name.ends_with(".failed") {
            report.remove(path, "failed template build")?;
        } else if let Some(info) = fs::read(path.join("template.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<TemplateInfo>(&b).ok())
        {
            if info.image.starts_with(&paths.environment_cache)
                && crate::environments::installed_sha256(paths, &info.environment).as_ref()
                    != Some(&info.image_sha256)
            {
                report.remove(path, "outdated template")?;
            }
        }
    }
    Ok(())
}

/// Removes the template whose saved state `state` is, after a VM that was
/// to restore it booted instead: the next VM builds it anew.
pub fn discard(state: &Path) {
    if let Some(dir) = state.parent() {
        tracing::warn!("template {} did not restore; discarding it", dir.display());
        let _ = fs::remove_dir_all(dir);
    }
}

/// Templates of the same environment and shape with another key were
/// made by another pyro (or QEMU, or kernel): the newest one of them is
/// kept, so two builds of pyro on one host do not replace each other's
/// templates at every start; older ones go.
fn remove_replaced(root: &Path, key: &str, spec: &VmSpec, env: &Installed) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    let mut others: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for e in entries.flatten() {
        let info_path = e.path().join("template.json");
        let Ok(bytes) = fs::read(&info_path) else {
            continue;
        };
        let Ok(info) = serde_json::from_slice::<TemplateInfo>(&bytes) else {
            continue;
        };
        if info.key != key
            && info.environment == env.name
            && info.vcpu_count == spec.vcpu_count
            && info.mem_mib == spec.mem_mib
            && info.network == spec.network_socket.is_some()
        {
            let made = fs::metadata(&info_path)
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            others.push((made, e.path()));
        }
    }
    others.sort_by_key(|o| std::cmp::Reverse(o.0));
    for (_, dir) in others.into_iter().skip(1) {
        let _ = fs::remove_dir_all(dir);
    }
}

/// Boots the template VM in `dir` to the agent's welcome, saves its state
/// and stops it. Returns the state's size.
fn build(dir: &Path, like: &VmSpec, env: &Installed) -> Result<u64> {
    fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
    // The build VM's records and logs live in a scratch directory of
    // their own (its sockets, as every VM's, in `VmDir::sockets_dir`).
    let run = std::env::temp_dir().join(format!("pyro-template-{}", host::random_id(6)));
    fs::create_dir(&run).ctx(|| format!("create {}", run.display()))?;
    let vm_dir = VmDir::from_path(&run);
    let built = build_in(dir, &vm_dir, like, env);
    let _ = vm_dir.remove();
    built
}

fn build_in(dir: &Path, vm_dir: &VmDir, like: &VmSpec, env: &Installed) -> Result<u64> {
    let disk = dir.join("base.qcow2");
    dir::create_overlay(&env.rootfs, &disk)?;
    // With a network device, the template VM gets a passt of its own while
    // it boots; its interface stays down (the agent configures it only on
    // activation), so it sends nothing.
    let network_socket = like
        .network_socket
        .as_ref()
        .map(|_| qemu::net::socket_path(&format!("template-{}", host::random_id(4))));
    let spec = VmSpec {
        disk: disk.clone(),
        disk_cache_unsafe: false,
        agent_socket: vm_dir.agent_socket(),
        qmp_socket: vm_dir.qmp_socket(),
        console_log: vm_dir.console_log(),
        network_socket: network_socket.clone(),
        snapshot: None,
        ..like.clone()
    };
    let record = dir::new_record("template", &env.name, true, 600, spec);
    let booted = boot::boot_once(vm_dir, &record)
        .map_err(|e| Error::Boot(format!("the template VM did not boot: {}", e.message)))?;
    let (mut child, mut agent, passt, jail) =
        (booted.qemu, booted.agent, booted.passt, booted.jail);
    let saved =
        warm_up(&mut agent).and_then(|()| save(dir, vm_dir, child.id() as i32, jail.as_ref()));
    // After a save QEMU is quitting; give it time to close the disk.
    let deadline = Instant::now() + Duration::from_secs(10);
    while saved.is_ok() && Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(passt);
    drop(jail);
    drop(agent);
    for sock in [vm_dir.agent_socket(), vm_dir.qmp_socket()] {
        let _ = fs::remove_file(sock);
    }
    if let Some(net_dir) = network_socket.as_ref().and_then(|s| s.parent()) {
        let _ = fs::remove_dir_all(net_dir);
    }
    let state_bytes = saved?;
    // The disk must never change again: every clone's overlay reads it.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&disk, fs::Permissions::from_mode(0o444))
        .ctx(|| format!("chmod {}", disk.display()))?;
    Ok(state_bytes)
}

/// Runs one login shell in the guest before it is saved, so the files every
/// first command reads (the shell, libc, the profile) are in the saved page
/// cache instead of on the disk.
fn warm_up(agent: &mut std::os::unix::net::UnixStream) -> Result<()> {
    use pyro_protocol::{Command, ExecRequest, Message};
    let failed = |why: String| Error::Boot(format!("warming up the template: {why}"));
    let exec = Message::Exec(ExecRequest {
        command: Command::Shell("true".into()),
        env: Default::default(),
        cwd: Some("/".into()),
        timeout_ms: Some(30_000),
        sync_after: false,
    });
    agent
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| failed(e.to_string()))?;
    match channel::call(agent, stream::BOOTSTRAP, &exec, None, &mut |_, _| true) {
        Ok(Message::Exited(_)) => Ok(()),
        Ok(Message::Error { message }) => Err(failed(message)),
        Ok(other) => Err(failed(format!("unexpected answer {other:?}"))),
        Err(e) => Err(failed(e.to_string())),
    }
}

/// Stops the VM and saves its state into `state.bin`, then quits QEMU
/// cleanly so the disk's metadata is on the file.
fn save(dir: &Path, vm_dir: &VmDir, qemu_pid: i32, jail: Option<&Jail>) -> Result<u64> {
    let qmp_err = |e: QmpError| Error::Boot(format!("saving the template: {e}"));
    let mut qmp =
        Qmp::connect(&vm_dir.qmp_socket(), qemu_pid, Duration::from_secs(30)).map_err(qmp_err)?;
    qmp.execute("stop", json!({})).map_err(qmp_err)?;
    let state = dir.join("state.bin");
    let _ = fs::remove_file(&state);
    let bytes = saved::save_state(
        &mut qmp,
        vm_dir,
        jail.map(|j| (j.ids.qemu_uid, j.ids.gid)),
        &state,
    )?;
    // QEMU writes the disk's metadata back as it quits.
    let _ = qmp.execute("quit", json!({}));
    Ok(bytes)
}
