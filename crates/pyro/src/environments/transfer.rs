//! `env export` and `env import`: an installed environment (and the guest
//! kernel) as one archive, for hosts that cannot build it.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

use crate::error::{Error, IoContext, Remedy, Result};
use crate::host::{self, FileLock};
use crate::paths::Paths;
use crate::progress::Progress;

use super::build::install;
use super::catalog::{
    install_dir, installed, lock_path, slug, verify, CatalogEntry, CatalogInstall,
    EnvironmentManifest, CATALOG,
};

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
        let inst = CatalogInstall { rootfs, manifest };
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
