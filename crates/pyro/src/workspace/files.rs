//! Files in a running workspace: `sync push` and `export` (tar archives
//! streamed to and from the guest), `file list/read/write`, and the helpers
//! patches and diffs share. Paths a user gives are mapped into
//! `/workspace` here; the agent confines them again on its side.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

use pyro_protocol::{Message, PutArchive, WORKSPACE_ROOT};
use serde::{Deserialize, Serialize};

use crate::contract::ExecutionMode;
use crate::error::{Error, IoContext, Result};
use crate::host;
use crate::paths::Context;
use crate::vmm::client::VmClient;
use crate::workspace::archive::{self, SourceMode};
use crate::workspace::vm::connect;
use crate::workspace::{secrets, Workspace};

/// Largest file `file read` returns and `file write` or a patch writes.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// What a path in a workspace is.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactType {
    File,
    Directory,
    Symlink,
    Other,
}

impl ArtifactType {
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactType::File => "file",
            ArtifactType::Directory => "directory",
            ArtifactType::Symlink => "symlink",
            ArtifactType::Other => "other",
        }
    }
}

impl From<pyro_protocol::ArtifactType> for ArtifactType {
    fn from(t: pyro_protocol::ArtifactType) -> Self {
        match t {
            pyro_protocol::ArtifactType::File => ArtifactType::File,
            pyro_protocol::ArtifactType::Directory => ArtifactType::Directory,
            pyro_protocol::ArtifactType::Symlink => ArtifactType::Symlink,
            pyro_protocol::ArtifactType::Other => ArtifactType::Other,
        }
    }
}

/// One path of a listing.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub artifact_type: ArtifactType,
    pub size_bytes: u64,
    pub link_target: Option<String>,
}

impl From<pyro_protocol::FileEntry> for FileEntry {
    fn from(e: pyro_protocol::FileEntry) -> Self {
        FileEntry {
            path: e.path,
            artifact_type: e.artifact_type.into(),
            size_bytes: e.size_bytes,
            link_target: e.link_target,
        }
    }
}

/// A path the user gave, made absolute under `/workspace` and normalized:
/// relative paths are taken from `/workspace`, `.` is dropped, `..` and
/// anything outside `/workspace` are refused.
pub fn workspace_path(path: &str) -> Result<String> {
    let joined = if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        Path::new(WORKSPACE_ROOT).join(path)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                return Err(Error::invalid(format!("{path}: `..` is not allowed")))
            }
            _ => {}
        }
    }
    if !out.starts_with(WORKSPACE_ROOT) {
        return Err(Error::invalid(format!("{path}: outside {WORKSPACE_ROOT}")));
    }
    Ok(out.display().to_string())
}

