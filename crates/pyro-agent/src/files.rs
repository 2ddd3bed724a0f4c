//! File operations on `/workspace`: archives in and out, listings, reads.
//! Every path is confined to the workspace ([`Jail`]): a symlink that leads
//! outside it is refused, never followed.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::Receiver;

use pyro_protocol::{ArtifactType, FileEntry, Frame, Kind, Message, PutArchive, WORKSPACE_ROOT};

use crate::serve::Link;

type Result<T> = std::result::Result<T, String>;

fn err(context: &str, e: impl std::fmt::Display) -> String {
    format!("{context}: {e}")
}

/// The workspace as the protocol names it (`/workspace/...`), and the
/// directory that stands for it. Every path a request names is confined to
/// it: lexically (no `..`, nothing outside), and then on the filesystem (no
/// symlink on the way leads outside). In a guest the two are the same path.
pub struct Jail {
    root: PathBuf,
    /// Who owns what the host writes (an image's user), if not root.
    owner: Option<(u32, u32)>,
}

impl Jail {
    pub fn new(root: PathBuf, owner: Option<(u32, u32)>) -> Jail {
        Jail { root, owner }
    }

    /// Gives `path`, and the directories between the workspace and it, to
    /// the owner (if there is one).
    fn give(&self, path: &Path) {
        let Some((uid, gid)) = self.owner else { return };
        let mut p = Some(path);
        while let Some(at) = p {
            if !at.starts_with(&self.root) || at == self.root {
                break;
            }
            let _ = crate::sys::lchown(at, uid, gid);
            p = at.parent();
        }
    }

    /// The directory a guest path names, without looking at the
    /// filesystem: normalized, and inside the workspace or refused.
    pub fn lexical(&self, path: &str) -> Result<PathBuf> {
        let p = Path::new(path);
        if !p.is_absolute() {
            return Err(format!("{path}: not an absolute path"));
        }
        let mut out = PathBuf::from("/");
        for c in p.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(n) => out.push(n),
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(format!("{path}: `..` is not allowed"))
                }
            }
        }
        match out.strip_prefix(WORKSPACE_ROOT) {
            Ok(rel) => Ok(self.root.join(rel)),
            Err(_) => Err(format!("{path}: outside {WORKSPACE_ROOT}")),
        }
    }

    /// How the guest names a path inside the workspace.
    pub fn shown(&self, real: &Path) -> String {
        match real.strip_prefix(&self.root) {
            Ok(rel) if rel.as_os_str().is_empty() => WORKSPACE_ROOT.to_string(),
            Ok(rel) => Path::new(WORKSPACE_ROOT).join(rel).display().to_string(),
            Err(_) => real.display().to_string(),
        }
    }

    fn canonical_root(&self) -> Result<PathBuf> {
        fs::canonicalize(&self.root).map_err(|e| err(WORKSPACE_ROOT, e))
    }

    /// Confines `path` and checks that no symlink on the way to it leaves
    /// the workspace. With `follow_last`, the last component is resolved
    /// too (and must exist).
    pub fn confine(&self, path: &str, follow_last: bool) -> Result<PathBuf> {
        let p = self.lexical(path)?;
        let root = self.canonical_root()?;
        let check = |q: &Path| -> Result<()> {
            match fs::canonicalize(q) {
                Ok(real) if real.starts_with(&root) => Ok(()),
                Ok(real) => Err(format!(
                    "{path}: a symlink leads outside {WORKSPACE_ROOT} (to {})",
                    real.display()
                )),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    Err(format!("{path}: no such file or directory"))
                }
                Err(e) => Err(err(path, e)),
            }
        };
        if follow_last {
            check(&p)?;
        } else if let Some(parent) = p.parent() {
            if p != self.root {
                check(parent)?;
                fs::symlink_metadata(&p).map_err(|e| err(path, e))?;
            }
        }
        Ok(p)
    }

    /// Creates a directory (and its parents) under the workspace, checking
    /// the deepest existing ancestor first, so nothing is ever created
    /// through a symlink that leads outside.
    fn create_dir(&self, p: &Path) -> Result<()> {
        let mut existing = p;
        while fs::symlink_metadata(existing).is_err() {
            existing = existing
                .parent()
                .ok_or_else(|| format!("{}: no parent", p.display()))?;
        }
        self.confine(&self.shown(existing), true)?;
        fs::create_dir_all(p).map_err(|e| err(&self.shown(p), e))?;
        self.confine(&self.shown(p), true).map(|_| ())
    }
}

