//! The environment catalog, container images, and the installed images.
//!
//! A catalog environment is a Debian root filesystem built locally with
//! `mmdebstrap` from Debian's packages (or pulled as an artifact from
//! `PYRO_ENVIRONMENT_REGISTRY`, `publish`) and turned into a sparse ext4
//! image with `mkfs.ext4 -d`. Any other environment name that reads as an
//! image reference is a container image (`oci`). Installs are built in a
//! `.partial-*` directory under a lock and renamed into place, so a killed
//! build never looks installed and two concurrent pulls end with one
//! install.

mod build;
mod catalog;
pub mod oci;
mod publish;
pub(crate) mod report;
mod transfer;

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::host::{self, FileLock};
use crate::paths::Paths;
use crate::progress::Progress;

use build::build;
pub use catalog::{
    install_dir, installed, lookup, verify, CatalogEntry, CatalogInstall, EnvironmentManifest,
    CATALOG, CATALOG_VERSION,
};
use catalog::{lock_path, partials, slug};
pub use publish::{publish, PublishReport};
pub use report::{PruneReport, Pruned};
pub use transfer::{export, import, ExportReport};

/// An environment ready to boot: a catalog install or an image's.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The name it was asked for (a catalog name, or a canonical image
    /// reference).
    pub name: String,
    pub rootfs: PathBuf,
    pub image_sha256: String,
    /// The image's working directory, for one-shot commands.
    pub working_dir: Option<String>,
}

impl Installed {
    fn catalog(i: CatalogInstall) -> Installed {
        Installed {
            name: i.manifest.name,
            rootfs: i.rootfs,
            image_sha256: i.manifest.image_sha256,
            working_dir: None,
        }
    }

    fn image(dir: &Path, r: oci::ImageRecord, name: String) -> Installed {
        Installed {
            name,
            rootfs: oci::image_rootfs(dir),
            image_sha256: r.image_sha256,
            working_dir: r.defaults.working_dir,
        }
    }
}

/// What an environment name means.
pub enum Named {
    Catalog(&'static CatalogEntry),
    /// An image reference, in canonical form.
    Image(String),
}

/// Resolves a name: the catalog's own names first, then an image installed
/// under that name (imported or pulled), then any image reference.
pub fn resolve(paths: &Paths, name: &str) -> Result<Named> {
    if let Ok(entry) = lookup(name) {
        return Ok(Named::Catalog(entry));
    }
    if let Ok(canonical) = oci::canonical(name) {
        if oci::is_reference(name) || oci::installed(paths, name).is_some() {
            return Ok(Named::Image(canonical));
        }
    }
    Err(Error::not_found(crate::error::Entity::Environment, name))
}

/// The canonical name of `name` (as records and templates keep it).
pub fn canonical_name(paths: &Paths, name: &str) -> Result<String> {
    Ok(match resolve(paths, name)? {
        Named::Catalog(e) => e.name.to_string(),
        Named::Image(r) => r,
    })
}

/// Returns the verified install of any environment, installing it first
/// if it is missing (building or pulling a catalog environment, pulling an
/// image from its registry).
pub fn ensure_named(paths: &Paths, name: &str, progress: &dyn Progress) -> Result<Installed> {
    match resolve(paths, name)? {
        Named::Catalog(entry) => ensure(paths, entry, false, progress),
        Named::Image(reference) => {
            let (dir, record) = match oci::installed(paths, &reference) {
                Some(found) => found,
                None => oci::pull(paths, &reference, &[], progress)?,
            };
            catalog::verify_image(
                &reference,
                &oci::image_rootfs(&dir),
                &record.image_sha256,
                &dir,
            )?;
            Ok(Installed::image(&dir, record, reference))
        }
    }
}

/// The image sha256 of the installed environment `name`, if it is.
pub fn installed_sha256(paths: &Paths, name: &str) -> Option<String> {
    catalog::catalog_sha256(paths, name)
        .or_else(|| oci::installed(paths, name).map(|f| f.1.image_sha256))
}

/// Returns the verified install, building it first if it is missing. A
/// corrupted install is an error, unless `repair` is set: then it is
/// rebuilt.
pub fn ensure(
    paths: &Paths,
    entry: &CatalogEntry,
    repair: bool,
    progress: &dyn Progress,
) -> Result<Installed> {
    ensure_catalog(paths, entry, repair, progress).map(Installed::catalog)
}

fn ensure_catalog(
    paths: &Paths,
    entry: &CatalogEntry,
    repair: bool,
    progress: &dyn Progress,
) -> Result<CatalogInstall> {
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
    match crate::registry::environment_registry() {
        Some(registry) => {
            let partial = paths.environment_cache.join(format!(
                ".partial-{}-{}",
                slug(entry),
                host::random_id(4)
            ));
            fs::create_dir_all(&partial).ctx(|| format!("create {}", partial.display()))?;
            let reference = format!("{registry}/{}", entry.name);
            let r = publish::pull_artifact(paths, entry, &reference, &partial, progress);
            if r.is_err() {
                let _ = host::remove_tree(&partial);
            }
            r?
        }
        None => build(paths, entry, progress)?,
    }
    installed(paths, entry).ok_or_else(|| Error::Environment {
        name: entry.name.into(),
        detail: "the build finished but left no usable install".into(),
        remedy: None,
    })
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
        if (name.ends_with(".lock") && name.starts_with('.')) || name == "oci" {
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
