//! The environment catalog and the installed images.
//!
//! An environment is a Debian root filesystem built locally with
//! `mmdebstrap` from Debian's packages and turned into a sparse ext4 image
//! with `mkfs.ext4 -d`. Installs are built in a `.partial-*` directory under
//! a per-environment lock and renamed into place, so a killed build never
//! looks installed and two concurrent pulls end with one install.

mod build;
mod catalog;
mod transfer;

use std::fs;
use std::path::PathBuf;

use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::host::{self, FileLock};
use crate::paths::Paths;
use crate::progress::Progress;

use build::build;
pub use catalog::{
    install_dir, installed, installed_sha256, lookup, verify, CatalogEntry, EnvironmentManifest,
    Installed, CATALOG, CATALOG_VERSION,
};
use catalog::{lock_path, partials, slug};
pub use transfer::{export, import, ExportReport};

/// Returns the verified install, building it first if it is missing. A
/// corrupted install is an error, unless `repair` is set: then it is
/// rebuilt.
pub fn ensure(
    paths: &Paths,
    entry: &CatalogEntry,
    repair: bool,
    progress: &dyn Progress,
) -> Result<Installed> {
    let dir = install_dir(paths, entry);
    if let Some(i) = installed(paths, entry) {
        match verify(&i, &dir) {
            Ok(()) => return Ok(i),
            Err(e) if !repair => return Err(e),
            Err(_) => {}
        }
    }
    fs::create_dir_all(&paths.environment_cache)
        .ctx(|| format!("create {}", paths.environment_cache.display()))?;
    let _lock = FileLock::acquire(&lock_path(paths, entry))?;
    if let Some(i) = installed(paths, entry) {
        match verify(&i, &dir) {
            Ok(()) => return Ok(i),
            Err(e) if !repair => return Err(e),
            Err(_) => progress.phase("pull", &format!("phase=repair environment={}", entry.name)),
        }
    }
    // Holding the lock, any partial build of this environment is a dead
    // one's leftover.
    for partial in partials(paths)
        .into_iter()
        .filter(|(s, _)| *s == slug(entry))
    {
        host::remove_tree(&partial.1)?;
    }
    build(paths, entry, progress)?;
    installed(paths, entry).ok_or_else(|| Error::Environment {
        name: entry.name.into(),
        detail: "the build finished but left no usable install".into(),
        remedy: None,
    })
}

/// One directory `prune` removed.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct Pruned {
    pub path: String,
    pub reason: String,
    pub bytes: u64,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    pub deleted: Vec<Pruned>,
    pub count: usize,
    pub freed_bytes: u64,
}

impl PruneReport {
    /// Removes `path` (a file or a tree) and records it.
    pub(crate) fn remove(&mut self, path: PathBuf, reason: &str) -> Result<()> {
        let bytes = host::disk_usage(&path);
        host::remove_tree(&path)?;
        self.count += 1;
        self.freed_bytes += bytes;
        self.deleted.push(Pruned {
            path: path.display().to_string(),
            reason: reason.to_string(),
            bytes,
        });
        Ok(())
    }
}

/// Removes partial builds nobody is running, incomplete installs and
/// directories that belong to no catalog entry. (Fast-start templates are
/// pruned by `vmm::templates::prune`, into the same report.)
pub fn prune(paths: &Paths) -> Result<PruneReport> {
    let mut report = PruneReport::default();
    let entries = fs::read_dir(&paths.environment_cache)
        .into_iter()
        .flatten()
        .flatten();
    let slugs: Vec<String> = CATALOG.iter().map(slug).collect();
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.ends_with(".lock") && name.starts_with('.') {
            continue;
        }
        if let Some(rest) = name.strip_prefix(".partial-") {
            let slug = rest.rsplit_once('-').map(|(s, _)| s).unwrap_or(rest);
            // A partial whose environment's lock is free belongs to no
            // running build.
            let lock = paths.environment_cache.join(format!(".{slug}.lock"));
            if let Some(_held) = FileLock::try_acquire(&lock)? {
                report.remove(path, "partial build")?;
            }
            continue;
        }
        match CATALOG.iter().zip(&slugs).find(|(_, s)| **s == name) {
            Some((entry, _)) => {
                if installed(paths, entry).is_none() {
                    if let Some(_held) = FileLock::try_acquire(&lock_path(paths, entry))? {
                        report.remove(path, "incomplete install")?;
                    }
                }
            }
            None => report.remove(path, "not in the catalog")?,
        }
    }
    Ok(report)
}
