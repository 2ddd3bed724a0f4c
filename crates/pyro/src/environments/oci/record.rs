//! What an installed image records about itself, and the image
//! configuration fields pyro reads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::registry;

pub(crate) const FORMAT_VERSION: u32 = 1;
pub(crate) const ARCH: &str = "amd64";

/// What an image asks of the commands run in it.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageDefaults {
    /// `KEY=value` pairs.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerRecord {
    pub digest: String,
    pub size: u64,
}

/// What an installed image records about itself (`image.json`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    pub format_version: u32,
    /// The reference it was first installed under.
    pub reference: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub architecture: String,
    pub os: String,
    pub defaults: ImageDefaults,
    pub layers: Vec<LayerRecord>,
    /// `registry`, `docker-archive` or `oci-layout`.
    pub source: String,
    pub image_size_bytes: u64,
    pub image_sha256: String,
    /// Layer entries left out of the root filesystem (device nodes, names
    /// beneath a symlink, hard links to nothing).
    pub skipped_entries: Vec<String>,
    pub built_at_unix_ms: u64,
}

#[derive(Deserialize)]
struct RawConfig {
    architecture: Option<String>,
    os: Option<String>,
    config: Option<RawRuntime>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawRuntime {
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
}

/// The parts of an image configuration pyro uses, checked to be a Linux
/// amd64 image.
pub(crate) fn parse_config(
    reference: &str,
    bytes: &[u8],
) -> Result<(String, String, ImageDefaults)> {
    let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| Error::Registry {
        reference: reference.into(),
        detail: format!("the image configuration is not valid JSON: {e}"),
        kind: ErrorKind::InvalidArgument,
    })?;
    let arch = raw.architecture.unwrap_or_else(|| ARCH.into());
    let os = raw.os.unwrap_or_else(|| "linux".into());
    if arch != ARCH || os != "linux" {
        return Err(wrong_platform(reference, &format!("{os}/{arch}")));
    }
    let rt = raw.config.unwrap_or(RawRuntime {
        env: None,
        working_dir: None,
        user: None,
        entrypoint: None,
        cmd: None,
    });
    let defaults = ImageDefaults {
        env: rt.env.unwrap_or_default(),
        working_dir: rt.working_dir.filter(|w| !w.is_empty()),
        user: rt.user.filter(|u| !u.is_empty()),
        entrypoint: rt.entrypoint.unwrap_or_default(),
        cmd: rt.cmd.unwrap_or_default(),
    };
    Ok((arch, os, defaults))
}

pub(crate) fn wrong_platform(reference: &str, has: &str) -> Error {
    Error::Registry {
        reference: reference.into(),
        detail: format!(
            "wrong architecture: pyro's guests are linux/{ARCH}, and this image is {has}"
        ),
        kind: ErrorKind::InvalidArgument,
    }
}

/// The canonical form of a reference (`docker.io/library/x:latest`).
pub fn canonical(name: &str) -> Result<String> {
    Ok(registry::parse(name)?.whole())
}

/// How `env prune` may shrink the image store beyond removing what is
/// broken or unreferenced.
#[derive(Debug, Clone, Copy, Default)]
pub struct PruneLimits {
    /// Remove images not used for this long.
    pub unused_for: Option<Duration>,
    /// Then remove the least recently used until the images take at most
    /// this many bytes on disk.
    pub max_bytes: Option<u64>,
}

pub(crate) fn image_rootfs(dir: &Path) -> PathBuf {
    dir.join("rootfs.ext4")
}
