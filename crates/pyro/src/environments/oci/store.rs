//! Where images live on disk, under `<environment cache>/oci/`:
//!
//! - `blobs/sha256/<hex>`: layers and configs, each verified against its
//!   digest before it got its name, shared by every image that has it;
//! - `images/<manifest hex>/`: one installed image (`rootfs.ext4`,
//!   `image.json`), built once per manifest digest;
//! - `refs/<hash of the reference>.json`: which manifest a reference
//!   (`registry/repo:tag`, or a name given at import) last resolved to.
//!
//! Downloads and builds happen in `.partial-*` entries under a lock and are
//! renamed into place, so a killed pull leaves only partials that the next
//! pull of the same thing, or `env prune`, removes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::host::{self, hex, FileLock};
use crate::paths::Paths;
use crate::progress::Progress;

use super::layers::{self, Extra};
use super::record::{ImageDefaults, ImageRecord, FORMAT_VERSION};
use crate::environments::build::{make_image, open_up};
use crate::environments::catalog::write_stamp;

pub(crate) struct Store {
    pub root: PathBuf,
}

/// `sha256:<64 hex>`, the only digests accepted (they become file names).
pub(crate) fn digest_hex(digest: &str) -> Result<&str> {
    let hex = digest.strip_prefix("sha256:").unwrap_or("");
    if hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        Ok(hex)
    } else {
        Err(Error::InvalidArgument(format!(
            "unsupported digest {digest:?} (only sha256 is)"
        )))
    }
}

/// What a reference's file under `refs/` says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RefRecord {
    pub reference: String,
    pub digest: String,
    pub updated_at_unix_ms: u64,
}