fn artifact_type(m: &fs::Metadata) -> ArtifactType {
    let t = m.file_type();
    if t.is_symlink() {
        ArtifactType::Symlink
    } else if t.is_dir() {
        ArtifactType::Directory
    } else if t.is_file() {
        ArtifactType::File
    } else {
        ArtifactType::Other
    }
}

/// Reads input frames of one stream as a byte stream.
pub struct InputReader {
    rx: Receiver<Option<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    done: bool,
}

impl InputReader {
    pub fn new(rx: Receiver<Option<Vec<u8>>>) -> InputReader {
        InputReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
            done: false,
        }
    }

    /// Consumes what is left, so the sender never blocks on us.
    fn drain(&mut self) {
        while !self.done {
            match self.rx.recv() {
                Ok(Some(_)) => {}
                _ => self.done = true,
            }
        }
    }
}

impl Read for InputReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Some(c)) => {
                    self.chunk = c;
                    self.pos = 0;
                }
                Ok(None) => self.done = true,
                Err(_) => return Err(io::Error::other("input cancelled")),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

pub fn put_archive(jail: &Jail, req: &PutArchive, input: &mut InputReader) -> Result<(u64, u64)> {
    let result = if req.atomic {
        put_atomic(jail, req, input)
    } else {
        put_direct(jail, req, input)
    };
    input.drain();
    // What was written is on the disk before the host hears it was.
    crate::sys::sync();
    result
}

fn put_direct(jail: &Jail, req: &PutArchive, input: &mut InputReader) -> Result<(u64, u64)> {
    let dest = jail.lexical(&req.dest)?;
    jail.create_dir(&dest)?;
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    let (mut count, mut bytes) = (0, 0);
    for entry in archive.entries().map_err(|e| err("archive", e))? {
        let mut entry = entry.map_err(|e| err("archive", e))?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            return Err(format!(
                "archive entry {}: only files, directories and symlinks are accepted",
                entry
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ));
        }
        bytes += entry.header().size().unwrap_or(0);
        let name = entry
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if !entry.unpack_in(&dest).map_err(|e| err(&name, e))? {
            return Err(format!("archive entry {name}: outside the destination"));
        }
        if let Ok(rel) = entry.path() {
            jail.give(&dest.join(rel));
        }
        count += 1;
    }
    remove_paths(jail, &req.remove)?;
    Ok((count, bytes))
}

/// Every entry is written to a temporary file beside its target first;
/// only when all were written (and every path to remove was checked) are
/// they renamed into place.
fn put_atomic(jail: &Jail, req: &PutArchive, input: &mut InputReader) -> Result<(u64, u64)> {
    let dest = jail.lexical(&req.dest)?;
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let cleanup = |staged: &[(PathBuf, PathBuf)]| {
        for (tmp, _) in staged {
            let _ = fs::remove_file(tmp);
        }
    };
    let result = (|| -> Result<(u64, u64)> {
        let mut archive = tar::Archive::new(&mut *input);
        let mut bytes = 0;
        for entry in archive.entries().map_err(|e| err("archive", e))? {
            let mut entry = entry.map_err(|e| err("archive", e))?;
            let rel = entry.path().map_err(|e| err("archive", e))?.into_owned();
            if !entry.header().entry_type().is_file() {
                return Err(format!(
                    "{}: only regular files are accepted here",
                    rel.display()
                ));
            }
            let target = jail.lexical(&jail.shown(&dest.join(&rel)))?;
            let parent = target.parent().unwrap().to_path_buf();
            jail.create_dir(&parent)?;
            if let Ok(m) = fs::symlink_metadata(&target) {
                if !m.is_file() {
                    return Err(format!(
                        "{}: exists and is not a regular file",
                        jail.shown(&target)
                    ));
                }
            }
            let tmp = parent.join(format!(
                ".pyro-tmp-{}-{}",
                target.file_name().unwrap().to_string_lossy(),
                staged.len()
            ));
            let mode = entry.header().mode().unwrap_or(0o644);
            let mut out = fs::File::create(&tmp).map_err(|e| err(&tmp.to_string_lossy(), e))?;
            staged.push((tmp.clone(), target));
            bytes += io::copy(&mut entry, &mut out).map_err(|e| err("write", e))?;
            out.sync_all().map_err(|e| err("sync", e))?;
            let _ = fs::set_permissions(&tmp, fs::Permissions::from_mode(mode & 0o7777));
            jail.give(&tmp);
        }
        for path in &req.remove {
            let p = jail.confine(path, false)?;
            let m = fs::symlink_metadata(&p).map_err(|e| err(path, e))?;
            if m.is_dir() {
                return Err(format!("{path}: is a directory"));
            }
        }
        Ok((staged.len() as u64, bytes))
    })();
    match result {
        Ok(counts) => {
            for (tmp, target) in &staged {
                fs::rename(tmp, target).map_err(|e| err(&jail.shown(target), e))?;
            }
            remove_paths(jail, &req.remove)?;
            Ok(counts)
        }
        Err(e) => {
            cleanup(&staged);
            Err(e)
        }
    }
}

