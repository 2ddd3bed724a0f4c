//! An image's layers flattened into one tar stream: each path as the top
//! layer that has it leaves it, whiteouts and opaque directories applied,
//! in an order GNU tar can extract without following anything the image
//! put there.
//!
//! Two passes over the layers: the first works out which layer's entry
//! each surviving path comes from, the second copies exactly those entries.
//! What the stream can hold is checked here, because the host extracts it:
//! no absolute names or `..`, no entry beneath something that is not a
//! directory in the final tree (so extraction never passes through a
//! symlink), no device nodes (the guest's `/dev` is the kernel's), hard
//! links only to regular files that are themselves in the stream.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path};

use tar::{Archive, EntryType, Header};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// What the flattening left out, for the caller to report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Flattened {
    pub entries: u64,
    pub skipped: Vec<String>,
}

/// A hard link waiting for the end of the stream: its header, PAX
/// records, name and target.
type PendingLink = (Header, Vec<(String, Vec<u8>)>, String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Other,
}

/// Opens a layer blob, gzip- or zstd-compressed or plain (by its first
/// bytes: registries and `docker save` disagree on media types).
pub(crate) fn open(path: &Path) -> io::Result<Box<dyn Read>> {
    let mut file = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut file, &mut magic)?;
    let head = io::Cursor::new(magic[..n].to_vec());
    let whole = head.chain(file);
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(whole)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(
            ruzstd::decoding::StreamingDecoder::new(whole)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}")))?,
        ),
        _ => Box::new(whole),
    })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A layer's name for an entry: relative, without `.`, or `None` for the
/// root itself and for names that climb out (`..`).
fn clean(p: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?.to_owned()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// The entry types an image's files may have; anything else (device
/// nodes, sparse files, extension headers the reader did not take up) is
/// left out, so the stream GNU tar reads holds only what was checked.
fn kind_of(t: EntryType) -> Option<Kind> {
    match t {
        EntryType::Directory => Some(Kind::Dir),
        EntryType::Regular | EntryType::Continuous => Some(Kind::File),
        EntryType::Symlink | EntryType::Link | EntryType::Fifo => Some(Kind::Other),
        _ => None,
    }
}

/// How much an image may unpack to, in bytes of file data and entries
/// (`PYRO_IMAGE_MAX_BYTES`, default 64 GiB; a million entries per GiB).
fn limits() -> (u64, u64) {
    let bytes = std::env::var("PYRO_IMAGE_MAX_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64u64 << 30);
    (bytes, (bytes >> 30).max(1) * 1_000_000)
}

fn too_big(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the image unpacks to more {what} than PYRO_IMAGE_MAX_BYTES allows"),
    )
}

fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// Which layer each surviving path comes from.
#[derive(Default)]
struct Plan {
    paths: BTreeMap<String, (usize, Kind)>,
    /// Directories made opaque, by layer (each is emptied once).
    opaque: std::collections::HashSet<(usize, String)>,
}

impl Plan {
    /// Removes `path`'s descendants that came from layers below `layer`.
    fn remove_below(&mut self, dir: &str, layer: usize) {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let doomed: Vec<String> = self
            .paths
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(_, (l, _))| *l < layer)
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.paths.remove(&k);
        }
    }

    fn add(&mut self, layer: usize, path: &str, kind: Kind) {
        let (dir, name) = split(path);
        if name == OPAQUE {
            if self.opaque.insert((layer, dir.to_owned())) {
                self.remove_below(dir, layer);
            }
        } else if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            if hidden.is_empty() {
                return;
            }
            let hidden = if dir.is_empty() {
                hidden.to_owned()
            } else {
                format!("{dir}/{hidden}")
            };
            if self.paths.get(&hidden).is_some_and(|(l, _)| *l < layer) {
                self.paths.remove(&hidden);
            }
            self.remove_below(&hidden, layer);
        } else {
            // A directory replaced by anything else takes its contents with it.
            if kind != Kind::Dir && self.paths.get(path).is_some_and(|(_, k)| *k == Kind::Dir) {
                self.remove_below(path, layer + 1);
            }
            self.paths.insert(path.to_owned(), (layer, kind));
        }
    }

    /// Every ancestor of `path` is a directory in the final tree, or absent
    /// (tar creates it as one).
    fn reachable(&self, path: &str) -> bool {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let ancestor = &path[..at + i];
            if self
                .paths
                .get(ancestor)
                .is_some_and(|(_, k)| *k != Kind::Dir)
            {
                return false;
            }
            at += i + 1;
        }
        true
    }
}

/// Something the stream gets beside the layers' contents, owned by root: a
/// directory where the image has nothing at that path, or a file that
/// replaces whatever the image has there.
pub(crate) struct Extra {
    path: &'static str,
    mode: u32,
    file: Option<Vec<u8>>,
}

impl Extra {
    pub fn dir(path: &'static str, mode: u32) -> Extra {
        Extra {
            path,
            mode,
            file: None,
        }
    }

    pub fn file(path: &'static str, mode: u32, content: Vec<u8>) -> Extra {
        Extra {
            path,
            mode,
            file: Some(content),
        }
    }
}

