//! A workspace's VM: its spec, booting (or restoring) it with its secrets,
//! and whole-disk checkpoints of it while it runs.

use pyro_protocol::Message;

use crate::error::Result;
use crate::paths::Context;
use crate::progress::Progress;
use crate::vmm::client::VmClient;
use crate::vmm::dir::{self, Shape};
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
    let entry = environments::lookup(&r.environment)?;
    let assets = assets::ensure(&ctx.paths, progress)?;
    environments::ensure(&ctx.paths, entry, false, progress)?;
    let _admission = admission::admit(ctx, r.mem_mib)?;
    let vm = ws.vm();
    let mut spec = spec(ws, r, &assets);
    spec.snapshot = template.map(|t| t.state.clone());
    vm.write_record(&dir::new_record(
        &ws.id,
        &r.environment,
        false,
        r.ttl_seconds,
        spec,
    ))?;
    launch::start_supervisor(&ctx.program, &vm)?;
    if !r.secrets.is_empty() {
        let secrets = ws.secret_values(r)?;
        let mut c = ws.connect()?;
        c.request(&Message::InstallSecrets { secrets }, None, &mut |_| {})?;
    }
    Ok(())
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