fn remove_paths(jail: &Jail, paths: &[String]) -> Result<()> {
    for path in paths {
        let p = jail.confine(path, false)?;
        let m = fs::symlink_metadata(&p).map_err(|e| err(path, e))?;
        if m.is_dir() {
            return Err(format!("{path}: is a directory"));
        }
        fs::remove_file(&p).map_err(|e| err(path, e))?;
    }
    Ok(())
}

/// Sends output as `stdout` frames in 64 KiB pieces.
pub struct FrameWriter<'a> {
    pub link: &'a Link,
    pub stream: u32,
    pub buf: Vec<u8>,
}

impl<'a> FrameWriter<'a> {
    pub fn new(link: &'a Link, stream: u32) -> FrameWriter<'a> {
        FrameWriter {
            link,
            stream,
            buf: Vec::new(),
        }
    }
}

impl Write for FrameWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let body = std::mem::take(&mut self.buf);
            self.link
                .send(&Frame::data(self.stream, Kind::Stdout, body));
        }
        Ok(())
    }
}

pub fn get_archive(jail: &Jail, path: &str, out: &mut FrameWriter) -> Result<Message> {
    let p = jail.confine(path, false)?;
    let meta = fs::symlink_metadata(&p).map_err(|e| err(path, e))?;
    let kind = artifact_type(&meta);
    let mut builder = tar::Builder::new(&mut *out);
    builder.follow_symlinks(false);
    let (mut count, mut bytes) = (0u64, 0u64);
    match kind {
        ArtifactType::Directory => {
            append_children(&mut builder, &p, Path::new(""), &mut count, &mut bytes)?
        }
        ArtifactType::File | ArtifactType::Symlink => {
            builder
                .append_path_with_name(&p, p.file_name().unwrap())
                .map_err(|e| err(path, e))?;
            count = 1;
            bytes = if kind == ArtifactType::File {
                meta.len()
            } else {
                0
            };
        }
        ArtifactType::Other => return Err(format!("{path}: not a file, directory or symlink")),
    }
    builder.finish().map_err(|e| err("archive", e))?;
    drop(builder);
    out.flush().map_err(|e| err("send", e))?;
    Ok(Message::ArchiveSent {
        artifact_type: kind,
        entry_count: count,
        bytes_written: bytes,
    })
}

fn sorted_children(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    let mut children: Vec<_> = fs::read_dir(dir)
        .map_err(|e| err(&dir.to_string_lossy(), e))?
        .flatten()
        .collect();
    children.sort_by_key(|e| e.file_name());
    Ok(children)
}

fn append_children<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
    count: &mut u64,
    bytes: &mut u64,
) -> Result<()> {
    for child in sorted_children(dir)? {
        let path = child.path();
        let name = rel.join(child.file_name());
        let meta = fs::symlink_metadata(&path).map_err(|e| err(&path.to_string_lossy(), e))?;
        match artifact_type(&meta) {
            ArtifactType::Other => continue, // sockets, fifos, devices
            ArtifactType::Directory => {
                builder
                    .append_path_with_name(&path, &name)
                    .map_err(|e| err(&path.to_string_lossy(), e))?;
                *count += 1;
                append_children(builder, &path, &name, count, bytes)?;
            }
            kind => {
                builder
                    .append_path_with_name(&path, &name)
                    .map_err(|e| err(&path.to_string_lossy(), e))?;
                *count += 1;
                if kind == ArtifactType::File {
                    *bytes += meta.len();
                }
            }
        }
    }
    Ok(())
}

/// How much of a listing one reply carries, encoded: well under the frame
/// limit, whatever the names.
pub const LIST_BUDGET: usize = 768 * 1024;