/// Writes the flattened image of `layers` (bottom first), then `extras`,
/// to `out` as one tar stream.
pub(crate) fn flatten(
    layers: &[&Path],
    extras: &[Extra],
    out: impl Write,
) -> io::Result<Flattened> {
    let (max_bytes, max_entries) = limits();
    let (mut bytes, mut entries) = (0u64, 0u64);
    let mut plan = Plan::default();
    for (i, layer) in layers.iter().enumerate() {
        let mut archive = Archive::new(open(layer)?);
        for entry in archive.entries()? {
            let entry = entry?;
            let Some(path) = clean(&entry.path()?) else {
                continue;
            };
            let Some(kind) = kind_of(entry.header().entry_type()) else {
                continue;
            };
            entries += 1;
            bytes += if kind == Kind::File { entry.size() } else { 0 };
            if entries > max_entries {
                return Err(too_big("entries"));
            }
            if bytes > max_bytes {
                return Err(too_big("bytes"));
            }
            plan.add(i, &path, kind);
        }
    }

    // The image's own copies of the extra files are left out.
    for extra in extras.iter().filter(|e| e.file.is_some()) {
        if plan
            .paths
            .get(extra.path)
            .is_some_and(|(_, k)| *k != Kind::Dir)
        {
            plan.paths.remove(extra.path);
        }
    }

    let mut result = Flattened::default();
    let mut builder = tar::Builder::new(out);
    let mut links: Vec<PendingLink> = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let mut archive = Archive::new(open(layer)?);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let Some(path) = clean(&entry.path()?) else {
                continue;
            };
            let t = entry.header().entry_type();
            if kind_of(t).is_none() {
                // Named in the report, unless an extension header.
                if !matches!(
                    t,
                    EntryType::XGlobalHeader
                        | EntryType::XHeader
                        | EntryType::GNULongName
                        | EntryType::GNULongLink
                ) {
                    result.skipped.push(path);
                }
                continue;
            }
            if split(&path).1.starts_with(WHITEOUT) || plan.paths.get(&path).map(|p| p.0) != Some(i)
            {
                continue;
            }
            if !plan.reachable(&path) {
                result.skipped.push(path);
                continue;
            }
            let pax = pax_records(&mut entry)?;
            let size = if t == EntryType::Directory
                || t == EntryType::Symlink
                || t == EntryType::Link
                || t == EntryType::Fifo
            {
                0
            } else {
                entry.size()
            };
            let mut header = fresh(entry.header(), t, size);
            if t == EntryType::Link {
                let target = entry.link_name()?.as_deref().and_then(clean);
                match target {
                    Some(target) => links.push((header, pax, path, target)),
                    None => result.skipped.push(path),
                }
                continue;
            }
            write_pax(&mut builder, &pax)?;
            if t == EntryType::Symlink {
                let target = entry.link_name()?.unwrap_or_default().into_owned();
                builder.append_link(&mut header, &path, target)?;
            } else {
                builder.append_data(&mut header, &path, &mut entry)?;
            }
            result.entries += 1;
        }
    }
    // Hard links last, to targets that are regular files in the stream.
    for (mut header, pax, path, target) in links {
        let ok = plan
            .paths
            .get(&target)
            .is_some_and(|(_, k)| *k == Kind::File)
            && plan.reachable(&target);
        if !ok {
            result.skipped.push(path);
            continue;
        }
        write_pax(&mut builder, &pax)?;
        header.set_size(0);
        builder.append_link(&mut header, &path, &target)?;
        result.entries += 1;
    }
    for extra in extras {
        if plan.paths.contains_key(extra.path) || !plan.reachable(extra.path) {
            continue;
        }
        let mut header = Header::new_gnu();
        header.set_mode(extra.mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        match &extra.file {
            None => {
                header.set_entry_type(EntryType::Directory);
                header.set_size(0);
                builder.append_data(&mut header, extra.path, io::empty())?;
                plan.paths
                    .insert(extra.path.to_owned(), (layers.len(), Kind::Dir));
            }
            Some(content) => {
                header.set_size(content.len() as u64);
                builder.append_data(&mut header, extra.path, content.as_slice())?;
            }
        }
    }
    builder.finish()?;
    Ok(result)
}

/// A new header for a copied entry: its type, permission bits, owner and
/// time, nothing else of what the layer said.
fn fresh(from: &Header, t: EntryType, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(if t == EntryType::Continuous {
        EntryType::Regular
    } else {
        t
    });
    // An empty field (some writers leave them so) reads as zero.
    h.set_mode(from.mode().unwrap_or(0o644) & 0o7777);
    h.set_uid(from.uid().unwrap_or(0));
    h.set_gid(from.gid().unwrap_or(0));
    h.set_mtime(from.mtime().unwrap_or(0));
    h.set_size(size);
    h
}

/// The PAX records an entry may carry over: numeric owner, times and
/// extended attributes (names and sizes are the copy's own).
fn pax_records<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Vec<(String, Vec<u8>)>> {
    let Some(exts) = entry.pax_extensions()? else {
        return Ok(Vec::new());
    };
    let mut records = Vec::new();
    for ext in exts {
        let ext = ext?;
        let Ok(key) = ext.key() else { continue };
        let kept = matches!(key, "uid" | "gid" | "mtime" | "atime" | "ctime")
            || key.starts_with("SCHILY.xattr.");
        if !kept {
            continue;
        }
        records.push((key.to_owned(), ext.value_bytes().to_vec()));
    }
    Ok(records)
}

fn write_pax<W: Write>(
    builder: &mut tar::Builder<W>,
    records: &[(String, Vec<u8>)],
) -> io::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let mut data = Vec::new();
    for (key, value) in records {
        // "LEN key=value\n", LEN counting its own digits.
        let body = key.len() + value.len() + 3;
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        data.extend_from_slice(format!("{len} {key}=").as_bytes());
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    let mut header = Header::new_ustar();
    header.set_entry_type(EntryType::XHeader);
    header.set_path("PaxHeaders/entry")?;
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_cksum();
    builder.append(&header, data.as_slice())
}

#[cfg(test)]
mod tests;
