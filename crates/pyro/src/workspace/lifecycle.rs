//! Creating, listing, showing, renaming, starting, stopping and deleting
//! workspaces.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use pyro_protocol::{Message, ServiceStatus, WORKSPACE_ROOT};
use serde::{Deserialize, Serialize};

use crate::contract::{
    defaults, host_compat_refused, now, valid_name, valid_text, validate_resources, IdleAction,
    BASELINE,
};
use crate::error::{Error, IoContext, Result};
use crate::paths::Context;
use crate::progress::Progress;
use crate::vmm::client::VmClient;
use crate::vmm::launch;
use crate::vmm::templates::{self};
use crate::workspace::archive::{self, SourceMode};
use crate::workspace::files::push;
use crate::workspace::record::{Deleted, NewRecord, Record, WorkspaceInfo, WorkspaceSeed};
use crate::workspace::secrets::{self, SecretInput};
use crate::workspace::state::{NetworkPolicy, State};
use crate::workspace::vm::{boot, checkpoint, connect, resume, spec};
use crate::workspace::Workspace;
use crate::{assets, environments, host};

/// Parameters of [`Pyro::create_workspace`](crate::Pyro::create_workspace).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CreateWorkspace {
    pub environment: String,
    pub vcpu_count: u32,
    pub mem_mib: u32,
    /// Idle timeout: the workspace is paused (or stopped, per `on_idle`;
    /// never deleted) after this long without activity.
    pub ttl_seconds: u64,
    pub network_policy: NetworkPolicy,
    /// A host directory, `.tar`, `.tar.gz` or `.tgz` copied into
    /// `/workspace`.
    pub seed_path: Option<PathBuf>,
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub secrets: Vec<SecretInput>,
    /// Accepted for compatibility and refused when set: a workspace always
    /// runs in a guest (only one-shot runs may fall back to the host).
    pub allow_host_compat: bool,
    /// What the idle timeout does: `pause` (the default: the guest's memory
    /// is saved and the next call resumes it), `stop` or `none`.
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub on_idle: IdleAction,
}

impl Default for CreateWorkspace {
    fn default() -> Self {
        CreateWorkspace {
            environment: defaults::environment(),
            vcpu_count: defaults::vcpu_count(),
            mem_mib: defaults::mem_mib(),
            ttl_seconds: defaults::ttl_seconds(),
            network_policy: NetworkPolicy::default(),
            seed_path: None,
            name: None,
            labels: BTreeMap::new(),
            secrets: Vec::new(),
            allow_host_compat: false,
            on_idle: IdleAction::default(),
        }
    }
}

