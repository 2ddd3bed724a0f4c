//! Pausing, resuming and forking live workspaces.
//!
//! A pause saves the guest's memory and devices beside its disk and ends
//! its QEMU (`vmm::saved`); the workspace then holds no memory and no CPU,
//! and the next call that needs it (or `resume`, or `start`) restores it
//! with its processes, shells, services and published ports. A fork saves
//! the running guest once and copies its disk at that instant; each child
//! is a new workspace restored from that state with its own id, hostname
//! and random seed, while the parent runs on.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::contract::{now, valid_text};
use crate::error::{Error, IoContext, Remedy, Result};
use crate::host;
use crate::paths::Context;
use crate::progress::Progress;
use crate::vmm::client::VmClient;
use crate::vmm::dir::Restore;
use crate::vmm::launch;
use crate::workspace::record::WorkspaceInfo;
use crate::workspace::state::State;
use crate::workspace::vm::{connect, resume, resume_as};
use crate::workspace::Workspace;

/// The most children one fork makes.
pub const MAX_FORK_COUNT: u32 = 16;

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PauseReport {
    /// Bytes of guest memory and device state saved (0 if it was paused
    /// already).
    pub state_bytes: u64,
    pub duration_ms: u64,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PauseResult {
    #[serde(flatten)]
    pub workspace: WorkspaceInfo,
    pub workspace_pause: PauseReport,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumeReport {
    /// It was paused (false: it was running already).
    pub resumed: bool,
    /// Restored from the saved guest; false if that failed and the disk
    /// was booted instead (processes, shells and services are then gone).
    pub restored: bool,
    pub duration_ms: u64,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumeResult {
    #[serde(flatten)]
    pub workspace: WorkspaceInfo,
    pub workspace_resume: ResumeReport,
}

/// Parameters of [`Pyro::fork_workspace`](crate::Pyro::fork_workspace).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ForkWorkspace {
    /// How many children (1 to 16).
    pub count: u32,
    /// Names of the children, in order (fewer than `count` leaves the
    /// rest unnamed).
    pub names: Vec<String>,
}

impl Default for ForkWorkspace {
    fn default() -> Self {
        ForkWorkspace {
            count: 1,
            names: Vec::new(),
        }
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForkResult {
    pub parent_workspace_id: String,
    pub count: usize,
    pub workspaces: Vec<WorkspaceInfo>,
    /// How long the parent's guest was stopped for the save and the disk
    /// copies.
    pub parent_pause_ms: u64,
    pub duration_ms: u64,
}

pub fn pause(ctx: &Context, id: &str) -> Result<PauseResult> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    let started = Instant::now();
    let state_bytes = match ws.state() {
        State::Paused => 0,
        State::Stopped => {
            return Err(Error::conflict_with(
                format!("workspace {id} is stopped; only a running workspace can be paused"),
                Remedy::StartWorkspace {
                    workspace_id: id.into(),
                },
            ))
        }
        State::Started => {
            let bytes = VmClient::connect(&ws.vm())?.pause()?;
            // It answers just before it exits.
            launch::wait_gone(&ws.vm(), Duration::from_secs(10));
            bytes
        }
    };
    let r = ws.update(|r| {
        r.touch();
        Ok(r.clone())
    })?;
    Ok(PauseResult {
        workspace: ws.info(&r),
        workspace_pause: PauseReport {
            state_bytes,
            duration_ms: started.elapsed().as_millis() as u64,
        },
    })
}

pub fn resume_workspace(ctx: &Context, id: &str, progress: &dyn Progress) -> Result<ResumeResult> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    if ws.state() == State::Stopped {
        return Err(Error::conflict_with(
            format!("workspace {id} is stopped, not paused"),
            Remedy::StartWorkspace {
                workspace_id: id.into(),
            },
        ));
    }
    let done = resume(ctx, &ws, progress)?;
    let r = ws.update(|r| {
        r.mark_started();
        Ok(r.clone())
    })?;
    Ok(ResumeResult {
        workspace: ws.info(&r),
        workspace_resume: ResumeReport {
            resumed: done.resumed,
            restored: done.restored,
            duration_ms: done.resume_ms,
        },
    })
}

pub fn fork(
    ctx: &Context,
    id: &str,
    p: &ForkWorkspace,
    progress: &dyn Progress,
) -> Result<ForkResult> {
    if !(1..=MAX_FORK_COUNT).contains(&p.count) {
        return Err(Error::invalid(format!(
            "count must be 1 to {MAX_FORK_COUNT}"
        )));
    }
    if p.names.len() > p.count as usize {
        return Err(Error::invalid("more names than children"));
    }
    for n in &p.names {
        valid_text("name", n)?;
    }
    let started = Instant::now();
    let parent = Workspace::locate(&ctx.paths, id)?;
    // Resumes a paused parent; refuses a stopped one.
    let mut client = connect(ctx, &parent)?;
    let record = parent.read()?;

    let children: Vec<Workspace> = (0..p.count)
        .map(|_| Workspace::at(&ctx.paths, &host::random_id(6)))
        .collect();
    // Held until each child's record is written: a child without one
    // whose lock is free is a fork that died, and `list` removes it.
    let mut locks = Vec::new();
    let made = (|| -> Result<u64> {
        for child in &children {
            host::private_dir(&child.dir)?;
            locks.push(child.lock()?);
            copy_files(&parent, child)?;
            child.paused().prepare()?;
        }
        progress.phase("workspace", &format!("phase=fork workspace_id={id}"));
        let state = children[0].paused().partial();
        let disks: Vec<PathBuf> = children.iter().map(Workspace::disk).collect();
        let paused_at = Instant::now();
        let resume_info = client.fork(&state, &disks)?;
        let parent_pause_ms = paused_at.elapsed().as_millis() as u64;
        // One saved state for all: each child consumes its own link.
        for child in &children[1..] {
            fs::hard_link(&state, child.paused().partial())
                .ctx(|| format!("link the saved state into {}", child.dir.display()))?;
        }
        for (i, child) in children.iter().enumerate() {
            child.paused().commit(&resume_info)?;
            let mut r = record.clone();
            r.workspace_id = child.id.clone();
            r.name = p.names.get(i).cloned();
            r.created_at = now();
            r.mark_started();
            child.write(&r)?;
        }
        Ok(parent_pause_ms)
    })();
    drop(locks);
    let parent_pause_ms = match made {
        Ok(ms) => ms,
        Err(e) => {
            for child in &children {
                remove_child(child);
            }
            return Err(e);
        }
    };
    // The children start together.
    let resumed: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = children
            .iter()
            .map(|child| {
                s.spawn(move || resume_as(ctx, child, Restore::Fork, progress).map(|_| ()))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Boot("a fork's start panicked".into())))
            })
            .collect()
    });
    let mut workspaces = Vec::new();
    for (child, done) in children.iter().zip(resumed) {
        if let Err(e) = done {
            for child in &children {
                remove_child(child);
            }
            return Err(e);
        }
        workspaces.push(child.info(&child.read()?));
    }
    Ok(ForkResult {
        parent_workspace_id: id.into(),
        count: workspaces.len(),
        workspaces,
        parent_pause_ms,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// What a child shares with its parent besides disk and memory: the
/// baseline `diff` compares against, the secrets, the command history.
fn copy_files(parent: &Workspace, child: &Workspace) -> Result<()> {
    let link_or_copy = |from: &Path, to: &Path| -> Result<()> {
        if fs::hard_link(from, to).is_err() {
            fs::copy(from, to).ctx(|| format!("copy {}", from.display()))?;
        }
        Ok(())
    };
    // The baseline is immutable: one file for both.
    link_or_copy(&parent.baseline(), &child.baseline())?;
    for dir in ["secrets", "commands"] {
        let (from, to) = (parent.dir.join(dir), child.dir.join(dir));
        host::private_dir(&to)?;
        for e in fs::read_dir(&from).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                let dest = to.join(e.file_name());
                fs::copy(e.path(), &dest).ctx(|| format!("copy {}", e.path().display()))?;
            }
        }
    }
    Ok(())
}

fn remove_child(child: &Workspace) {
    launch::kill(&child.vm());
    child.vm().remove_outside();
    let _ = fs::remove_dir_all(&child.dir);
}
