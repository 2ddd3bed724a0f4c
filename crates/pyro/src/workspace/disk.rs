//! Offline inspection of a stopped workspace's disk: `disk export` flattens
//! the qcow2 chain into a raw ext4 image with `qemu-img convert`; `disk
//! list` and `disk read` read such an image with `ext4-view`, a read-only
//! ext4 reader that replays the journal in memory and is built not to panic
//! on hostile input (the guest wrote this filesystem). Nothing is mounted
//! and no privilege is needed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use pyro_protocol::WORKSPACE_ROOT;

use crate::error::{Error, IoContext, Result};
use crate::host;
use crate::paths::Context;
use crate::workspace::files::{check_max_bytes, ArtifactType, FileEntry};
use crate::workspace::Workspace;

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskExport {
    pub workspace_id: String,
    pub output_path: String,
    pub disk_format: String,
    pub bytes_written: u64,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskList {
    pub workspace_id: String,
    pub path: String,
    pub artifact_type: ArtifactType,
    pub entries: Vec<FileEntry>,
    /// The listing stopped at its limits (entries, path bytes, depth).
    #[serde(default)]
    pub truncated: bool,
}

/// What one listing of a (guest-written, so possibly hostile) disk may
/// hold: a directory that contains itself ends at these, not never.
const LIST_ENTRIES: usize = 100_000;
const LIST_PATH_BYTES: usize = 16 << 20;
const LIST_DEPTH: usize = 256;

#[derive(Default)]
struct Walk {
    entries: Vec<FileEntry>,
    path_bytes: usize,
    truncated: bool,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskRead {
    pub workspace_id: String,
    pub path: String,
    pub size_bytes: u64,
    pub max_bytes: u64,
    pub content: String,
    pub truncated: bool,
}

fn stopped(ctx: &Context, id: &str, op: &str) -> Result<Workspace> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    ws.require_stopped(op)?;
    Ok(ws)
}

fn convert(disk: &Path, out: &Path) -> Result<()> {
    host::tool(
        Command::new("qemu-img")
            .args(["convert", "-q", "-O", "raw"])
            .arg(disk)
            .arg(out),
    )
    .map(|_| ())
}

pub fn export(ctx: &Context, id: &str, output: &Path, force: bool) -> Result<DiskExport> {
    let ws = stopped(ctx, id, "disk export")?;
    host::produce_file(output, force, |tmp| convert(&ws.disk(), tmp))?;
    Ok(DiskExport {
        workspace_id: id.into(),
        output_path: output.display().to_string(),
        disk_format: "ext4".into(),
        bytes_written: fs::metadata(output).map(|m| m.len()).unwrap_or(0),
    })
}

/// A raw copy of the stopped disk, kept until the disk changes.
fn view(ws: &Workspace) -> Result<ext4_view::Ext4> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(ws.disk()).ctx(|| "stat disk".into())?;
    let stamp = format!("{}-{}-{}", m.len(), m.mtime(), m.mtime_nsec());
    let raw = ws.dir.join(format!("disk-view-{stamp}.raw"));
    if !raw.exists() {
        for e in fs::read_dir(&ws.dir)
            .ctx(|| "read workspace dir".into())?
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with("disk-view-") {
                let _ = fs::remove_file(e.path());
            }
        }
        let tmp = raw.with_extension("partial");
        convert(&ws.disk(), &tmp)?;
        fs::rename(&tmp, &raw).ctx(|| "install disk view".into())?;
    }
    ext4_view::Ext4::load_from_path(&raw)
        .map_err(|e| Error::Guest(format!("the workspace disk is unreadable: {e}")))
}

/// Relative paths are under /workspace; absolute ones anywhere on the disk.
fn disk_path(path: &str) -> Result<String> {
    let p = if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        Path::new(WORKSPACE_ROOT).join(path)
    };
    if p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(Error::invalid(format!("{path}: `..` is not allowed")));
    }
    Ok(p.display().to_string())
}