impl CreateWorkspace {
    pub fn new(environment: impl Into<String>) -> CreateWorkspace {
        CreateWorkspace {
            environment: environment.into(),
            ..CreateWorkspace::default()
        }
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdateWorkspace {
    pub name: Option<String>,
    pub clear_name: bool,
    pub labels: BTreeMap<String, String>,
    pub clear_labels: Vec<String>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceList {
    pub count: usize,
    pub workspaces: Vec<WorkspaceInfo>,
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    for (k, v) in labels {
        valid_name("label key", k)?;
        valid_text("label value", v)?;
    }
    Ok(())
}

pub fn create(
    ctx: &Context,
    p: &CreateWorkspace,
    progress: &dyn Progress,
) -> Result<WorkspaceInfo> {
    if p.allow_host_compat {
        return Err(host_compat_refused("a workspace"));
    }
    environments::canonical_name(&ctx.paths, &p.environment)?;
    validate_resources(p.vcpu_count, p.mem_mib, p.ttl_seconds)?;
    if let Some(n) = &p.name {
        valid_text("name", n)?;
    }
    check_labels(&p.labels)?;
    let secret_values = secrets::resolve(&p.secrets)?;

    let id = host::random_id(6);
    let ws = Workspace::at(&ctx.paths, &id);
    host::private_dir(&ws.dir)?;
    host::private_dir(&ws.commands())?;
    // Held while the workspace is made: a directory without a record whose
    // lock is free is a create that died, and `list` removes it.
    let _creating = ws.lock()?;
    let result = (|| -> Result<WorkspaceInfo> {
        secrets::store(&ws.dir, &secret_values)?;
        // Validate and capture the seed before anything boots.
        let seed_file = fs::File::create(ws.baseline()).ctx(|| "create baseline".into())?;
        let (mode, summary) = match &p.seed_path {
            Some(path) => archive::build(path, std::io::BufWriter::new(seed_file))?,
            None => {
                tar::Builder::new(seed_file)
                    .finish()
                    .ctx(|| "write baseline".into())?;
                (SourceMode::Empty, archive::Summary::default())
            }
        };
        let base = environments::ensure_named(&ctx.paths, &p.environment, progress)?;
        let record = Record::new(
            NewRecord {
                workspace_id: id.clone(),
                name: p.name.clone(),
                labels: p.labels.clone(),
                environment: base.name.clone(),
                vcpu_count: p.vcpu_count,
                mem_mib: p.mem_mib,
                ttl_seconds: p.ttl_seconds,
                network_policy: p.network_policy,
                workspace_seed: WorkspaceSeed {
                    mode,
                    seed_path: p.seed_path.as_ref().map(|s| s.display().to_string()),
                    destination: WORKSPACE_ROOT.into(),
                    entry_count: summary.entry_count,
                    bytes_written: summary.bytes,
                },
                secrets: secret_values.iter().map(|(i, _)| i.clone()).collect(),
                on_idle: p.on_idle,
            },
            now(),
        );
        let assets = assets::ensure(&ctx.paths, progress)?;
        let template =
            templates::first_disk(&ctx.paths, &spec(&ws, &record, &assets), &base, progress)?;
        ws.write(&record)?;
        progress.phase("workspace", &format!("phase=start workspace_id={id}"));
        boot(ctx, &ws, &record, template.as_ref(), progress)?;
        let mut client = connect(ctx, &ws)?;
        if mode != SourceMode::Empty {
            progress.phase("workspace", &format!("phase=seed workspace_id={id}"));
        }
        push(&mut client, &ws.baseline(), WORKSPACE_ROOT)?;
        checkpoint(&mut client, BASELINE)?;
        Ok(ws.info(&record))
    })();
    if result.is_err() {
        let _ = launch::halt(&ws.vm());
        ws.vm().remove_outside();
        let _ = fs::remove_dir_all(&ws.dir);
    }
    result
}

/// `info` with its services counted, without it counting as activity.
fn info_with_services(ws: &Workspace, r: &Record) -> WorkspaceInfo {
    let mut info = ws.info(r);
    let counts = if info.state == State::Paused {
        // Its services are in the saved guest, uncounted until it resumes.
        return info;
    } else if info.state != State::Started {
        Ok((0, 0))
    } else {
        (|| -> Result<(usize, usize)> {
            let mut c = VmClient::connect(&ws.vm())?;
            c.attach_passive()?;
            match c.request(&Message::ServiceList, None, &mut |_| {})? {
                Message::Services { services } => Ok((
                    services.len(),
                    services
                        .iter()
                        .filter(|s| s.state == ServiceStatus::Running)
                        .count(),
                )),
                other => Err(Error::unexpected(&other)),
            }
        })()
    };
    match counts {
        Ok((total, running)) => {
            info.service_count = Some(total);
            info.running_service_count = Some(running);
        }
        // It may have stopped meanwhile (an idle timeout); say so.
        Err(_) => {
            info = ws.info(r);
            if info.state == State::Stopped {
                info.service_count = Some(0);
                info.running_service_count = Some(0);
            }
        }
    }
    info
}

/// Removes what a killed `create` left: a workspace directory without a
/// record, whose creator (the holder of its lock) is gone.
fn remove_dead_create(ws: &Workspace) {
    if ws.record_path().exists() {
        return;
    }
    if let Ok(Some(_free)) = host::FileLock::try_acquire(&ws.dir.join(".lock")) {
        if !ws.record_path().exists() {
            launch::kill(&ws.vm());
            ws.vm().remove_outside();
            let _ = fs::remove_dir_all(&ws.dir);
        }
    }
}

pub fn list(ctx: &Context) -> Result<WorkspaceList> {
    let mut workspaces = Vec::new();
    for e in fs::read_dir(ctx.paths.workspaces())
        .into_iter()
        .flatten()
        .flatten()
    {
        let id = e.file_name().to_string_lossy().into_owned();
        remove_dead_create(&Workspace::at(&ctx.paths, &id));
        if let Ok(ws) = Workspace::locate(&ctx.paths, &id) {
            if let Ok(r) = ws.read() {
                workspaces.push(info_with_services(&ws, &r));
            }
        }
    }
    // Most recently active first.
    workspaces.sort_by(|a, b| {
        b.last_activity_at
            .total_cmp(&a.last_activity_at)
            .then(b.created_at.total_cmp(&a.created_at))
            .then(a.workspace_id.cmp(&b.workspace_id))
    });
    Ok(WorkspaceList {
        count: workspaces.len(),
        workspaces,
    })
}

pub fn status(ctx: &Context, id: &str) -> Result<WorkspaceInfo> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    let r = ws.read()?;
    Ok(info_with_services(&ws, &r))
}

pub fn update(ctx: &Context, id: &str, u: &UpdateWorkspace) -> Result<WorkspaceInfo> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    if let Some(n) = &u.name {
        valid_text("name", n)?;
    }
    check_labels(&u.labels)?;
    let r = ws.update(|r| {
        if u.clear_name {
            r.name = None;
        }
        if let Some(n) = &u.name {
            r.name = Some(n.clone());
        }
        for k in &u.clear_labels {
            r.labels.remove(k);
        }
        r.labels.extend(u.labels.clone());
        r.touch();
        Ok(r.clone())
    })?;
    Ok(ws.info(&r))
}

pub fn stop(ctx: &Context, id: &str) -> Result<WorkspaceInfo> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    launch::halt(&ws.vm())?;
    // A paused guest's processes end as a running one's would.
    ws.paused().discard();
    let r = ws.update(|r| {
        r.mark_stopped();
        Ok(r.clone())
    })?;
    Ok(ws.info(&r))
}

pub fn start(ctx: &Context, id: &str, progress: &dyn Progress) -> Result<WorkspaceInfo> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    if ws.state().needs_resume() {
        resume(ctx, &ws, progress)?;
    }
    if ws.state().needs_boot() {
        let r = ws.read()?;
        boot(ctx, &ws, &r, None, progress)?;
    }
    let r = ws.update(|r| {
        r.mark_started();
        Ok(r.clone())
    })?;
    Ok(ws.info(&r))
}

pub fn delete(ctx: &Context, id: &str) -> Result<Deleted> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    // Its disk is about to go: no need to stop gently.
    launch::kill(&ws.vm());
    ws.vm().remove_outside();
    fs::remove_dir_all(&ws.dir).ctx(|| format!("remove {}", ws.dir.display()))?;
    Ok(Deleted {
        workspace_id: id.into(),
        deleted: true,
    })
}
