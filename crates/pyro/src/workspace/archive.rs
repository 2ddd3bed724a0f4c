//! Archives that cross between host and guest: seeds and `sync push`
//! sources (a directory, `.tar`, `.tar.gz` or `.tgz`) are validated on the
//! host and re-emitted as a plain tar before anything is written anywhere;
//! exports are unpacked on the host without ever leaving their target.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Where a source came from, as the reference names it.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceMode {
    Empty,
    Directory,
    TarArchive,
}

impl SourceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceMode::Empty => "empty",
            SourceMode::Directory => "directory",
            SourceMode::TarArchive => "tar_archive",
        }
    }
}

/// What a validated source holds.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub entry_count: u64,
    pub bytes: u64,
}

fn bad(source: &Path, why: impl std::fmt::Display) -> Error {
    Error::invalid(format!("refusing {}: {why}", source.display()))
}

/// Normalizes an archive member name: relative, no `..`, no empty result.
fn member_path(source: &Path, name: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(bad(source, format!("{}: absolute path", name.display())))
            }
            Component::ParentDir => {
                return Err(bad(source, format!("{}: `..` in path", name.display())))
            }
        }
    }
    Ok(out)
}

/// A symlink at `at` pointing to `target` must be relative and stay inside.
fn check_symlink(source: &Path, at: &Path, target: &Path) -> Result<()> {
    if target.is_absolute() {
        return Err(bad(
            source,
            format!(
                "{} -> {}: symlinks must be relative",
                at.display(),
                target.display()
            ),
        ));
    }
    let mut depth: i64 = at.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return Err(bad(
                source,
                format!(
                    "{} -> {}: symlink leads outside",
                    at.display(),
                    target.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Writes a validated plain tar of `source` into `out`.
pub fn build(source: &Path, out: impl Write) -> Result<(SourceMode, Summary)> {
    let meta = fs::metadata(source).map_err(|e| bad(source, e))?;
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut summary = Summary::default();
    let mode = if meta.is_dir() {
        add_dir(&mut builder, source, source, Path::new(""), &mut summary)?;
        SourceMode::Directory
    } else if meta.is_file() {
        let name = source.to_string_lossy();
        let file = fs::File::open(source).ctx(|| format!("open {}", source.display()))?;
        let reader: Box<dyn Read> = if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Box::new(flate2::read::GzDecoder::new(file))
        } else if name.ends_with(".tar") {
            Box::new(file)
        } else {
            return Err(bad(source, "not a directory, .tar, .tar.gz or .tgz"));
        };
        copy_archive(source, reader, &mut builder, &mut summary)?;
        SourceMode::TarArchive
    } else {
        return Err(bad(source, "not a directory or a regular file"));
    };
    builder.finish().ctx(|| "write archive".into())?;
    Ok((mode, summary))
}

fn add_dir<W: Write>(
    b: &mut tar::Builder<W>,
    source: &Path,
    dir: &Path,
    rel: &Path,
    summary: &mut Summary,
) -> Result<()> {
    let mut children: Vec<_> = fs::read_dir(dir)
        .ctx(|| format!("read {}", dir.display()))?
        .flatten()
        .collect();
    children.sort_by_key(|e| e.file_name());
    for child in children {
        let path = child.path();
        let name = rel.join(child.file_name());
        let m = fs::symlink_metadata(&path).ctx(|| format!("stat {}", path.display()))?;
        let t = m.file_type();
        if t.is_symlink() {
            let target = fs::read_link(&path).ctx(|| format!("readlink {}", path.display()))?;
            check_symlink(source, &name, &target)?;
        } else if !(t.is_dir() || t.is_file()) {
            return Err(bad(
                source,
                format!(
                    "{}: only files, directories and symlinks are accepted",
                    name.display()
                ),
            ));
        }
        b.append_path_with_name(&path, &name)
            .ctx(|| format!("archive {}", path.display()))?;
        summary.entry_count += 1;
        if t.is_file() {
            summary.bytes += m.len();
        }
        if t.is_dir() {
            add_dir(b, source, &path, &name, summary)?;
        }
    }
    Ok(())
}

fn copy_archive<W: Write>(
    source: &Path,
    input: impl Read,
    b: &mut tar::Builder<W>,
    summary: &mut Summary,
) -> Result<()> {
    let mut archive = tar::Archive::new(input);
    let mut symlinks: BTreeSet<PathBuf> = BTreeSet::new();
    for entry in archive.entries().map_err(|e| bad(source, e))? {
        let mut entry = entry.map_err(|e| bad(source, e))?;
        let raw = entry.path().map_err(|e| bad(source, e))?.into_owned();
        let path = member_path(source, &raw)?;
        if path.as_os_str().is_empty() {
            continue; // "./"
        }
        // Nothing may be written through a symlink the archive made.
        for ancestor in path.ancestors().skip(1) {
            if symlinks.contains(ancestor) {
                return Err(bad(
                    source,
                    format!(
                        "{}: goes through the symlink {}",
                        path.display(),
                        ancestor.display()
                    ),
                ));
            }
        }
        let kind = entry.header().entry_type();
        let mut header = entry.header().clone();
        if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(|e| bad(source, e))?
                .ok_or_else(|| {
                    bad(
                        source,
                        format!("{}: symlink without target", path.display()),
                    )
                })?
                .into_owned();
            check_symlink(source, &path, &target)?;
            symlinks.insert(path.clone());
            b.append_link(&mut header, &path, &target)
                .ctx(|| "write archive".into())?;
        } else if kind.is_dir() || kind.is_file() {
            let size = header.size().unwrap_or(0);
            b.append_data(&mut header, &path, &mut entry)
                .ctx(|| "write archive".into())?;
            summary.bytes += if kind.is_file() { size } else { 0 };
        } else if kind.is_hard_link() {
            return Err(bad(
                source,
                format!("{}: hard links are not accepted", path.display()),
            ));
        } else if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            continue;
        } else {
            return Err(bad(
                source,
                format!(
                    "{}: device nodes, fifos and other special files are not accepted",
                    path.display()
                ),
            ));
        }
        summary.entry_count += 1;
    }
    Ok(())
}

/// Unpacks an export archive at `output` (a file, directory or symlink,
/// as the archive's single artifact says). The archive is unpacked into a
/// fresh directory beside `output` and moved into place, so a failure
/// leaves nothing behind. Modes lose setuid, setgid, sticky and
/// group/world write bits; symlinks that are absolute or lead out of the
/// export, and anything but files, directories and symlinks, are not made:
/// they are returned, described, instead.
pub fn unpack_export(
    archive: impl Read,
    artifact: pyro_protocol::ArtifactType,
    output: &Path,
    force: bool,
) -> Result<Vec<String>> {
    if fs::symlink_metadata(output).is_ok() && !force {
        return Err(Error::conflict_with(
            format!("{} already exists", output.display()),
            crate::error::Remedy::Overwrite,
        ));
    }
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(Error::invalid(format!(
            "{}: no such directory",
            parent.display()
        )));
    }
    let stage = parent.join(format!(".pyro-export-{}", crate::host::random_id(4)));
    fs::create_dir(&stage).ctx(|| format!("create {}", stage.display()))?;
    let mut skipped = Vec::new();
    let result = (|| -> Result<()> {
        let mut a = tar::Archive::new(archive);
        // Modes as `umask 022` leaves them, and never setuid, setgid or
        // sticky: the guest chose these bits.
        a.set_preserve_permissions(true);
        a.set_mask(0o7022);
        a.set_preserve_ownerships(false);
        a.set_unpack_xattrs(false);
        let export = Path::new("export");
        for entry in a.entries().ctx(|| "read export".into())? {
            let mut entry = entry.ctx(|| "read export".into())?;
            let raw = entry.path().ctx(|| "read export".into())?.into_owned();
            let name = member_path(export, &raw)
                .map_err(|_| Error::Guest(format!("export entry {} escapes", raw.display())))?;
            let kind = entry.header().entry_type();
            if kind.is_symlink() {
                let target = entry
                    .link_name()
                    .ctx(|| "read export".into())?
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                // A link that is absolute or leads out of the export is
                // never made on the host; it is reported instead.
                if check_symlink(export, &name, &target).is_err() {
                    skipped.push(format!("{} -> {}", name.display(), target.display()));
                    continue;
                }
            } else if !(kind.is_file() || kind.is_dir()) {
                skipped.push(format!(
                    "{} (not a file, directory or symlink)",
                    name.display()
                ));
                continue;
            }
            if !entry
                .unpack_in(&stage)
                .ctx(|| format!("unpack {}", name.display()))?
            {
                return Err(Error::Guest(format!(
                    "export entry {} escapes",
                    name.display()
                )));
            }
        }
        let produced = match artifact {
            pyro_protocol::ArtifactType::Directory => stage.clone(),
            _ => {
                let mut entries = fs::read_dir(&stage).ctx(|| "read stage".into())?.flatten();
                let one = entries
                    .next()
                    .ok_or_else(|| Error::Guest("the export was empty".into()))?;
                one.path()
            }
        };
        if fs::symlink_metadata(output).is_ok() {
            let m = fs::symlink_metadata(output).unwrap();
            if m.is_dir() {
                fs::remove_dir_all(output)
            } else {
                fs::remove_file(output)
            }
            .ctx(|| format!("replace {}", output.display()))?;
        }
        fs::rename(&produced, output).ctx(|| format!("write {}", output.display()))
    })();
    let _ = fs::remove_dir_all(&stage);
    result.map(|()| skipped)
}