fn kind(ft: ext4_view::FileType) -> ArtifactType {
    if ft.is_symlink() {
        ArtifactType::Symlink
    } else if ft.is_dir() {
        ArtifactType::Directory
    } else if ft.is_regular_file() {
        ArtifactType::File
    } else {
        ArtifactType::Other
    }
}

fn not_found(path: &str, e: ext4_view::Ext4Error) -> Error {
    Error::invalid(format!("{path}: {e}"))
}

pub fn list(ctx: &Context, id: &str, path: &str, recursive: bool) -> Result<DiskList> {
    let ws = stopped(ctx, id, "disk list")?;
    let path = disk_path(path)?;
    let fs = view(&ws)?;
    let meta = fs
        .symlink_metadata(path.as_str())
        .map_err(|e| not_found(&path, e))?;
    let artifact_type = kind(meta.file_type());
    let mut found = Walk::default();
    if artifact_type == ArtifactType::Directory {
        walk(&fs, &path, recursive, 0, &mut found)?;
    }
    Ok(DiskList {
        workspace_id: id.into(),
        path,
        artifact_type,
        entries: found.entries,
        truncated: found.truncated,
    })
}

fn walk(
    fs: &ext4_view::Ext4,
    dir: &str,
    recursive: bool,
    depth: usize,
    out: &mut Walk,
) -> Result<()> {
    let mut children = Vec::new();
    for e in fs.read_dir(dir).map_err(|e| not_found(dir, e))? {
        let e = e.map_err(|e| not_found(dir, e))?;
        let name = e.file_name().as_str().unwrap_or("").to_string();
        if name == "." || name == ".." || name.is_empty() {
            continue;
        }
        children.push(name);
    }
    children.sort();
    for name in children {
        let full = format!("{}/{name}", dir.trim_end_matches('/'));
        if out.entries.len() >= LIST_ENTRIES || out.path_bytes + full.len() > LIST_PATH_BYTES {
            out.truncated = true;
            return Ok(());
        }
        out.path_bytes += full.len();
        let meta = fs
            .symlink_metadata(full.as_str())
            .map_err(|e| not_found(&full, e))?;
        let t = kind(meta.file_type());
        out.entries.push(FileEntry {
            path: full.clone(),
            artifact_type: t,
            size_bytes: if t == ArtifactType::File {
                meta.len()
            } else {
                0
            },
            link_target: (t == ArtifactType::Symlink)
                .then(|| {
                    fs.read_link(full.as_str())
                        .ok()
                        .map(|l| l.display().to_string())
                })
                .flatten(),
        });
        if recursive && t == ArtifactType::Directory {
            if depth + 1 >= LIST_DEPTH {
                out.truncated = true;
                continue;
            }
            walk(fs, &full, true, depth + 1, out)?;
        }
    }
    Ok(())
}

pub fn read(ctx: &Context, id: &str, path: &str, max_bytes: u64) -> Result<DiskRead> {
    check_max_bytes(max_bytes)?;
    let ws = stopped(ctx, id, "disk read")?;
    let path = disk_path(path)?;
    let fs = view(&ws)?;
    let meta = fs
        .metadata(path.as_str())
        .map_err(|e| not_found(&path, e))?;
    if !meta.file_type().is_regular_file() {
        return Err(Error::invalid(format!("{path}: not a regular file")));
    }
    let mut file = fs.open(path.as_str()).map_err(|e| not_found(&path, e))?;
    let mut data = vec![0u8; max_bytes.min(meta.len()) as usize];
    let mut got = 0;
    while got < data.len() {
        let n = file
            .read_bytes(&mut data[got..])
            .map_err(|e| not_found(&path, e))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    data.truncate(got);
    Ok(DiskRead {
        workspace_id: id.into(),
        path,
        size_bytes: meta.len(),
        max_bytes,
        content: super::secrets::redact(&String::from_utf8_lossy(&data), &ws.redactions()?),
        truncated: (got as u64) < meta.len(),
    })
}
