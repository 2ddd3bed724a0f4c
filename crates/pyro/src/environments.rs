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

use crate::error::{Error, IoContext, Remedy, Result};
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
        .ok_or_else(|| Error::UnknownEnvironment(name.to_string()))
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

fn write_stamp(dir: &Path, rootfs: &Path) -> Result<()> {
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
pub fn verify(install: &Installed, dir: &Path) -> Result<()> {
    let recorded: Option<Stamp> = fs::read(stamp_path(dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if recorded.is_some() && recorded == stamp(&install.rootfs) {
        return Ok(());
    }
    let actual = host::sha256_file(&install.rootfs)?;
    if actual != install.manifest.image_sha256 {
        return Err(Error::Environment {
            name: install.manifest.name.clone(),
            detail: format!(
                "the image {} is corrupted (sha256 {actual}, expected {})",
                install.rootfs.display(),
                install.manifest.image_sha256,
            ),
            remedy: Some(Remedy::PullEnvironment {
                environment: install.manifest.name.clone(),
            }),
        });
    }
    write_stamp(dir, &install.rootfs)
}

fn lock_path(paths: &Paths, entry: &CatalogEntry) -> PathBuf {
    paths
        .environment_cache
        .join(format!(".{}.lock", slug(entry)))
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

/// `.partial-<slug>-<random>` directories, with their slug.
fn partials(paths: &Paths) -> Vec<(String, PathBuf)> {
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

/// The image sha256 of the installed environment `name`, if it is.
pub fn installed_sha256(paths: &Paths, name: &str) -> Option<String> {
    let entry = CATALOG.iter().find(|e| e.name == name)?;
    installed(paths, entry).map(|i| i.manifest.image_sha256)
}

fn build(paths: &Paths, entry: &CatalogEntry, progress: &dyn Progress) -> Result<()> {
    let fail = |detail: String| Error::Environment {
        name: entry.name.into(),
        detail,
        remedy: None,
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
        // As root, mmdebstrap writes the tree directly. Otherwise it runs in
        // a user namespace (unshare mode) and writes a tarball, which is
        // unpacked and turned into an image under one fakeroot session, so
        // the image records root ownership, setuid bits and device nodes.
        let rootless = !host::is_root();
        let tarball = partial.join("rootfs.tar");
        let fakeroot_state = partial.join("fakeroot.state");
        let mut cmd = Command::new("mmdebstrap");
        cmd.args(["--variant=minbase", "--quiet"]);
        cmd.arg(if rootless {
            "--mode=unshare"
        } else {
            "--mode=root"
        });
        if !entry.packages.is_empty() {
            cmd.arg(format!("--include={}", entry.packages.join(",")));
        }
        cmd.arg(SUITE)
            .arg(if rootless { &tarball } else { &tree })
            .arg(format!("deb {mirror} {SUITE} main"))
            .arg(format!("deb {mirror} {SUITE}-updates main"))
            .arg(format!("deb {security} {SUITE}-security main"));
        host::tool(&mut cmd).map_err(|e| {
            let hint = if rootless {
                " (building as a regular user needs user namespaces, the uidmap package and \
                 /etc/subuid and /etc/subgid entries for this user)"
            } else {
                ""
            };
            fail(format!("bootstrap failed: {e}{hint}"))
        })?;
        if rootless {
            fs::create_dir_all(&tree).ctx(|| "create build tree".into())?;
            host::tool(
                Command::new("fakeroot")
                    .arg("-s")
                    .arg(&fakeroot_state)
                    .args(["--", "tar", "--numeric-owner", "-xpf"])
                    .arg(&tarball)
                    .arg("-C")
                    .arg(&tree),
            )?;
            fs::remove_file(&tarball).ctx(|| "remove tarball".into())?;
        }

        let installed_packages = host::tool(
            Command::new("dpkg-query")
                .arg(format!(
                    "--admindir={}",
                    tree.join("var/lib/dpkg").display()
                ))
                .args(["-W", "-f", "${Package}=${Version}\\n"]),
        )
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
        let mut mkfs = if rootless {
            let mut c = Command::new("fakeroot");
            c.arg("-i").arg(&fakeroot_state).args(["--", "mkfs.ext4"]);
            c
        } else {
            Command::new("mkfs.ext4")
        };
        host::tool(
            mkfs.args(["-q", "-F", "-L", "pyro-root", "-E", "root_owner=0:0", "-d"])
                .arg(&tree)
                .arg(&image)
                .arg(format!("{size_mib}M")),
        )?;
        if rootless {
            // Unpacked as this user, some directories are read-only to it.
            host::tool(Command::new("chmod").args(["-R", "u+rwX"]).arg(&tree))?;
        }
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
        write_stamp(&partial, &image)?;
        install(&partial, &install_dir(paths, entry))?;
        progress.phase("pull", &format!("phase=ready environment={}", entry.name));
        Ok(())
    })();
    if result.is_err() {
        let _ = host::remove_tree(&partial);
    }
    result
}

/// Moves a finished build into place, replacing an old install.
fn install(partial: &Path, dest: &Path) -> Result<()> {
    if dest.exists() {
        let old = dest.with_file_name(format!(
            ".partial-{}-{}",
            dest.file_name().unwrap().to_string_lossy(),
            host::random_id(4)
        ));
        fs::rename(dest, &old).ctx(|| format!("move aside {}", dest.display()))?;
        host::remove_tree(&old)?;
    }
    fs::rename(partial, dest).ctx(|| format!("install {}", dest.display()))
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

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub environment: String,
    pub output_path: String,
    pub includes_kernel: bool,
    pub bytes_written: u64,
}

/// Writes an installed environment, and the guest kernel it boots with, to
/// one (sparse) tar archive that `import` takes on another machine.
pub fn export(
    paths: &Paths,
    entry: &CatalogEntry,
    output: &Path,
    force: bool,
) -> Result<ExportReport> {
    let dir = install_dir(paths, entry);
    let inst = installed(paths, entry).ok_or_else(|| Error::Environment {
        name: entry.name.into(),
        detail: "not installed".into(),
        remedy: Some(Remedy::PullEnvironment {
            environment: entry.name.into(),
        }),
    })?;
    verify(&inst, &dir)?;
    let kernel = paths.runtime_cache.join("kernel");
    let includes_kernel = kernel.join("kernel.json").is_file();
    host::produce_file(output, force, |tmp| {
        let mut cmd = Command::new("tar");
        cmd.arg("--sparse")
            .arg("-cf")
            .arg(tmp)
            .arg("-C")
            .arg(&paths.environment_cache)
            .arg(format!("{}/environment.json", slug(entry)))
            .arg(format!("{}/rootfs.ext4", slug(entry)));
        if includes_kernel {
            cmd.arg("-C").arg(&paths.runtime_cache).arg("kernel");
        }
        host::tool(&mut cmd).map(|_| ())
    })?;
    Ok(ExportReport {
        environment: entry.name.into(),
        output_path: output.display().to_string(),
        includes_kernel,
        bytes_written: fs::metadata(output).map(|m| m.len()).unwrap_or(0),
    })
}

/// Installs an environment (and, if this machine has none, the guest
/// kernel) from an archive made by `export`, verifying every image against
/// its manifest first.
pub fn import(
    paths: &Paths,
    archive: &Path,
    progress: &dyn Progress,
) -> Result<&'static CatalogEntry> {
    if !archive.is_file() {
        return Err(Error::InvalidArgument(format!(
            "{} is not a file",
            archive.display()
        )));
    }
    fs::create_dir_all(&paths.environment_cache)
        .ctx(|| format!("create {}", paths.environment_cache.display()))?;
    let partial = paths
        .environment_cache
        .join(format!(".partial-import-{}", host::random_id(4)));
    fs::create_dir_all(&partial).ctx(|| format!("create {}", partial.display()))?;
    let result = (|| -> Result<&'static CatalogEntry> {
        progress.phase(
            "import",
            &format!("phase=extract archive={}", archive.display()),
        );
        // GNU tar refuses absolute names and `..` by default; what it
        // extracts is checked below before anything is installed.
        host::tool(
            Command::new("tar")
                .args(["--no-same-owner", "--no-same-permissions", "-xf"])
                .arg(archive)
                .arg("-C")
                .arg(&partial),
        )?;
        let entry = CATALOG
            .iter()
            .find(|e| partial.join(slug(e)).join("environment.json").is_file())
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{} holds no environment of this catalog",
                    archive.display()
                ))
            })?;
        let staged = partial.join(slug(entry));
        let manifest: EnvironmentManifest = serde_json::from_slice(
            &fs::read(staged.join("environment.json")).ctx(|| "read manifest".into())?,
        )
        .map_err(|e| Error::InvalidArgument(format!("bad manifest in the archive: {e}")))?;
        let rootfs = staged.join("rootfs.ext4");
        let meta = fs::symlink_metadata(&rootfs).ctx(|| "stat the archived image".into())?;
        if !meta.is_file() || manifest.name != entry.name || manifest.version != entry.version {
            return Err(Error::InvalidArgument(format!(
                "{} does not hold a valid {} {}",
                archive.display(),
                entry.name,
                entry.version
            )));
        }
        progress.phase(
            "import",
            &format!("phase=verify environment={}", entry.name),
        );
        let inst = Installed { rootfs, manifest };
        verify(&inst, &staged)?;
        if partial.join("kernel").is_dir() {
            crate::assets::import_kernel(paths, &partial.join("kernel"))?;
        }
        let _lock = FileLock::acquire(&lock_path(paths, entry))?;
        install(&staged, &install_dir(paths, entry))?;
        progress.phase("import", &format!("phase=ready environment={}", entry.name));
        Ok(entry)
    })();
    let _ = host::remove_tree(&partial);
    result
}
