//! Container images as environments: pulled from a registry or imported
//! from a `docker save` archive or an OCI layout, flattened, and built into
//! the same kind of sparse ext4 image the catalog's environments are. The
//! guest agent comes from the initramfs, so any root filesystem boots; the
//! image's `Env`, `WorkingDir` and `User` travel in the image as
//! `/etc/pyro/image.json`, which the agent applies to every command.

mod layers;
mod local;
mod prune;
mod record;
mod store;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use oci_client::manifest::{OciDescriptor, OciManifest};
use serde::Serialize;

use crate::error::{IoContext, Result};
use crate::host;
use crate::paths::Paths;
use crate::progress::Progress;
use crate::registry::{self, Session};

pub use local::{import_image, is_image_archive};
pub use record::{canonical, ImageDefaults, ImageRecord, LayerRecord, PruneLimits};
pub(crate) use record::{image_rootfs, parse_config, wrong_platform, ARCH, FORMAT_VERSION};
pub(crate) use store::Store;

/// Whether `name` reads as an image reference rather than a catalog name:
/// it names a repository path (`registry/repo:tag`). Short names such as
/// `python:3.12` are not taken to mean Docker Hub, because they look like
/// the catalog's own names.
pub fn is_reference(name: &str) -> bool {
    name.contains('/') && registry::parse(name).is_ok()
}

/// The installed image a reference (or an imported name) points at.
pub fn installed(paths: &Paths, name: &str) -> Option<(PathBuf, ImageRecord)> {
    let store = Store::new(paths);
    let reference = canonical(name).ok()?;
    let digest = store.get_ref(&reference)?.digest;
    let found = store.image(&digest)?;
    store.touch(&found.0);
    Some(found)
}

/// Pulls `name` from its registry (contacting it even when an image is
/// installed under that name, so a moved tag is followed) and installs it.
pub fn pull(
    paths: &Paths,
    name: &str,
    insecure: &[String],
    progress: &dyn Progress,
) -> Result<(PathBuf, ImageRecord)> {
    let reference = registry::parse(name)?;
    let whole = reference.whole();
    progress.phase("pull", &format!("phase=resolve image={whole}"));
    let session = Session::open(&reference, insecure, false)?;
    let (manifest, digest) = match session.manifest(&reference)? {
        (OciManifest::Image(m), digest) => (m, digest),
        (OciManifest::ImageIndex(index), _) => {
            let mut seen = Vec::new();
            let pick = index.manifests.iter().find(|m| {
                let Some(p) = &m.platform else { return false };
                let (os, arch) = (p.os.to_string(), p.architecture.to_string());
                seen.push(format!("{os}/{arch}"));
                os == "linux" && arch == ARCH
            });
            let pick = pick.ok_or_else(|| {
                wrong_platform(&whole, &format!("an index of {}", seen.join(", ")))
            })?;
            progress.phase(
                "pull",
                &format!(
                    "phase=platform image={whole} picked=linux/{ARCH} digest={}",
                    pick.digest
                ),
            );
            let digest = pick.digest.clone();
            (session.image_manifest(&digest)?, digest)
        }
    };
    let store = Store::new(paths);
    if let Some(found) = store.image(&digest) {
        store.set_ref(&whole, &digest)?;
        store.touch(&found.0);
        progress.phase(
            "pull",
            &format!("phase=ready image={whole} digest={digest} cached=true"),
        );
        return Ok(found);
    }
    let config = session.blob_bytes(&manifest.config)?;
    store.put_blob(&manifest.config.digest, &config)?;
    let (architecture, os, defaults) = parse_config(&whole, &config)?;

    // Layers the store has (from this image or another) are not fetched.
    // Every layer's lock is held until the image is built, so no prune
    // takes a blob from under the build.
    let digests: Vec<&str> = manifest.layers.iter().map(|d| d.digest.as_str()).collect();
    let locks = store.lock_blobs(&digests)?;
    let mut wanted = Vec::new();
    let mut files = Vec::new();
    for desc in &manifest.layers {
        let path = store.blob(&desc.digest)?;
        if !path.is_file()
            && !wanted
                .iter()
                .any(|(d, _): &(OciDescriptor, PathBuf)| d.digest == desc.digest)
        {
            wanted.push((desc.clone(), store.partial_blob(&desc.digest)?));
        }
        files.push(path);
    }
    let total: u64 = wanted.iter().map(|(d, _)| d.size.max(0) as u64).sum();
    progress.phase(
        "pull",
        &format!(
            "phase=download image={whole} layers={} fetching={} bytes={total}",
            manifest.layers.len(),
            wanted.len()
        ),
    );
    download(&session, &store, &wanted, total, progress)?;

    let record = ImageRecord {
        format_version: FORMAT_VERSION,
        reference: whole.clone(),
        manifest_digest: digest.to_string(),
        config_digest: manifest.config.digest.clone(),
        architecture,
        os,
        defaults,
        layers: manifest
            .layers
            .iter()
            .map(|d| LayerRecord {
                digest: d.digest.clone(),
                size: d.size.max(0) as u64,
            })
            .collect(),
        source: "registry".into(),
        image_size_bytes: 0,
        image_sha256: String::new(),
        skipped_entries: Vec::new(),
        built_at_unix_ms: 0,
    };
    let _lock = store.lock(&digest)?;
    let built = store.build(record, &files, progress)?;
    store.set_ref(&whole, &digest)?;
    store.touch(&built.0);
    drop(locks);
    progress.phase(
        "pull",
        &format!("phase=ready image={whole} digest={digest}"),
    );
    Ok(built)
}

