//! Warm one-shot runs: a few guests restored from the template of a shape
//! and already warmed by one command, waiting for a `run` to claim one.
//!
//! A pooled VM is an ordinary one-shot VM in `$PYRO_HOME/vms/<id>/`
//! (deleted when its owner disconnects), started with no owner and an idle
//! timeout ([`pool_ttl`]), plus a marker `$PYRO_HOME/pool/<key>/<id>` once
//! it is warm. The key is the shape's template key, so a pooled guest is
//! exactly what a restore would give. A run claims a VM by removing its
//! marker (one unlink succeeds, so one claimer wins), attaches as its
//! owner, runs its one command and deletes it: a pooled guest never serves
//! two commands. After a run the pool is topped up by a detached
//! `pyro __pool-fill` (one filler per key at a time, under admission like
//! every VM). `PYRO_POOL_SIZE` (default 1) guests per shape; 0 turns it off.

use std::fs;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use crate::contract::{Command, IdleAction};
use crate::error::Result;
use crate::host::{self, FileLock};
use crate::paths::{Context, Paths};
use crate::progress::Silent;
use crate::vmm::client::{Discard, VmClient};
use crate::vmm::dir::{self, Shape, VmDir};
use crate::vmm::templates::{self, Template};
use crate::vmm::{admission, launch};
use crate::{assets, environments};

/// How many warm guests each shape keeps (`PYRO_POOL_SIZE`, default 1).
pub fn pool_size() -> usize {
    std::env::var("PYRO_POOL_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .min(16)
}

/// How long a pooled guest waits unclaimed before it ends
/// (`PYRO_POOL_TTL`, seconds, default 300).
pub fn pool_ttl() -> u64 {
    std::env::var("PYRO_POOL_TTL")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|s| *s > 0)
        .unwrap_or(300)
}

fn key_dir(paths: &Paths, key: &str) -> PathBuf {
    paths.home.join("pool").join(key)
}

/// A claimed warm guest: this caller owns it now.
pub(crate) struct Claimed {
    pub dir: VmDir,
    pub client: VmClient,
}

/// Claims a warm guest of the template `key`, if one waits.
pub(crate) fn claim(paths: &Paths, key: &str) -> Option<Claimed> {
    let entries = fs::read_dir(key_dir(paths, key)).ok()?;
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if id.starts_with('.') || fs::remove_file(e.path()).is_err() {
            continue; // someone else's now
        }
        let dir = VmDir::new(paths, &id);
        if dir.live_supervisor().is_none() {
            continue;
        }
        let attached = VmClient::connect(&dir).and_then(|mut c| c.attach(true).map(|()| c));
        match attached {
            Ok(client) => return Some(Claimed { dir, client }),
            Err(_) => launch::destroy(&dir),
        }
    }
    None
}

/// The shape a filler fills, as its command line carries it.
pub struct FillRequest {
    pub environment: String,
    pub vcpu_count: u32,
    pub mem_mib: u32,
}

/// Tops the pool up when dropped (at the end of the run that made it).
pub(crate) struct TopUp<'a> {
    ctx: &'a Context,
    req: FillRequest,
}

impl<'a> TopUp<'a> {
    pub(crate) fn after(ctx: &'a Context, req: FillRequest) -> TopUp<'a> {
        TopUp { ctx, req }
    }
}

impl Drop for TopUp<'_> {
    fn drop(&mut self) {
        top_up(self.ctx, &self.req);
    }
}

/// Starts a detached filler for `req`'s shape unless the pool is off.
fn top_up(ctx: &Context, req: &FillRequest) {
    if pool_size() == 0 || !templates::enabled() {
        return;
    }
    let spawned = Process::new(&ctx.program)
        .arg("__pool-fill")
        .args([
            &req.environment,
            &req.vcpu_count.to_string(),
            &req.mem_mib.to_string(),
        ])
        .env("PYRO_HOME", &ctx.paths.home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        // The filler daemonizes at once; reap its first process.
        Ok(mut child) => {
            let _ = child.wait();
        }
        Err(e) => tracing::warn!("cannot top up the pool: {e}"),
    }
}

