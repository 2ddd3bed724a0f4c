//! The environment catalog and the installed images.
//!
//! An environment is a Debian root filesystem built locally with
//! `mmdebstrap` from Debian's packages and turned into a sparse ext4 image
//! with `mkfs.ext4 -d`. Installs are built in a `.partial-*` directory under
//! a per-environment lock and renamed into place, so a killed build never
//! looks installed and two concurrent pulls end with one install.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::host::{self, FileLock};
use crate::paths::Paths;
use crate::progress::Progress;

pub const CATALOG_VERSION: &str = "1.0.0";
const MANIFEST_VERSION: u32 = 1;
const SUITE: &str = "bookworm";
/// Free space left in every image beyond its contents. The file is sparse:
/// only what the filesystem uses takes disk space.
const IMAGE_HEADROOM_MIB: u64 = 1024;

/// One entry of the catalog.
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
        .ok_or_else(|| Error::UnknownEnvironment(name.to_string()))
}

/// What an install records about itself.
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

/// An installed environment, ready to boot.
#[derive(Debug, Clone)]
pub struct Installed {
    pub rootfs: PathBuf,
    pub manifest: EnvironmentManifest,
}

fn slug(entry: &CatalogEntry) -> String {
    format!("{}-{}", entry.name.replace(':', "_"), entry.version)
}

pub fn install_dir(paths: &Paths, entry: &CatalogEntry) -> PathBuf {
    paths.environment_cache.join(slug(entry))
}

/// The install, if there is a complete one.
pub fn installed(paths: &Paths, entry: &CatalogEntry) -> Option<Installed> {
    let dir = install_dir(paths, entry);
    let manifest: EnvironmentManifest =
        serde_json::from_slice(&fs::read(dir.join("environment.json")).ok()?).ok()?;
    if manifest.format_version != MANIFEST_VERSION {
        return None;
    }
    let rootfs = dir.join("rootfs.ext4");
    let size = fs::metadata(&rootfs).ok()?.len();
    (size == manifest.image_size_bytes).then_some(Installed { rootfs, manifest })
}

/// Returns the install, building it first if needed.
pub fn ensure(paths: &Paths, entry: &CatalogEntry, progress: &dyn Progress) -> Result<Installed> {
    if let Some(i) = installed(paths, entry) {
        return Ok(i);
    }
    fs::create_dir_all(&paths.environment_cache)
        .ctx(|| format!("create {}", paths.environment_cache.display()))?;
    let _lock = FileLock::acquire(
        &paths
            .environment_cache
            .join(format!(".{}.lock", slug(entry))),
    )?;
    if let Some(i) = installed(paths, entry) {
        return Ok(i);
    }
    build(paths, entry, progress)?;
    installed(paths, entry).ok_or_else(|| Error::Environment {
        name: entry.name.into(),
        detail: "the build finished but left no usable install".into(),
    })
}

fn build(paths: &Paths, entry: &CatalogEntry, progress: &dyn Progress) -> Result<()> {
    let fail = |detail: String| Error::Environment {
        name: entry.name.into(),
        detail,
    };
    let partial =
        paths
            .environment_cache
            .join(format!(".partial-{}-{}", slug(entry), host::random_id(4)));
    fs::create_dir_all(&partial).ctx(|| format!("create {}", partial.display()))?;
    let result = (|| -> Result<()> {
        let tree = partial.join("tree");
        progress.phase(
            "pull",
            &format!("phase=bootstrap environment={} suite={SUITE}", entry.name),
        );
        let mirror = std::env::var("PYRO_DEBIAN_MIRROR")
            .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
        let security = std::env::var("PYRO_DEBIAN_SECURITY_MIRROR")
            .unwrap_or_else(|_| "http://deb.debian.org/debian-security".into());
        let mut cmd = Command::new("mmdebstrap");
        cmd.args(["--variant=minbase", "--quiet", "--mode=auto"]);
        if !entry.packages.is_empty() {
            cmd.arg(format!("--include={}", entry.packages.join(",")));
        }
        cmd.arg(SUITE)
            .arg(&tree)
            .arg(format!("deb {mirror} {SUITE} main"))
            .arg(format!("deb {mirror} {SUITE}-updates main"))
            .arg(format!("deb {security} {SUITE}-security main"));
        host::tool(&mut cmd).map_err(|e| fail(format!("bootstrap failed: {e}")))?;

        let installed_packages = host::tool(Command::new("chroot").arg(&tree).args([
            "dpkg-query",
            "-W",
            "-f",
            "${Package}=${Version}\\n",
        ]))
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default();
        prepare_tree(&tree)?;

        progress.phase("pull", &format!("phase=image environment={}", entry.name));
        let image = partial.join("rootfs.ext4");
        let used_mib: u64 = host::tool(
            Command::new("du")
                .args(["-s", "-x", "--block-size=1M"])
                .arg(&tree),
        )?
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1024);
        let size_mib = used_mib + used_mib / 4 + IMAGE_HEADROOM_MIB;
        host::tool(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", "pyro-root", "-E", "root_owner=0:0", "-d"])
                .arg(&tree)
                .arg(&image)
                .arg(format!("{size_mib}M")),
        )?;
        fs::remove_dir_all(&tree).ctx(|| "remove build tree".into())?;
        progress.phase("pull", &format!("phase=verify environment={}", entry.name));
        let manifest = EnvironmentManifest {
            format_version: MANIFEST_VERSION,
            name: entry.name.into(),
            version: entry.version.into(),
            catalog_version: CATALOG_VERSION.into(),
            suite: SUITE.into(),
            packages: entry.packages.iter().map(|s| s.to_string()).collect(),
            installed_packages,
            image_size_bytes: fs::metadata(&image).ctx(|| "stat image".into())?.len(),
            image_sha256: host::sha256_file(&image)?,
            built_at_unix_ms: host::now_unix_ms(),
        };
        host::write_atomic(
            &partial.join("environment.json"),
            &serde_json::to_vec_pretty(&manifest).unwrap(),
        )?;
        let dest = install_dir(paths, entry);
        if dest.exists() {
            fs::remove_dir_all(&dest).ctx(|| format!("remove stale {}", dest.display()))?;
        }
        fs::rename(&partial, &dest).ctx(|| format!("install {}", dest.display()))?;
        progress.phase("pull", &format!("phase=ready environment={}", entry.name));
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&partial);
    }
    result
}

/// Adjusts a freshly bootstrapped tree for life as a pyro guest.
fn prepare_tree(tree: &Path) -> Result<()> {
    fs::create_dir_all(tree.join("workspace")).ctx(|| "create /workspace".into())?;
    // apt's cache is rebuilt on first use; leave it out of the image.
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        if let Ok(entries) = fs::read_dir(tree.join(dir)) {
            for e in entries.flatten() {
                if e.path().is_file() {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
    host::write_atomic(&tree.join("etc/hostname"), b"pyro\n")?;
    host::write_atomic(
        &tree.join("etc/hosts"),
        b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )?;
    Ok(())
}