impl Store {
    pub fn new(paths: &Paths) -> Store {
        Store {
            root: paths.environment_cache.join("oci"),
        }
    }

    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    pub fn blob(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.blobs().join(digest_hex(digest)?))
    }

    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    pub fn image_dir(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.images().join(digest_hex(digest)?))
    }

    fn refs(&self) -> PathBuf {
        self.root.join("refs")
    }

    fn ref_path(&self, reference: &str) -> PathBuf {
        let hash = hex(&Sha256::digest(reference.as_bytes()));
        self.refs().join(format!("{}.json", &hash[..32]))
    }

    /// A blob file to download into, renamed to its digest once verified.
    pub fn partial_blob(&self, digest: &str) -> Result<PathBuf> {
        let dir = self.blobs();
        fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
        Ok(dir.join(format!(
            ".partial-{}-{}",
            digest_hex(digest)?,
            host::random_id(4)
        )))
    }

    /// Writes `bytes` as the blob `digest`, after checking they are it.
    pub fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<PathBuf> {
        let actual = format!("sha256:{}", hex(&Sha256::digest(bytes)));
        if actual != digest {
            return Err(digest_mismatch(digest, &actual));
        }
        let path = self.blob(digest)?;
        if !path.is_file() {
            fs::create_dir_all(self.blobs()).ctx(|| "create the blob store".into())?;
            host::write_atomic(&path, bytes)?;
        }
        Ok(path)
    }

    /// Moves a downloaded or copied file into the store as `digest`, after
    /// hashing it.
    pub fn adopt_blob(&self, digest: &str, file: &Path) -> Result<PathBuf> {
        let actual = format!("sha256:{}", host::sha256_file(file)?);
        if actual != digest {
            let _ = fs::remove_file(file);
            return Err(digest_mismatch(digest, &actual));
        }
        let path = self.blob(digest)?;
        fs::rename(file, &path).ctx(|| format!("store {}", path.display()))?;
        Ok(path)
    }

    pub fn set_ref(&self, reference: &str, digest: &str) -> Result<()> {
        fs::create_dir_all(self.refs()).ctx(|| "create the reference index".into())?;
        let record = RefRecord {
            reference: reference.into(),
            digest: digest.into(),
            updated_at_unix_ms: host::now_unix_ms(),
        };
        host::write_atomic(
            &self.ref_path(reference),
            &serde_json::to_vec_pretty(&record).unwrap(),
        )
    }

    pub fn get_ref(&self, reference: &str) -> Option<RefRecord> {
        let r: RefRecord =
            serde_json::from_slice(&fs::read(self.ref_path(reference)).ok()?).ok()?;
        (r.reference == reference).then_some(r)
    }

    pub fn all_refs(&self) -> Vec<(PathBuf, RefRecord)> {
        let Ok(entries) = fs::read_dir(self.refs()) else {
            return Vec::new();
        };
        let mut refs: Vec<(PathBuf, RefRecord)> = entries
            .flatten()
            .filter_map(|e| {
                let r = serde_json::from_slice(&fs::read(e.path()).ok()?).ok()?;
                Some((e.path(), r))
            })
            .collect();
        refs.sort_by(|a, b| a.1.reference.cmp(&b.1.reference));
        refs
    }

    /// The installed image of manifest `digest`, if it is complete.
    pub fn image(&self, digest: &str) -> Option<(PathBuf, ImageRecord)> {
        let dir = self.image_dir(digest).ok()?;
        let record: ImageRecord =
            serde_json::from_slice(&fs::read(dir.join("image.json")).ok()?).ok()?;
        if record.format_version != FORMAT_VERSION {
            return None;
        }
        let size = fs::metadata(dir.join("rootfs.ext4")).ok()?.len();
        (size == record.image_size_bytes).then_some((dir, record))
    }

    /// Locks the blobs `digests` (in digest order, so two pulls cannot
    /// deadlock) and removes dead pulls' partials of them.
    pub fn lock_blobs(&self, digests: &[&str]) -> Result<Vec<FileLock>> {
        fs::create_dir_all(self.blobs()).ctx(|| "create the blob store".into())?;
        let mut hexes = digests
            .iter()
            .map(|d| digest_hex(d))
            .collect::<Result<Vec<_>>>()?;
        hexes.sort_unstable();
        hexes.dedup();
        let mut locks = Vec::new();
        for hex in hexes {
            locks.push(FileLock::acquire(
                &self.blobs().join(format!(".{hex}.lock")),
            )?);
            for e in fs::read_dir(self.blobs()).into_iter().flatten().flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!(".partial-{hex}-"))
                {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(locks)
    }

    pub fn lock(&self, digest: &str) -> Result<FileLock> {
        fs::create_dir_all(self.images()).ctx(|| "create the image store".into())?;
        FileLock::acquire(&self.images().join(format!(".{}.lock", digest_hex(digest)?)))
    }

    /// Builds the root filesystem of an image from its layers (bottom
    /// first), unless it is installed already. The caller holds `lock`.
    pub fn build(
        &self,
        record: ImageRecord,
        layer_files: &[PathBuf],
        progress: &dyn Progress,
    ) -> Result<(PathBuf, ImageRecord)> {
        if let Some(done) = self.image(&record.manifest_digest) {
            return Ok(done);
        }
        let hex = digest_hex(&record.manifest_digest)?.to_owned();
        // A partial of this image belongs to a dead build: the caller holds
        // the image's lock.
        for e in fs::read_dir(self.images()).into_iter().flatten().flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!(".partial-{hex}-"))
            {
                host::remove_tree(&e.path())?;
            }
        }
        let partial = self
            .images()
            .join(format!(".partial-{hex}-{}", host::random_id(4)));
        // Only its owner may enter: the tree holds the image's setuid files.
        host::private_dir(&partial)?;
        let result = (|| {
            let tree = partial.join("tree");
            fs::create_dir_all(&tree).ctx(|| "create the build tree".into())?;
            let rootless = !host::is_root();
            let state = partial.join("fakeroot.state");
            progress.phase(
                "pull",
                &format!(
                    "phase=unpack image={} layers={}",
                    record.reference,
                    layer_files.len()
                ),
            );
            let guest_config = serde_json::to_vec_pretty(&GuestConfig::of(&record.defaults))
                .expect("serializable");
            let extras = guest_extras(&guest_config);
            let mut tar = if rootless {
                let mut c = Command::new("fakeroot");
                c.arg("-s").arg(&state).args(["--", "tar"]);
                c
            } else {
                Command::new("tar")
            };
            tar.args([
                "--extract",
                "--file=-",
                "--numeric-owner",
                "--same-owner",
                "--same-permissions",
                "--xattrs",
                "--xattrs-include=*",
                "--directory",
            ])
            .arg(&tree);
            let refs: Vec<&Path> = layer_files.iter().map(|p| p.as_path()).collect();
            let (_, flat) =
                host::tool_with_input(&mut tar, |stdin| layers::flatten(&refs, &extras, stdin))?;
            progress.phase(
                "pull",
                &format!(
                    "phase=image image={} entries={} skipped={}",
                    record.reference,
                    flat.entries,
                    flat.skipped.len()
                ),
            );
            let image = partial.join("rootfs.ext4");
            make_image(&tree, &image, rootless.then_some(state.as_path()))?;
            host::remove_tree(&tree)?;
            let _ = fs::remove_file(&state);
            open_up(&partial)?;
            let record = ImageRecord {
                image_size_bytes: fs::metadata(&image).ctx(|| "stat image".into())?.len(),
                image_sha256: host::sha256_file(&image)?,
                skipped_entries: flat.skipped,
                built_at_unix_ms: host::now_unix_ms(),
                ..record
            };
            host::write_atomic(
                &partial.join("image.json"),
                &serde_json::to_vec_pretty(&record).unwrap(),
            )?;
            write_stamp(&partial, &image)?;
            let dest = self.images().join(&hex);
            fs::rename(&partial, &dest).ctx(|| format!("install {}", dest.display()))?;
            Ok((dest, record))
        })();
        if result.is_err() {
            let _ = host::remove_tree(&partial);
        }
        result
    }

    /// Records that an image was used now (for `env list` and pruning by
    /// age).
    pub fn touch(&self, dir: &Path) {
        let _ = fs::write(dir.join("last-used"), host::now_unix_ms().to_string());
    }

    pub fn last_used(dir: &Path) -> Option<u64> {
        fs::read_to_string(dir.join("last-used"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

pub(crate) fn digest_mismatch(expected: &str, actual: &str) -> Error {
    Error::Environment {
        name: expected.into(),
        detail: format!("digest mismatch: the content's digest is {actual}, expected {expected}; nothing was installed"),
        remedy: None,
    }
}

/// What the guest agent reads at boot from `/etc/pyro/image.json`: the
/// image's defaults for every command.
#[derive(Debug, Serialize)]
struct GuestConfig<'a> {
    env: &'a [String],
    working_dir: Option<&'a str>,
    user: Option<&'a str>,
}

impl<'a> GuestConfig<'a> {
    fn of(d: &'a ImageDefaults) -> GuestConfig<'a> {
        GuestConfig {
            env: &d.env,
            working_dir: d.working_dir.as_deref().filter(|w| !w.is_empty()),
            user: d.user.as_deref().filter(|u| !u.is_empty()),
        }
    }
}

/// What every image gets beside its layers: the mount points the agent
/// uses, `/workspace`, and the defaults file.
fn guest_extras(config: &[u8]) -> Vec<Extra> {
    let mut extras: Vec<Extra> = ["proc", "sys", "dev", "run", "workspace", "etc", "etc/pyro"]
        .into_iter()
        .map(|p| Extra::dir(p, 0o755))
        .collect();
    extras.push(Extra::dir("tmp", 0o1777));
    extras.push(Extra::file("etc/pyro/image.json", 0o644, config.to_vec()));
    extras
}