/// Entries collected until the budget is spent.
struct Listing {
    entries: Vec<FileEntry>,
    used: usize,
    truncated: bool,
}

impl Listing {
    /// Adds `e` if it fits; false once the budget is spent.
    fn push(&mut self, e: FileEntry) -> bool {
        let cost = serde_json::to_vec(&e).map_or(usize::MAX, |v| v.len() + 1);
        if self.truncated || self.used.saturating_add(cost) > LIST_BUDGET {
            self.truncated = true;
            return false;
        }
        self.used += cost;
        self.entries.push(e);
        true
    }
}

pub fn list_files(jail: &Jail, path: &str, recursive: bool) -> Result<Message> {
    let p = jail.confine(path, false)?;
    let meta = fs::symlink_metadata(&p).map_err(|e| err(path, e))?;
    let kind = artifact_type(&meta);
    let mut listing = Listing {
        entries: Vec::new(),
        used: 0,
        truncated: false,
    };
    if kind == ArtifactType::Directory {
        list_into(jail, &p, recursive, &mut listing)?;
    } else {
        listing.push(entry_for(jail, &p, &meta));
    }
    Ok(Message::FileList {
        path: jail.shown(&p),
        artifact_type: kind,
        entries: listing.entries,
        truncated: listing.truncated,
    })
}

fn entry_for(jail: &Jail, path: &Path, meta: &fs::Metadata) -> FileEntry {
    let kind = artifact_type(meta);
    FileEntry {
        path: jail.shown(path),
        artifact_type: kind,
        size_bytes: if kind == ArtifactType::File {
            meta.size()
        } else {
            0
        },
        link_target: (kind == ArtifactType::Symlink)
            .then(|| fs::read_link(path).ok().map(|t| t.display().to_string()))
            .flatten(),
    }
}

fn list_into(jail: &Jail, dir: &Path, recursive: bool, out: &mut Listing) -> Result<()> {
    for child in sorted_children(dir)? {
        let path = child.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if !out.push(entry_for(jail, &path, &meta)) {
            return Ok(());
        }
        if recursive && meta.is_dir() {
            list_into(jail, &path, true, out)?;
        }
    }
    Ok(())
}

pub fn read_file(
    jail: &Jail,
    path: &str,
    max_bytes: u64,
    out: &mut FrameWriter,
) -> Result<Message> {
    let p = jail.confine(path, true)?;
    let meta = fs::metadata(&p).map_err(|e| err(path, e))?;
    if !meta.is_file() {
        return Err(format!("{path}: not a regular file"));
    }
    let file = fs::File::open(&p).map_err(|e| err(path, e))?;
    let copied = io::copy(&mut file.take(max_bytes), out).map_err(|e| err(path, e))?;
    out.flush().map_err(|e| err("send", e))?;
    Ok(Message::FileRead {
        size_bytes: meta.len(),
        truncated: copied < meta.len(),
    })
}

/// Replaces the guest's secrets: a 0700 directory `dir` (on the `/run`
/// tmpfs, which `on_tmpfs` insists on) with one 0600 file per secret.
pub fn install_secrets(
    dir: &Path,
    secrets: &std::collections::BTreeMap<String, String>,
    on_tmpfs: bool,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let shown = dir.display().to_string();
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(|e| err(&shown, e))?;
    }
    if secrets.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| err(&shown, e))?;
    // Never onto the disk (and into its snapshots): only a tmpfs will do.
    if on_tmpfs && !crate::sys::is_tmpfs(dir).unwrap_or(false) {
        let _ = fs::remove_dir_all(dir);
        return Err(format!(
            "{shown} is not on a tmpfs; secrets are not stored on the disk"
        ));
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| err(&shown, e))?;
    // Readable by the user commands run as (an image's), and nobody else.
    if let Some((uid, gid)) = owner {
        crate::sys::lchown(dir, uid, gid).map_err(|e| err(&shown, e))?;
    }
    for (name, value) in secrets {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad secret name {name:?}"));
        }
        let path = dir.join(name);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| err(&path.to_string_lossy(), e))?;
        f.write_all(value.as_bytes())
            .map_err(|e| err(&path.to_string_lossy(), e))?;
        if let Some((uid, gid)) = owner {
            crate::sys::lchown(&path, uid, gid).map_err(|e| err(&path.to_string_lossy(), e))?;
        }
    }
    Ok(())
}