/// Entry point of `pyro __pool-fill ENV VCPUS MEM`: detaches, then starts
/// and warms guests until the pool of that shape is full. Never returns.
pub fn fill_main(ctx_paths: Paths, program: PathBuf, req: FillRequest) -> ! {
    host::daemonize();
    let ctx = Context {
        paths: ctx_paths,
        program,
        max_running_vms: None,
    };
    if let Err(e) = fill(&ctx, &req) {
        tracing::debug!("pool fill: {e}");
    }
    std::process::exit(0)
}

fn fill(ctx: &Context, req: &FillRequest) -> Result<()> {
    let assets = assets::ensure(&ctx.paths, &Silent)?;
    let env = environments::ensure_named(&ctx.paths, &req.environment, &Silent)?;
    let shape = Shape {
        vcpu_count: req.vcpu_count,
        mem_mib: req.mem_mib,
    };
    let probe = VmDir::new(&ctx.paths, "pool");
    let like = probe.spec(&assets, shape, probe.disk(), false, false);
    let Some(template) = templates::usable(&ctx.paths, &like, &env, &Silent) else {
        return Ok(());
    };
    let key = templates::key_of(&template);
    let root = key_dir(&ctx.paths, &key);
    host::private_dir(&root)?;
    // One filler per shape; another one running will do it.
    let Some(_filling) = FileLock::try_acquire(&root.join(".filling"))? else {
        return Ok(());
    };
    while waiting(&ctx.paths, &root) < pool_size() {
        let id = host::random_id(6);
        start_one(ctx, &assets, &env.name, shape, &template, &id)?;
        host::write_atomic(&root.join(&id), b"")?;
    }
    Ok(())
}

/// Warm guests waiting in the pool of `root`; markers of guests that ended
/// (their idle time ran out) are removed.
fn waiting(paths: &Paths, root: &std::path::Path) -> usize {
    let mut count = 0;
    for e in fs::read_dir(root).into_iter().flatten().flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if id.starts_with('.') {
            continue;
        }
        if VmDir::new(paths, &id).live_supervisor().is_some() {
            count += 1;
        } else {
            let _ = fs::remove_file(e.path());
        }
    }
    count
}

/// Starts one pooled guest from `template` and runs one command in it, so
/// what every first command pays (the translation cache of a fresh QEMU,
/// the login environment) is paid already.
fn start_one(
    ctx: &Context,
    assets: &assets::RuntimeAssets,
    environment: &str,
    shape: Shape,
    template: &Template,
    id: &str,
) -> Result<()> {
    let dir = VmDir::new(&ctx.paths, id);
    let mut spec = dir.spec(assets, shape, dir.disk(), false, false);
    spec.snapshot = Some(template.state.clone());
    let mut record = dir::new_record(id, environment, true, pool_ttl(), spec);
    record.idle_timeout = true;
    record.on_idle = IdleAction::Stop;
    let started = (|| {
        let _admission = admission::admit_spare(ctx, shape.mem_mib)?;
        dir::create(&dir, &record, &template.disk)?;
        launch::start_supervisor(&ctx.program, &dir)?;
        let mut warm = VmClient::connect(&dir)?.with_deadline(Duration::from_secs(60));
        warm.attach(false)?;
        warm.exec(
            pyro_protocol::ExecRequest {
                command: Command::shell("true").into(),
                env: Default::default(),
                cwd: Some(pyro_protocol::WORKSPACE_ROOT.into()),
                timeout_ms: Some(30_000),
                sync_after: false,
            },
            &mut Discard,
        )?;
        Ok(())
    })();
    if started.is_err() {
        launch::destroy(&dir);
    }
    started
}