/// The part of a normalized workspace path below `/workspace`, component
/// by component (`/workspace/workspacefoo` is `workspacefoo`).
pub(crate) fn below_root(path: &str) -> Result<PathBuf> {
    Path::new(path)
        .strip_prefix(WORKSPACE_ROOT)
        .map(Path::to_path_buf)
        .map_err(|_| Error::invalid(format!("{path}: outside {WORKSPACE_ROOT}")))
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncResult {
    pub workspace_id: String,
    pub workspace_sync: SyncInfo,
    pub execution_mode: ExecutionMode,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncInfo {
    pub mode: SourceMode,
    pub source_path: String,
    pub destination: String,
    pub entry_count: u64,
    pub bytes_written: u64,
}

/// Streams a tar file into the guest at `dest`.
pub(crate) fn push(client: &mut VmClient, tar_path: &Path, dest: &str) -> Result<(u64, u64)> {
    let mut f = fs::File::open(tar_path).ctx(|| format!("open {}", tar_path.display()))?;
    let reply = client.request(
        &Message::PutArchive(PutArchive {
            dest: dest.into(),
            remove: Vec::new(),
            atomic: false,
        }),
        Some(&mut f),
        &mut |_| {},
    )?;
    match reply {
        Message::ArchivePut {
            entry_count,
            bytes_written,
        } => Ok((entry_count, bytes_written)),
        other => Err(Error::unexpected(&other)),
    }
}

pub fn sync_push(ctx: &Context, id: &str, source: &Path, dest: &str) -> Result<SyncResult> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    let dest = workspace_path(dest)?;
    let mut client = connect(ctx, &ws)?;
    let tmp = ws.dir.join(format!(".sync-{}.tar", host::random_id(4)));
    let result = (|| {
        let f = fs::File::create(&tmp).ctx(|| "create sync archive".into())?;
        let (mode, summary) = archive::build(source, std::io::BufWriter::new(f))?;
        push(&mut client, &tmp, &dest)?;
        Ok(SyncResult {
            workspace_id: id.into(),
            workspace_sync: SyncInfo {
                mode,
                source_path: source.display().to_string(),
                destination: dest.clone(),
                entry_count: summary.entry_count,
                bytes_written: summary.bytes,
            },
            execution_mode: ExecutionMode::GuestVirtioSerial,
        })
    })();
    let _ = fs::remove_file(&tmp);
    ws.touch()?;
    result
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportResult {
    pub workspace_id: String,
    pub workspace_path: String,
    pub output_path: String,
    pub artifact_type: ArtifactType,
    pub entry_count: u64,
    pub bytes_written: u64,
    /// Entries not made on the host: symlinks that are absolute or lead
    /// out of the export, and special files.
    pub skipped: Vec<String>,
    pub execution_mode: ExecutionMode,
}

/// The most a tar archive fetched from a guest (an export, the live tree
/// a diff reads) may hold: `PYRO_MAX_TRANSFER_BYTES`, else 4 GiB. A guest
/// can make an archive of any size (a sparse file reads as zeros).
pub fn transfer_limit() -> u64 {
    std::env::var("PYRO_MAX_TRANSFER_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4 << 30)
}

/// A fetched archive, in a scratch file of the workspace's that goes with
/// it.
pub(crate) struct Fetched {
    pub file: fs::File,
    path: PathBuf,
    pub reply: Message,
}

impl Drop for Fetched {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Fetches `path` from the guest as a tar archive, streamed to disk.
pub(crate) fn fetch(ws: &Workspace, client: &mut VmClient, path: &str) -> Result<Fetched> {
    use std::io::Seek;
    let scratch = ws.dir.join(format!(".fetch-{}.tar", host::random_id(4)));
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&scratch)
        .ctx(|| format!("create {}", scratch.display()))?;
    let mut fetched = Fetched {
        file: file.try_clone().ctx(|| "dup scratch".into())?,
        path: scratch,
        reply: Message::Done,
    };
    let mut out = std::io::BufWriter::new(&mut file);
    fetched.reply = client.request_into(
        &Message::GetArchive { path: path.into() },
        &mut out,
        transfer_limit(),
        &format!("the archive of {path}"),
    )?;
    std::io::Write::flush(&mut out).ctx(|| "write archive".into())?;
    drop(out);
    fetched
        .file
        .seek(std::io::SeekFrom::Start(0))
        .ctx(|| "rewind archive".into())?;
    Ok(fetched)
}

pub fn export(
    ctx: &Context,
    id: &str,
    path: &str,
    output: &Path,
    force: bool,
) -> Result<ExportResult> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    let path = workspace_path(path)?;
    let mut client = connect(ctx, &ws)?;
    let fetched = fetch(&ws, &mut client, &path)?;
    let Message::ArchiveSent {
        artifact_type,
        entry_count,
        bytes_written,
    } = fetched.reply
    else {
        return Err(Error::unexpected(&fetched.reply));
    };
    let skipped = archive::unpack_export(
        std::io::BufReader::new(&fetched.file),
        artifact_type,
        output,
        force,
    )?;
    Ok(ExportResult {
        workspace_id: id.into(),
        workspace_path: path,
        output_path: output.display().to_string(),
        artifact_type: artifact_type.into(),
        entry_count,
        bytes_written,
        skipped,
        execution_mode: ExecutionMode::GuestVirtioSerial,
    })
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileListResult {
    pub workspace_id: String,
    pub path: String,
    pub artifact_type: ArtifactType,
    pub recursive: bool,
    pub entries: Vec<FileEntry>,
    /// More entries exist than one listing returns (list a subdirectory).
    pub truncated: bool,
    pub execution_mode: ExecutionMode,
}

pub fn file_list(ctx: &Context, id: &str, path: &str, recursive: bool) -> Result<FileListResult> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    let path = workspace_path(path)?;
    let mut client = connect(ctx, &ws)?;
    match client.request(&Message::ListFiles { path, recursive }, None, &mut |_| {})? {
        Message::FileList {
            path,
            artifact_type,
            entries,
            truncated,
        } => Ok(FileListResult {
            workspace_id: id.into(),
            path,
            artifact_type: artifact_type.into(),
            recursive,
            entries: entries.into_iter().map(FileEntry::from).collect(),
            truncated,
            execution_mode: ExecutionMode::GuestVirtioSerial,
        }),
        other => Err(Error::unexpected(&other)),
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileReadResult {
    pub workspace_id: String,
    pub path: String,
    pub size_bytes: u64,
    pub max_bytes: u64,
    pub content: String,
    pub truncated: bool,
    pub execution_mode: ExecutionMode,
}

pub(crate) fn check_max_bytes(max_bytes: u64) -> Result<()> {
    if max_bytes == 0 || max_bytes > MAX_FILE_BYTES {
        return Err(Error::invalid(format!(
            "max_bytes must be 1 to {MAX_FILE_BYTES}"
        )));
    }
    Ok(())
}

/// A file's bytes (up to `max_bytes`), its size, and whether it was cut.
pub(crate) fn read_bytes(
    client: &mut VmClient,
    path: &str,
    max_bytes: u64,
) -> Result<(Vec<u8>, u64, bool)> {
    let mut data = Vec::new();
    match client.request(
        &Message::ReadFile {
            path: path.into(),
            max_bytes,
        },
        None,
        // Never more than asked for, whatever the guest sends.
        &mut |b| {
            let room = (max_bytes as usize).saturating_sub(data.len());
            data.extend_from_slice(&b[..b.len().min(room)]);
        },
    )? {
        Message::FileRead {
            size_bytes,
            truncated,
        } => Ok((data, size_bytes, truncated)),
        other => Err(Error::unexpected(&other)),
    }
}

pub fn file_read(ctx: &Context, id: &str, path: &str, max_bytes: u64) -> Result<FileReadResult> {
    check_max_bytes(max_bytes)?;
    let ws = Workspace::locate(&ctx.paths, id)?;
    let path = workspace_path(path)?;
    let mut client = connect(ctx, &ws)?;
    let (data, size_bytes, truncated) = read_bytes(&mut client, &path, max_bytes)?;
    Ok(FileReadResult {
        workspace_id: id.into(),
        path,
        size_bytes,
        max_bytes,
        // Secrets never come back, even from a file that holds one.
        content: secrets::redact(&String::from_utf8_lossy(&data), &ws.redactions()?),
        truncated,
        execution_mode: ExecutionMode::GuestVirtioSerial,
    })
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileWriteResult {
    pub workspace_id: String,
    pub path: String,
    pub size_bytes: u64,
    pub bytes_written: u64,
    pub execution_mode: ExecutionMode,
}

/// The archive that writes `files` (workspace paths, contents, modes)
/// relative to `/workspace`.
pub(crate) fn write_archive(files: &[(String, Vec<u8>, u32)]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        let rel = below_root(path)?;
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, &rel, &data[..])
            .ctx(|| "build archive".into())?;
    }
    b.into_inner().ctx(|| "build archive".into())
}

/// Writes files (and removes others) in one all-or-nothing guest request.
pub(crate) fn write_files(
    client: &mut VmClient,
    files: &[(String, Vec<u8>, u32)],
    remove: Vec<String>,
) -> Result<u64> {
    let tar = write_archive(files)?;
    match client.request(
        &Message::PutArchive(PutArchive {
            dest: WORKSPACE_ROOT.into(),
            remove,
            atomic: true,
        }),
        Some(&mut &tar[..]),
        &mut |_| {},
    )? {
        Message::ArchivePut { bytes_written, .. } => Ok(bytes_written),
        other => Err(Error::unexpected(&other)),
    }
}

pub fn file_write(ctx: &Context, id: &str, path: &str, text: &str) -> Result<FileWriteResult> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::invalid(format!(
            "text is {} bytes; the limit is {MAX_FILE_BYTES}",
            text.len()
        )));
    }
    let ws = Workspace::locate(&ctx.paths, id)?;
    let path = workspace_path(path)?;
    if path == WORKSPACE_ROOT {
        return Err(Error::invalid("cannot write the workspace root"));
    }
    let mut client = connect(ctx, &ws)?;
    let written = write_files(
        &mut client,
        &[(path.clone(), text.as_bytes().to_vec(), 0o644)],
        Vec::new(),
    )?;
    Ok(FileWriteResult {
        workspace_id: id.into(),
        path,
        size_bytes: text.len() as u64,
        bytes_written: written,
        execution_mode: ExecutionMode::GuestVirtioSerial,
    })
}

