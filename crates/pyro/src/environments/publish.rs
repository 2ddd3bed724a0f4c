//! The catalog through a registry: `env publish` pushes an installed
//! environment (its image, its manifest, and the guest kernel) as one OCI
//! artifact; with `PYRO_ENVIRONMENT_REGISTRY` set, installing an
//! environment pulls that artifact instead of building it, so a host needs
//! neither mmdebstrap nor apt.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use oci_client::manifest::{OciDescriptor, OciImageManifest, OCI_IMAGE_MEDIA_TYPE};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::host::{self, hex};
use crate::paths::Paths;
use crate::progress::Progress;
use crate::registry::{self, artifact, Session};

use super::build::install;
use super::catalog::{
    install_dir, installed, verify, write_stamp, CatalogEntry, CatalogInstall, EnvironmentManifest,
};

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct PublishReport {
    pub environment: String,
    pub reference: String,
    pub manifest_digest: String,
    /// Compressed bytes of the image and kernel layers.
    pub bytes: u64,
    pub includes_kernel: bool,
}

fn descriptor(media_type: &str, data: &[u8], title: Option<&str>) -> OciDescriptor {
    OciDescriptor {
        media_type: media_type.into(),
        digest: format!("sha256:{}", hex(&Sha256::digest(data))),
        size: data.len() as i64,
        annotations: title.map(|t| {
            BTreeMap::from([("org.opencontainers.image.title".to_string(), t.to_string())])
        }),
        ..OciDescriptor::default()
    }
}

fn gzip(
    write: impl FnOnce(&mut flate2::write::GzEncoder<Vec<u8>>) -> std::io::Result<()>,
) -> Result<Vec<u8>> {
    // Level 1: the image is mostly zeros and the push is bound by this.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    write(&mut enc).ctx(|| "compress".into())?;
    enc.finish().ctx(|| "compress".into())
}

pub fn publish(
    paths: &Paths,
    entry: &CatalogEntry,
    destination: &str,
    insecure: &[String],
    progress: &dyn Progress,
) -> Result<PublishReport> {
    let dir = install_dir(paths, entry);
    let inst = installed(paths, entry).ok_or_else(|| Error::Environment {
        name: entry.name.into(),
        detail: "not installed: pull it first".into(),
        remedy: Some(crate::error::Remedy::PullEnvironment {
            environment: entry.name.into(),
        }),
    })?;
    verify(&inst, &dir)?;
    let reference = registry::parse(destination)?;
    progress.phase(
        "publish",
        &format!("phase=compress environment={}", entry.name),
    );
    let config = fs::read(dir.join("environment.json")).ctx(|| "read the manifest".into())?;
    let rootfs = gzip(|enc| std::io::copy(&mut fs::File::open(&inst.rootfs)?, enc).map(|_| ()))?;
    let kernel_dir = paths.runtime_cache.join("kernel");
    let kernel = if kernel_dir.join("kernel.json").is_file() {
        Some(gzip(|enc| {
            let mut b = tar::Builder::new(enc);
            b.follow_symlinks(false);
            b.append_dir_all("kernel", &kernel_dir)?;
            b.finish()
        })?)
    } else {
        None
    };
    let mut layers = vec![descriptor(artifact::ROOTFS, &rootfs, Some("rootfs.ext4"))];
    if let Some(k) = &kernel {
        layers.push(descriptor(artifact::KERNEL, k, Some("kernel")));
    }
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.into()),
        config: descriptor(artifact::CONFIG, &config, None),
        layers: layers.clone(),
        subject: None,
        artifact_type: Some(artifact::TYPE.into()),
        annotations: Some(BTreeMap::from([
            (
                "org.opencontainers.image.title".to_string(),
                entry.name.to_string(),
            ),
            (
                "org.opencontainers.image.version".to_string(),
                entry.version.to_string(),
            ),
        ])),
    };
    let session = Session::open(&reference, insecure, true)?;
    let bytes = rootfs.len() as u64 + kernel.as_ref().map_or(0, |k| k.len() as u64);
    progress.phase(
        "publish",
        &format!("phase=push reference={} bytes={bytes}", reference.whole()),
    );
    session.push_blob(config, &manifest.config.digest)?;
    session.push_blob(rootfs, &layers[0].digest)?;
    if let Some(k) = kernel {
        session.push_blob(k, &layers[1].digest)?;
    }
    let manifest_digest = session.push_manifest(&manifest)?;
    progress.phase(
        "publish",
        &format!("phase=done reference={}", reference.whole()),
    );
    Ok(PublishReport {
        environment: entry.name.into(),
        reference: reference.whole(),
        manifest_digest,
        bytes,
        includes_kernel: layers.len() > 1,
    })
}

/// Installs `entry` from the artifact `reference`, into `partial` (the
/// caller's staging directory, renamed into place on success).
pub(super) fn pull_artifact(
    paths: &Paths,
    entry: &CatalogEntry,
    reference: &str,
    partial: &Path,
    progress: &dyn Progress,
) -> Result<()> {
    progress.phase(
        "pull",
        &format!("phase=resolve environment={} from={reference}", entry.name),
    );
    let (session, manifest, config) = registry::artifact_manifest(reference, &[])?;
    let env: EnvironmentManifest =
        serde_json::from_slice(&config).map_err(|e| Error::Environment {
            name: entry.name.into(),
            detail: format!("{reference} carries an unreadable manifest: {e}"),
            remedy: None,
        })?;
    if env.name != entry.name || env.version != entry.version {
        return Err(Error::Environment {
            name: entry.name.into(),
            detail: format!(
                "{reference} holds {} {}, not {} {}",
                env.name, env.version, entry.name, entry.version
            ),
            remedy: None,
        });
    }
    let compressed = partial.join("rootfs.ext4.gz");
    progress.phase(
        "pull",
        &format!("phase=download environment={} from={reference}", entry.name),
    );
    registry::artifact_layer(&session, &manifest, artifact::ROOTFS, &compressed)?;
    let rootfs = partial.join("rootfs.ext4");
    let file = fs::File::open(&compressed).ctx(|| "open the download".into())?;
    host::write_sparse(
        flate2::read::GzDecoder::new(std::io::BufReader::new(file)),
        &rootfs,
    )?;
    fs::remove_file(&compressed).ctx(|| "remove the download".into())?;
    let mut f =
        fs::File::create(partial.join("environment.json")).ctx(|| "write the manifest".into())?;
    f.write_all(&config).ctx(|| "write the manifest".into())?;
    // The image must be the one its manifest describes.
    let inst = CatalogInstall {
        rootfs: rootfs.clone(),
        manifest: env,
    };
    progress.phase("pull", &format!("phase=verify environment={}", entry.name));
    verify(&inst, partial)?;
    write_stamp(partial, &rootfs)?;
    install(partial, &install_dir(paths, entry))?;
    Ok(())
}
