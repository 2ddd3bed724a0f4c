//! The catalog, and what an install of one of its entries looks like on
//! disk: its directory, manifest and verified image.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Entity, Error, Remedy, Result};
use crate::host;
use crate::paths::Paths;

pub const CATALOG_VERSION: &str = "1.0.0";
pub(crate) const MANIFEST_VERSION: u32 = 1;
pub(crate) const SUITE: &str = "bookworm";
/// Free space left in every image beyond its contents. The file is sparse:
/// only what the filesystem uses takes disk space.
pub(crate) const IMAGE_HEADROOM_MIB: u64 = 1024;

/// One entry of the catalog.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct CatalogEntry {
    pub name: &'static str,
    pub version: &'static str,
    pub description: &'static str,
    pub distribution: &'static str,
    /// Packages installed on top of Debian's `minbase` variant.
    pub packages: &'static [&'static str],
}

pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        name: "debian:12",
        version: "1.0.0",
        description: "Debian 12 (bookworm) with git and CA certificates",
        distribution: "debian-12",
        packages: &["git", "ca-certificates"],
    },
    CatalogEntry {
        name: "debian:12-base",
        version: "1.0.0",
        description: "Debian 12 (bookworm) minimal: a shell and core tools",
        distribution: "debian-12",
        packages: &[],
    },
    CatalogEntry {
        name: "debian:12-build",
        version: "1.0.0",
        description:
            "Debian 12 (bookworm) for building software: git, gcc, make, cmake, python3, pkg-config",
        distribution: "debian-12",
        packages: &[
            "git",
            "ca-certificates",
            "gcc",
            "g++",
            "make",
            "cmake",
            "python3",
            "pkg-config",
            "libc6-dev",
        ],
    },
];

pub fn lookup(name: &str) -> Result<&'static CatalogEntry> {
    CATALOG
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| Error::not_found(Entity::Environment, name))
}

/// What an install records about itself.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvironmentManifest {
    pub format_version: u32,
    pub name: String,
    pub version: String,
    pub catalog_version: String,
    pub suite: String,
    pub packages: Vec<String>,
    /// `package=version` of everything installed in the image.
    pub installed_packages: Vec<String>,
    pub image_size_bytes: u64,
    pub image_sha256: String,
    pub built_at_unix_ms: u64,
}

/// An installed catalog environment.
#[derive(Debug, Clone)]
pub struct CatalogInstall {
    pub rootfs: PathBuf,
    pub manifest: EnvironmentManifest,
}

pub(crate) fn slug(entry: &CatalogEntry) -> String {
    format!("{}-{}", entry.name.replace(':', "_"), entry.version)
}

pub fn install_dir(paths: &Paths, entry: &CatalogEntry) -> PathBuf {
    paths.environment_cache.join(slug(entry))
}

/// The install, if there is a complete one.
pub fn installed(paths: &Paths, entry: &CatalogEntry) -> Option<CatalogInstall> {
    let dir = install_dir(paths, entry);
    let manifest: EnvironmentManifest =
        serde_json::from_slice(&fs::read(dir.join("environment.json")).ok()?).ok()?;
    if manifest.format_version != MANIFEST_VERSION {
        return None;
    }
    let rootfs = dir.join("rootfs.ext4");
    let size = fs::metadata(&rootfs).ok()?.len();
    (size == manifest.image_size_bytes).then_some(CatalogInstall { rootfs, manifest })
}

/// What identifies the image file as last verified: any write to it, or a
/// `touch`, changes its ctime, which no user can set back.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    inode: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).ok()?;
    Some(Stamp {
        size: m.len(),
        inode: m.ino(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
    })
}

fn stamp_path(dir: &Path) -> PathBuf {
    dir.join("verified.json")
}

pub(crate) fn write_stamp(dir: &Path, rootfs: &Path) -> Result<()> {
    let s = stamp(rootfs).ok_or_else(|| Error::Environment {
        name: dir.display().to_string(),
        detail: "image vanished".into(),
        remedy: None,
    })?;
    host::write_atomic(&stamp_path(dir), &serde_json::to_vec(&s).unwrap())
}

/// Checks an install's image against its manifest. The full sha256 is
/// computed only when the file changed since it was last verified; an
/// unchanged file costs one `stat`.
pub fn verify(install: &CatalogInstall, dir: &Path) -> Result<()> {
    verify_image(
        &install.manifest.name,
        &install.rootfs,
        &install.manifest.image_sha256,
        dir,
    )
}

/// Checks an image file against the sha256 its install recorded, as
/// `verify` does, for any kind of environment.
pub(crate) fn verify_image(name: &str, rootfs: &Path, sha256: &str, dir: &Path) -> Result<()> {
    let recorded: Option<Stamp> = fs::read(stamp_path(dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if recorded.is_some() && recorded == stamp(rootfs) {
        return Ok(());
    }
    let actual = host::sha256_file(rootfs)?;
    if actual != sha256 {
        return Err(Error::Environment {
            name: name.into(),
            detail: format!(
                "the image {} is corrupted (sha256 {actual}, expected {sha256})",
                rootfs.display(),
            ),
            remedy: Some(Remedy::PullEnvironment {
                environment: name.into(),
            }),
        });
    }
    write_stamp(dir, rootfs)
}

pub(crate) fn lock_path(paths: &Paths, entry: &CatalogEntry) -> PathBuf {
    paths
        .environment_cache
        .join(format!(".{}.lock", slug(entry)))
}

/// `.partial-<slug>-<random>` directories, with their slug.
pub(crate) fn partials(paths: &Paths) -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir(&paths.environment_cache) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix(".partial-")?;
            let (slug, _random) = rest.rsplit_once('-')?;
            Some((slug.to_string(), e.path()))
        })
        .collect()
}

/// The image sha256 of the installed catalog environment `name`, if it
/// is.
pub(crate) fn catalog_sha256(paths: &Paths, name: &str) -> Option<String> {
    let entry = CATALOG.iter().find(|e| e.name == name)?;
    installed(paths, entry).map(|i| i.manifest.image_sha256)
}