/// The create-time baseline's tree, and the live `/workspace`'s.
pub(crate) fn trees(
    ws: &Workspace,
    client: &mut VmClient,
) -> Result<(
    BTreeMap<PathBuf, archive::Artifact>,
    BTreeMap<PathBuf, archive::Artifact>,
)> {
    let base = fs::File::open(ws.baseline()).ctx(|| "open baseline".into())?;
    let base = archive::read_tree(std::io::BufReader::new(base)).ctx(|| "read baseline".into())?;
    let fetched = fetch(ws, client, WORKSPACE_ROOT)?;
    let live = archive::read_tree(std::io::BufReader::new(&fetched.file))
        .ctx(|| "read workspace".into())?;
    Ok((base, live))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Relative path components a user might type, including ones that
    /// begin with the root's own name.
    fn component() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9_.-]{1,12}".prop_filter("not . or ..", |s| s != "." && s != ".."),
            "workspace[a-z0-9]{0,6}",
            Just("workspace".to_string()),
        ]
    }

    proptest! {
        /// Every relative path lands under `/workspace` as itself, and the
        /// archive that writes it names exactly that path.
        #[test]
        fn relative_paths_map_into_the_workspace_and_back(
            parts in prop::collection::vec(component(), 1..5)
        ) {
            let rel = parts.join("/");
            let mapped = workspace_path(&rel).unwrap();
            prop_assert_eq!(&mapped, &format!("{WORKSPACE_ROOT}/{rel}"));
            prop_assert_eq!(below_root(&mapped).unwrap(), PathBuf::from(&rel));
            let tar = write_archive(&[(mapped, b"x".to_vec(), 0o644)]).unwrap();
            let mut archive = tar::Archive::new(&tar[..]);
            let names: Vec<PathBuf> = archive
                .entries()
                .unwrap()
                .map(|e| e.unwrap().path().unwrap().into_owned())
                .collect();
            prop_assert_eq!(names, vec![PathBuf::from(&rel)]);
        }

        /// Absolute paths are kept only inside `/workspace`; `..` anywhere is
        /// refused.
        #[test]
        fn nothing_maps_outside_the_workspace(
            parts in prop::collection::vec(
                prop_oneof![component(), Just("..".to_string()), Just(".".to_string())],
                0..6,
            ),
            absolute in any::<bool>(),
        ) {
            let p = if absolute { format!("/{}", parts.join("/")) } else { parts.join("/") };
            match workspace_path(&p) {
                Ok(mapped) => {
                    prop_assert!(!parts.iter().any(|c| c == ".."));
                    prop_assert!(Path::new(&mapped).starts_with(WORKSPACE_ROOT), "{}", mapped);
                    prop_assert!(below_root(&mapped).is_ok());
                }
                Err(_) => prop_assert!(
                    parts.iter().any(|c| c == "..")
                        || (absolute && parts.iter().find(|c| *c != ".").map(String::as_str) != Some("workspace"))
                ),
            }
        }
    }

    #[test]
    fn a_file_named_like_the_root_keeps_its_name() {
        let p = workspace_path("workspacefoo.txt").unwrap();
        assert_eq!(p, "/workspace/workspacefoo.txt");
        assert_eq!(below_root(&p).unwrap(), PathBuf::from("workspacefoo.txt"));
        assert!(below_root("/workspacefoo.txt").is_err());
        assert!(workspace_path("/etc/passwd").is_err());
        assert!(workspace_path("a/../../etc").is_err());
        assert_eq!(
            workspace_path("/workspace/./a//b").unwrap(),
            "/workspace/a/b"
        );
    }
}
