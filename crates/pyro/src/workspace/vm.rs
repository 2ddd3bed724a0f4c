//! A workspace's VM: its spec, booting (or restoring) it with its secrets,
//! resuming it when paused, and whole-disk checkpoints of it while it runs.

use pyro_protocol::Message;

use std::time::Instant;

use crate::error::Result;
use crate::host::FileLock;
use crate::paths::Context;
use crate::progress::Progress;
use crate::vmm::client::VmClient;
use crate::vmm::dir::{self, BootReport, Restore, Shape};
use crate::vmm::qemu::VmSpec;
use crate::vmm::templates::Template;
use crate::vmm::{admission, launch};
use crate::workspace::record::Record;
use crate::workspace::Workspace;
use crate::{assets, environments};

/// The VM of a workspace, with the record's shape and network.
pub(crate) fn spec(ws: &Workspace, r: &Record, assets: &assets::RuntimeAssets) -> VmSpec {
    let shape = Shape {
        vcpu_count: r.vcpu_count,
        mem_mib: r.mem_mib,
    };
    ws.vm().spec(
        assets,
        shape,
        ws.disk(),
        true,
        r.network_policy.has_network(),
    )
}

/// Boots the workspace's VM on its disk, or restores `template` (whose
/// disk the workspace's must be a copy of), then installs its secrets.
pub(crate) fn boot(
    ctx: &Context,
    ws: &Workspace,
    r: &Record,
    template: Option<&Template>,
    progress: &dyn Progress,
) -> Result<()> {
    let assets = assets::ensure(&ctx.paths, progress)?;
    environments::ensure_named(&ctx.paths, &r.environment, progress)?;
    let _admission = admission::admit(ctx, r.mem_mib)?;
    // A boot starts over: a saved guest would not match the disk after it.
    ws.paused().discard();
    let mut spec = spec(ws, r, &assets);
    spec.snapshot = template.map(|t| t.state.clone());
    launch_vm(ctx, ws, r, spec, Restore::Template)?;
    Ok(())
}

/// Writes the VM's record and starts its supervisor; a VM that booted
/// (rather than restored a running guest) gets its secrets installed.
fn launch_vm(
    ctx: &Context,
    ws: &Workspace,
    r: &Record,
    spec: VmSpec,
    restore: Restore,
) -> Result<BootReport> {
    let vm = ws.vm();
    let mut record = dir::new_record(&ws.id, &r.environment, false, r.ttl_seconds, spec);
    record.on_idle = r.on_idle;
    record.restore = restore;
    vm.write_record(&record)?;
    let report = launch::start_supervisor(&ctx.program, &vm)?;
    let live = report.restored && restore.is_live();
    if !live && !r.secrets.is_empty() {
        let secrets = ws.secret_values(r)?;
        let mut c = ws.connect_running()?;
        c.request(&Message::InstallSecrets { secrets }, None, &mut |_| {})?;
    }
    Ok(report)
}

/// A connection to the workspace's running VM, resumed first if it is
/// paused; a clear error if it is stopped.
pub(crate) fn connect(ctx: &Context, ws: &Workspace) -> Result<VmClient> {
    if ws.state().needs_resume() {
        resume(ctx, ws, &crate::progress::Silent)?;
    }
    ws.connect_running()
}

/// Resumes a paused workspace: its VM restores the saved guest (which is
/// then consumed) with its processes, shells, services and published
/// ports. A saved state that cannot be restored is dropped and the disk
/// booted instead (ext4 recovers it like after a crash). Concurrent calls
/// resume once; a workspace that is not paused is left as it is.
pub(crate) fn resume(ctx: &Context, ws: &Workspace, progress: &dyn Progress) -> Result<Resumed> {
    resume_as(ctx, ws, Restore::Paused, progress)
}

/// [`resume`], of a guest saved by a pause or (`Restore::Fork`) by a
/// parent's fork.
pub(crate) fn resume_as(
    ctx: &Context,
    ws: &Workspace,
    restore: Restore,
    progress: &dyn Progress,
) -> Result<Resumed> {
    let _one = FileLock::acquire(&ws.dir.join(".resume.lock"))?;
    let paused = ws.paused();
    if ws.running() || !paused.exists() {
        return Ok(Resumed::default());
    }
    let r = ws.read()?;
    let assets = assets::ensure(&ctx.paths, progress)?;
    environments::ensure_named(&ctx.paths, &r.environment, progress)?;
    let _admission = admission::admit(ctx, r.mem_mib)?;
    progress.phase("workspace", &format!("phase=resume workspace_id={}", ws.id));
    let started = Instant::now();
    let mut spec = spec(ws, &r, &assets);
    spec.snapshot = Some(paused.state());
    let report = launch_vm(ctx, ws, &r, spec, restore)?;
    Ok(Resumed {
        resumed: true,
        restored: report.restored,
        resume_ms: started.elapsed().as_millis() as u64,
    })
}

/// How a resume went.
#[derive(Debug, Clone, Default)]
pub(crate) struct Resumed {
    /// It was paused and runs now.
    pub resumed: bool,
    /// From the saved guest (false: the disk was booted instead).
    pub restored: bool,
    pub resume_ms: u64,
}

/// A whole-disk checkpoint of a running workspace: the guest filesystem is
/// frozen (flushed and quiesced) while QEMU takes a qcow2 internal
/// snapshot, which is copy-on-write and costs no copy.
pub(crate) fn checkpoint(client: &mut VmClient, name: &str) -> Result<()> {
    client.request(&Message::Freeze, None, &mut |_| {})?;
    let snap = client.qmp(
        "blockdev-snapshot-internal-sync",
        serde_json::json!({ "device": "root", "name": name }),
    );
    let thaw = client.request(&Message::Thaw, None, &mut |_| {});
    snap?;
    thaw?;
    Ok(())
}
