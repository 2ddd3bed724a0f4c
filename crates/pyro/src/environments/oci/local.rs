//! Images without a registry: a `docker save` (or `skopeo copy ...
//! docker-archive:`) tarball, or an OCI image layout (a directory, or a
//! tarball of one, as `podman save --format oci-archive` and buildah
//! write). Every blob is hashed on its way into the store.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::host::{self, hex, FileLock};
use crate::paths::Paths;
use crate::progress::Progress;

use super::record::{
    canonical, parse_config, wrong_platform, ImageRecord, LayerRecord, ARCH, FORMAT_VERSION,
};
use super::store::{digest_hex, Store};

/// Whether a tarball holds an image (rather than an `env export` archive).
pub fn is_image_archive(path: &Path) -> bool {
    let Ok(file) = fs::File::open(path) else {
        return false;
    };
    let mut archive = tar::Archive::new(file);
    let Ok(entries) = archive.entries_with_seek() else {
        return false;
    };
    entries.flatten().any(|e| {
        e.path().is_ok_and(|p| {
            let p = p.to_string_lossy();
            let p = p.trim_start_matches("./");
            p == "manifest.json" || p == "index.json"
        })
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    media_type: Option<String>,
    digest: String,
    platform: Option<Platform>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What an archive or layout holds, once its blobs are in the store.
struct Found {
    key: String,
    config_digest: String,
    config: Vec<u8>,
    layers: Vec<(String, u64)>,
    name: Option<String>,
    source: &'static str,
}

/// Installs the image in `source` (a directory or a tarball) under `name`,
/// or the name the archive gives it.
pub fn import_image(
    paths: &Paths,
    source: &Path,
    name: Option<&str>,
    progress: &dyn Progress,
) -> Result<(PathBuf, ImageRecord)> {
    let store = Store::new(paths);
    fs::create_dir_all(&store.root).ctx(|| format!("create {}", store.root.display()))?;
    let staging = store
        .root
        .join(format!(".partial-import-{}", host::random_id(4)));
    let lock_path = store.root.join(format!(
        "{}.lock",
        staging
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replacen(".partial-", ".", 1)
    ));
    let staging_lock = FileLock::acquire(&lock_path)?;
    host::private_dir(&staging)?;
    let result = (|| {
        let dir = if source.is_dir() {
            source.to_path_buf()
        } else {
            progress.phase(
                "import",
                &format!("phase=extract archive={}", source.display()),
            );
            host::tool(
                std::process::Command::new("tar")
                    .args(["--no-same-owner", "--no-same-permissions", "-xf"])
                    .arg(source)
                    .arg("-C")
                    .arg(&staging),
            )?;
            staging.clone()
        };
        let found = if fs::symlink_metadata(dir.join("index.json")).is_ok_and(|m| m.is_file()) {
            from_layout(&store, &dir, name)?
        } else if fs::symlink_metadata(dir.join("manifest.json")).is_ok_and(|m| m.is_file()) {
            from_docker_archive(&store, &dir)?
        } else {
            return Err(Error::InvalidArgument(format!(
                "{} is neither a docker-archive (manifest.json) nor an OCI layout (index.json)",
                source.display()
            )));
        };
        let chosen = match name.map(str::to_owned).or(found.name.clone()) {
            Some(n) => canonical(&n)?,
            None => {
                return Err(Error::InvalidArgument(
                    "the image has no name in the archive: give one (--name)".into(),
                ))
            }
        };
        let (architecture, os, defaults) = parse_config(&chosen, &found.config)?;
        let record = ImageRecord {
            format_version: FORMAT_VERSION,
            reference: chosen.clone(),
            manifest_digest: found.key.clone(),
            config_digest: found.config_digest.clone(),
            architecture,
            os,
            defaults,
            layers: found
                .layers
                .iter()
                .map(|(d, s)| LayerRecord {
                    digest: d.clone(),
                    size: *s,
                })
                .collect(),
            source: found.source.into(),
            image_size_bytes: 0,
            image_sha256: String::new(),
            skipped_entries: Vec::new(),
            built_at_unix_ms: 0,
        };
        let files = found
            .layers
            .iter()
            .map(|(d, _)| store.blob(d))
            .collect::<Result<Vec<_>>>()?;
        let digests: Vec<&str> = found.layers.iter().map(|(d, _)| d.as_str()).collect();
        let _blobs = store.lock_blobs(&digests)?;
        let _lock = store.lock(&found.key)?;
        let built = store.build(record, &files, progress)?;
        store.set_ref(&chosen, &found.key)?;
        store.touch(&built.0);
        progress.phase("import", &format!("phase=ready image={chosen}"));
        Ok(built)
    })();
    let _ = host::remove_tree(&staging);
    drop(staging_lock);
    let _ = fs::remove_file(&lock_path);
    result
}

/// Stores a file of the archive as a blob: under `digest` if the format
/// names one (checked), else under its own hash.
fn store_file(store: &Store, file: &Path, digest: Option<&str>) -> Result<(String, u64)> {
    let size = fs::metadata(file)
        .ctx(|| format!("stat {}", file.display()))?
        .len();
    let digest = match digest {
        Some(d) => d.to_owned(),
        None => format!("sha256:{}", host::sha256_file(file)?),
    };
    let dest = store.blob(&digest)?;
    if !dest.is_file() {
        let tmp = store.partial_blob(&digest)?;
        // A copy: a layout directory is the user's and stays as it was.
        fs::copy(file, &tmp).ctx(|| format!("copy {}", file.display()))?;
        store.adopt_blob(&digest, &tmp)?;
    }
    Ok((digest, size))
}

/// A regular file inside the archive or layout, reached through real
/// directories only: the archive's own symlinks, devices and FIFOs (tar
/// creates them as it finds them) are refused, so nothing outside is read.
fn inside(dir: &Path, rel: &str) -> Result<PathBuf> {
    let bad = |why: &str| Error::InvalidArgument(format!("the archive names {rel:?}, which {why}"));
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(bad("is outside it"));
    }
    let mut at = dir.to_path_buf();
    let parts: Vec<_> = p.components().collect();
    for (i, c) in parts.iter().enumerate() {
        at.push(c);
        let meta = fs::symlink_metadata(&at).map_err(|_| bad("does not exist"))?;
        let last = i + 1 == parts.len();
        if (last && !meta.file_type().is_file()) || (!last && !meta.file_type().is_dir()) {
            return Err(bad("is not a regular file in a directory"));
        }
    }
    Ok(at)
}

/// The most of a manifest or configuration that is read.
const JSON_LIMIT: u64 = 16 << 20;

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let size = fs::symlink_metadata(path)
        .ctx(|| format!("stat {}", path.display()))?
        .len();
    if size > JSON_LIMIT {
        return Err(Error::InvalidArgument(format!(
            "{} is too large to be a manifest",
            path.display()
        )));
    }
    let bytes = fs::read(path).ctx(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::InvalidArgument(format!("{} is not valid: {e}", path.display())))
}

fn from_docker_archive(store: &Store, dir: &Path) -> Result<Found> {
    let manifests: Vec<DockerManifest> = read_json(&inside(dir, "manifest.json")?)?;
    let m = match manifests.as_slice() {
        [one] => one,
        [] => {
            return Err(Error::InvalidArgument(
                "the archive's manifest.json lists no image".into(),
            ))
        }
        _ => {
            return Err(Error::InvalidArgument(
                "the archive holds several images; save one per archive".into(),
            ))
        }
    };
    let config_path = inside(dir, &m.config)?;
    // Parsed first: a check of its size and form before it is kept.
    let _: serde_json::Value = read_json(&config_path)?;
    let config = fs::read(&config_path).ctx(|| format!("read {}", config_path.display()))?;
    let config_digest = format!("sha256:{}", hex(&Sha256::digest(&config)));
    store.put_blob(&config_digest, &config)?;
    let layers = m
        .layers
        .iter()
        .map(|l| store_file(store, &inside(dir, l)?, None))
        .collect::<Result<Vec<_>>>()?;
    check_diff_ids(store, &config, &layers)?;
    // No manifest: the image is known by a digest of its configuration
    // and layers, in a space of its own (no registry manifest has it).
    let mut key = Sha256::new();
    key.update(b"pyro docker-archive image\n");
    key.update(config_digest.as_bytes());
    for (d, _) in &layers {
        key.update(b"\n");
        key.update(d.as_bytes());
    }
    Ok(Found {
        key: format!("sha256:{}", hex(&key.finalize())),
        config_digest,
        config,
        layers,
        name: m.repo_tags.first().cloned(),
        source: "docker-archive",
    })
}

/// The configuration's `rootfs.diff_ids` name each layer's uncompressed
/// tar: an uncompressed layer must be it.
fn check_diff_ids(store: &Store, config: &[u8], layers: &[(String, u64)]) -> Result<()> {
    let v: serde_json::Value = serde_json::from_slice(config).map_err(|e| {
        Error::InvalidArgument(format!("the image configuration is not valid JSON: {e}"))
    })?;
    let Some(ids) = v["rootfs"]["diff_ids"].as_array() else {
        return Ok(());
    };
    if ids.len() != layers.len() {
        return Err(Error::InvalidArgument(format!(
            "the configuration lists {} layers and the archive has {}",
            ids.len(),
            layers.len()
        )));
    }
    for (id, (digest, _)) in ids.iter().zip(layers) {
        let mut head = [0u8; 2];
        let compressed = fs::File::open(store.blob(digest)?)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
            .is_ok_and(|()| head == [0x1f, 0x8b]);
        if !compressed && id.as_str() != Some(digest.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "layer {digest} is not the {} the configuration names",
                id.as_str().unwrap_or("?")
            )));
        }
    }
    Ok(())
}