/// The artifacts of a tar archive, by path: what diff compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Artifact {
    File(Content),
    Directory,
    Symlink(PathBuf),
}

/// A file's content as diff sees it: its size and digest, and its bytes
/// when they are few enough to show as text.
#[derive(Debug, Clone)]
pub struct Content {
    pub size: u64,
    digest: [u8; 32],
    pub bytes: Option<Vec<u8>>,
}

impl PartialEq for Content {
    fn eq(&self, other: &Content) -> bool {
        self.size == other.size && self.digest == other.digest
    }
}

impl Eq for Content {}

/// Files up to this size keep their bytes for text patches.
pub const TEXT_LIMIT: u64 = 1 << 20;
/// And no more than this in all, per tree.
const TREE_TEXT_BUDGET: u64 = 64 << 20;

impl Content {
    #[cfg(test)]
    pub fn of(bytes: Vec<u8>) -> Content {
        use sha2::{Digest, Sha256};
        Content {
            size: bytes.len() as u64,
            digest: Sha256::digest(&bytes).into(),
            bytes: Some(bytes),
        }
    }

    /// Reads `r` through, keeping its bytes if `keep`.
    fn read(mut r: impl Read, keep: bool) -> io::Result<Content> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut kept = Vec::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            if keep {
                kept.extend_from_slice(&buf[..n]);
            }
            size += n as u64;
        }
        Ok(Content {
            size,
            digest: h.finalize().into(),
            bytes: keep.then_some(kept),
        })
    }
}

