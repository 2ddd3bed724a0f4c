//! Whole-disk checkpoints (qcow2 internal snapshots) and `reset`.

use std::fs;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::contract::{valid_name, BASELINE};
use crate::error::{Entity, Error, Result};
use crate::host;
use crate::paths::Context;
use crate::progress::Progress;
use crate::vmm::client::VmClient;
use crate::vmm::launch;
use crate::workspace::record::{Deleted, SnapshotInfo, WorkspaceInfo};
use crate::workspace::state::SnapshotKind;
use crate::workspace::vm::{boot, checkpoint};
use crate::workspace::Workspace;

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotList {
    pub workspace_id: String,
    pub count: usize,
    pub snapshots: Vec<SnapshotInfo>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResetInfo {
    pub snapshot_name: String,
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub kind: SnapshotKind,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResetResult {
    #[serde(flatten)]
    pub workspace: WorkspaceInfo,
    pub workspace_reset: ResetInfo,
}

/// `qemu-img snapshot OP NAME` on the stopped disk.
fn offline(ws: &Workspace, op: &str, name: &str) -> Result<()> {
    host::tool(
        Command::new("qemu-img")
            .args(["snapshot", op, name])
            .arg(ws.disk()),
    )
    .map(|_| ())
}

pub fn create(ctx: &Context, id: &str, name: &str) -> Result<SnapshotInfo> {
    valid_name("snapshot name", name)?;
    if name == BASELINE {
        return Err(Error::invalid("`baseline` is reserved"));
    }
    let ws = Workspace::locate(&ctx.paths, id)?;
    let _lock = ws.lock()?;
    let mut r = ws.read()?;
    if r.snapshot(name).is_some() {
        return Err(Error::conflict(format!("snapshot {name:?} already exists")));
    }
    if ws.running() {
        checkpoint(&mut VmClient::connect(&ws.vm())?, name)?;
    } else {
        offline(&ws, "-c", name)?;
    }
    let info = SnapshotInfo::new(name, SnapshotKind::Named);
    r.snapshots.push(info.clone());
    r.touch();
    ws.write(&r)?;
    Ok(info)
}

pub fn list(ctx: &Context, id: &str) -> Result<SnapshotList> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    let r = ws.read()?;
    // The baseline first, then the newest first.
    let mut snaps = r.snapshots.clone();
    snaps.sort_by(|a, b| {
        (a.kind != SnapshotKind::Baseline)
            .cmp(&(b.kind != SnapshotKind::Baseline))
            .then(b.created_at.total_cmp(&a.created_at))
    });
    Ok(SnapshotList {
        workspace_id: id.into(),
        count: snaps.len(),
        snapshots: snaps,
    })
}

pub fn delete(ctx: &Context, id: &str, name: &str) -> Result<Deleted> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    let _lock = ws.lock()?;
    let mut r = ws.read()?;
    match r.snapshot(name) {
        None => return Err(Error::not_found(Entity::Snapshot, name)),
        Some(s) if !s.kind.deletable() => {
            return Err(Error::conflict(format!("the {} cannot be deleted", s.kind)))
        }
        Some(_) => {}
    }
    if ws.running() {
        VmClient::connect(&ws.vm())?.qmp(
            "blockdev-snapshot-delete-internal-sync",
            serde_json::json!({ "device": "root", "name": name }),
        )?;
    } else {
        offline(&ws, "-d", name)?;
    }
    r.snapshots.retain(|s| s.snapshot_name != name);
    r.touch();
    ws.write(&r)?;
    Ok(Deleted {
        workspace_id: id.into(),
        deleted: true,
    })
}

/// Rolls the whole disk back to a checkpoint: the VM stops, the qcow2
/// snapshot is applied, the VM boots again. Packages installed and files
/// changed since the checkpoint are gone; command history is cleared.
pub fn reset(
    ctx: &Context,
    id: &str,
    snapshot: &str,
    progress: &dyn Progress,
) -> Result<ResetResult> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    // The whole reset is one change of the workspace: nobody else's record
    // update can fall between its steps.
    let _lock = ws.lock()?;
    let mut r = ws.read()?;
    let snap = r
        .snapshot(snapshot)
        .cloned()
        .ok_or_else(|| Error::not_found(Entity::Snapshot, snapshot))?;
    launch::halt(&ws.vm())?;
    ws.paused().discard();
    offline(&ws, "-a", snapshot)?;
    let _ = fs::remove_dir_all(ws.commands());
    host::private_dir(&ws.commands())?;
    boot(ctx, &ws, &r, None, progress)?;
    r.mark_reset();
    ws.write(&r)?;
    Ok(ResetResult {
        workspace: ws.info(&r),
        workspace_reset: ResetInfo {
            snapshot_name: snap.snapshot_name,
            kind: snap.kind,
        },
    })
}