fn download(
    session: &Session,
    store: &Store,
    wanted: &[(OciDescriptor, PathBuf)],
    total: u64,
    progress: &dyn Progress,
) -> Result<()> {
    if wanted.is_empty() {
        return Ok(());
    }
    let done = Arc::new(AtomicU64::new(0));
    let finished = AtomicBool::new(false);
    let started = std::time::Instant::now();
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            let mut last = std::time::Instant::now();
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if last.elapsed() >= Duration::from_secs(2) {
                    last = std::time::Instant::now();
                    progress.phase(
                        "pull",
                        &format!(
                            "phase=download bytes={}/{total}",
                            done.load(Ordering::Relaxed)
                        ),
                    );
                }
            }
        });
        let r = session.blobs_to_files(wanted, &done);
        finished.store(true, Ordering::Relaxed);
        r
    });
    if let Err(e) = result {
        for (_, partial) in wanted {
            let _ = std::fs::remove_file(partial);
        }
        return Err(e);
    }
    for (desc, partial) in wanted {
        // Verified while streaming; the rename gives it its name.
        let dest = store.blob(&desc.digest)?;
        std::fs::rename(partial, &dest).ctx(|| format!("store {}", dest.display()))?;
    }
    let secs = started.elapsed().as_secs_f64().max(0.001);
    progress.phase(
        "pull",
        &format!(
            "phase=downloaded bytes={total} seconds={secs:.1} mb_per_s={:.0}",
            total as f64 / 1e6 / secs
        ),
    );
    Ok(())
}

/// One image environment, for `env list`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    pub reference: String,
    pub digest: String,
    pub installed: bool,
    pub install_dir: String,
    pub image_size_bytes: u64,
    /// Bytes the image takes on disk (the sparse ext4 image's blocks).
    pub disk_bytes: u64,
    pub last_used_unix_ms: Option<u64>,
    pub record: Option<ImageRecord>,
}

pub fn list(paths: &Paths) -> Vec<ImageInfo> {
    let store = Store::new(paths);
    store
        .all_refs()
        .into_iter()
        .map(|(_, r)| info(&store, &r.reference, &r.digest))
        .collect()
}

pub fn inspect(paths: &Paths, name: &str) -> Option<ImageInfo> {
    let store = Store::new(paths);
    let r = store.get_ref(&canonical(name).ok()?)?;
    Some(info(&store, &r.reference, &r.digest))
}

fn info(store: &Store, reference: &str, digest: &str) -> ImageInfo {
    let dir = store.image_dir(digest).unwrap_or_default();
    let found = store.image(digest);
    ImageInfo {
        reference: reference.into(),
        digest: digest.into(),
        installed: found.is_some(),
        install_dir: dir.display().to_string(),
        image_size_bytes: found.as_ref().map_or(0, |f| f.1.image_size_bytes),
        disk_bytes: if found.is_some() {
            host::disk_usage(&dir)
        } else {
            0
        },
        last_used_unix_ms: Store::last_used(&dir).or(found.as_ref().map(|f| f.1.built_at_unix_ms)),
        record: found.map(|f| f.1),
    }
}

pub use prune::prune;