fn from_layout(store: &Store, dir: &Path, name: Option<&str>) -> Result<Found> {
    let blob = |digest: &str| -> Result<PathBuf> {
        inside(dir, &format!("blobs/sha256/{}", digest_hex(digest)?))
    };
    let index: Index = read_json(&inside(dir, "index.json")?)?;
    // With a name given, the entry of that name (its tag, as the
    // `ref.name` annotation holds it), else the only one.
    let tag = name.and_then(|n| n.rsplit_once(':').map(|(_, t)| t.to_owned()));
    let entry = match (&tag, index.manifests.as_slice()) {
        (_, [one]) => one,
        (Some(t), many) => many
            .iter()
            .find(|m| {
                m.annotations
                    .get(REF_NAME)
                    .is_some_and(|r| r == t || r.ends_with(&format!(":{t}")))
            })
            .ok_or_else(|| Error::InvalidArgument(format!("the layout has no image tagged {t}")))?,
        (None, _) => {
            return Err(Error::InvalidArgument(
                "the layout holds several images: name the one to import (--name NAME:TAG)".into(),
            ))
        }
    };
    let mut digest = entry.digest.clone();
    let is_index = entry
        .media_type
        .as_deref()
        .is_some_and(|t| t.contains("index") || t.contains("manifest.list"));
    if is_index {
        let inner: Index = read_json(&blob(&digest)?)?;
        let pick = inner
            .manifests
            .iter()
            .find(|m| {
                m.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == ARCH)
            })
            .ok_or_else(|| wrong_platform(&digest, "an index without linux/amd64"))?;
        digest = pick.digest.clone();
    }
    let manifest_path = blob(&digest)?;
    store_file(store, &manifest_path, Some(&digest))?;
    let manifest: Manifest = read_json(&manifest_path)?;
    let (config_digest, _) = store_file(
        store,
        &blob(&manifest.config.digest)?,
        Some(&manifest.config.digest),
    )?;
    let config =
        fs::read(store.blob(&config_digest)?).ctx(|| "read the image configuration".into())?;
    let layers = manifest
        .layers
        .iter()
        .map(|l| store_file(store, &blob(&l.digest)?, Some(&l.digest)))
        .collect::<Result<Vec<_>>>()?;
    let name = entry
        .annotations
        .get(REF_NAME)
        .filter(|r| r.contains(':') || r.contains('/'))
        .cloned();
    Ok(Found {
        key: digest,
        config_digest,
        config,
        layers,
        name,
        source: "oci-layout",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archive_cannot_name_what_lies_outside_it() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("blobs")).unwrap();
        fs::write(d.path().join("blobs/layer.tar"), b"ok").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("blobs/link.tar")).unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("etc")).unwrap();
        assert!(inside(d.path(), "blobs/layer.tar").is_ok());
        for bad in [
            "blobs/link.tar",
            "etc/passwd",
            "../x",
            "/etc/passwd",
            "blobs",
            "missing",
        ] {
            assert!(inside(d.path(), bad).is_err(), "{bad} was accepted");
        }
    }
}