/// The artifacts of an archive. Files keep their bytes only while they and
/// the tree's total stay small (see [`Content`]); memory stays bounded
/// whatever the archive holds.
pub fn read_tree(archive: impl Read) -> io::Result<std::collections::BTreeMap<PathBuf, Artifact>> {
    let mut out = std::collections::BTreeMap::new();
    let mut kept = 0u64;
    let mut a = tar::Archive::new(archive);
    for entry in a.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.components().collect::<PathBuf>();
        if path.as_os_str().is_empty() {
            continue;
        }
        let kind = entry.header().entry_type();
        let artifact = if kind.is_dir() {
            Artifact::Directory
        } else if kind.is_symlink() {
            Artifact::Symlink(
                entry
                    .link_name()?
                    .map(|l| l.into_owned())
                    .unwrap_or_default(),
            )
        } else if kind.is_file() {
            let size = entry.header().size()?;
            let keep = size <= TEXT_LIMIT && kept + size <= TREE_TEXT_BUDGET;
            if keep {
                kept += size;
            }
            Artifact::File(Content::read(&mut entry, keep)?)
        } else {
            continue;
        };
        out.insert(path, artifact);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> tempfile::NamedTempFile {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let bytes = b.into_inner().unwrap();
        let f = tempfile::Builder::new().suffix(".tar").tempfile().unwrap();
        fs::write(f.path(), bytes).unwrap();
        f
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h
    }

    /// Writes a raw member name, bypassing the tar crate's own checks.
    fn raw_name(h: &mut tar::Header, name: &str) {
        let bytes = &mut h.as_old_mut().name;
        bytes.fill(0);
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
    }

    fn check_refused(f: &tempfile::NamedTempFile, why: &str) {
        let err = build(f.path(), Vec::new()).unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    }

    #[test]
    fn hostile_archives_are_refused() {
        let f = tar_with(|b| {
            let mut h = header(tar::EntryType::Regular, 1);
            raw_name(&mut h, "../x");
            b.append(&h, &b"x"[..]).unwrap();
        });
        check_refused(&f, "`..` in path");
        let f = tar_with(|b| {
            let mut h = header(tar::EntryType::Regular, 1);
            raw_name(&mut h, "/etc/x");
            b.append(&h, &b"x"[..]).unwrap();
        });
        check_refused(&f, "absolute path");
        let f = tar_with(|b| {
            let mut h = header(tar::EntryType::Char, 0);
            raw_name(&mut h, "null");
            b.append(&h, &b""[..]).unwrap();
        });
        check_refused(&f, "device nodes");
        let f = tar_with(|b| {
            let mut h = header(tar::EntryType::Symlink, 0);
            b.append_link(&mut h, "etc", "/etc").unwrap();
        });
        check_refused(&f, "symlinks must be relative");
        let f = tar_with(|b| {
            let mut h = header(tar::EntryType::Symlink, 0);
            b.append_link(&mut h, "a/up", "../../x").unwrap();
        });
        check_refused(&f, "symlink leads outside");
        let f = tar_with(|b| {
            let mut h = header(tar::EntryType::Symlink, 0);
            b.append_link(&mut h, "d", "sub").unwrap();
            let mut h = header(tar::EntryType::Regular, 1);
            b.append_data(&mut h, "d/x", &b"x"[..]).unwrap();
        });
        check_refused(&f, "goes through the symlink");
        let f = tar_with(|b| {
            let mut h = header(tar::EntryType::Link, 0);
            b.append_link(&mut h, "hard", "other").unwrap();
        });
        check_refused(&f, "hard links");
    }

    #[test]
    fn a_directory_becomes_a_sorted_archive() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/b.txt"), "bb").unwrap();
        fs::write(dir.path().join("a.txt"), "a").unwrap();
        std::os::unix::fs::symlink("sub/b.txt", dir.path().join("link")).unwrap();
        let mut out = Vec::new();
        let (mode, summary) = build(dir.path(), &mut out).unwrap();
        assert_eq!(mode, SourceMode::Directory);
        assert_eq!(summary.entry_count, 4);
        assert_eq!(summary.bytes, 3);
        let tree = read_tree(&out[..]).unwrap();
        let names: Vec<_> = tree.keys().map(|p| p.display().to_string()).collect();
        assert_eq!(names, ["a.txt", "link", "sub", "sub/b.txt"]);
        assert_eq!(
            tree[Path::new("link")],
            Artifact::Symlink("sub/b.txt".into())
        );

        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("escape")).unwrap();
        assert!(build(dir.path(), Vec::new()).is_err());
    }

    #[test]
    fn exports_plant_no_traps_on_the_host() {
        use std::os::unix::fs::PermissionsExt;
        let tar = tar_with(|b| {
            let mut dir = header(tar::EntryType::Directory, 0);
            dir.set_mode(0o777);
            b.append_data(&mut dir, "out", &[][..]).unwrap();
            let mut suid = header(tar::EntryType::Regular, 2);
            suid.set_mode(0o4777);
            b.append_data(&mut suid, "out/tool", &b"hi"[..]).unwrap();
            for (name, target) in [
                ("out/passwd", "/etc/passwd"),
                ("out/up", "../../x"),
                ("out/ok", "tool"),
            ] {
                let mut l = header(tar::EntryType::Symlink, 0);
                l.set_link_name(target).unwrap();
                b.append_data(&mut l, name, &[][..]).unwrap();
            }
            let mut fifo = header(tar::EntryType::Fifo, 0);
            b.append_data(&mut fifo, "out/pipe", &[][..]).unwrap();
        });
        let dest = tempfile::tempdir().unwrap();
        let output = dest.path().join("exported");
        let skipped = unpack_export(
            fs::File::open(tar.path()).unwrap(),
            pyro_protocol::ArtifactType::Directory,
            &output,
            false,
        )
        .unwrap();
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped.iter().any(|s| s.contains("/etc/passwd")));
        let mode = |p: &str| {
            fs::symlink_metadata(output.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("out/tool"), 0o755);
        assert_eq!(mode("out"), 0o755);
        assert!(output.join("out/ok").is_symlink());
        for gone in ["out/passwd", "out/up", "out/pipe"] {
            assert!(fs::symlink_metadata(output.join(gone)).is_err(), "{gone}");
        }
    }
}
