//! Pruning the image store: what dead pulls and imports left, references
//! to images that are gone, images and blobs nothing refers to, and (when
//! asked) images unused for a while or beyond a size, least recently used
//! first. An image some disk is built on is never removed.

use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;

use crate::environments::report::PruneReport;
use crate::error::Result;
use crate::host::{self, FileLock};
use crate::paths::Paths;

use super::record::{image_rootfs, ImageRecord, PruneLimits};
use super::store::Store;

pub fn prune(
    paths: &Paths,
    limits: PruneLimits,
    in_use: &HashSet<PathBuf>,
    report: &mut PruneReport,
) -> Result<()> {
    let store = Store::new(paths);
    if !store.root.is_dir() {
        return Ok(());
    }
    // Partials whose lock nobody holds belong to dead pulls and builds.
    for (dir, lock_of) in [
        (store.blobs(), blob_lock as fn(&str) -> String),
        (store.images(), image_lock),
        (store.root.clone(), import_lock),
    ] {
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(".partial-") else {
                continue;
            };
            let key = rest.rsplit_once('-').map_or(rest, |(k, _)| k);
            let lock = dir.join(lock_of(if dir == store.root { &name } else { key }));
            if let Some(_held) = FileLock::try_acquire(&lock)? {
                report.remove(e.path(), "partial pull")?;
            }
        }
    }

    let now = host::now_unix_ms();
    let refs = store.all_refs();
    let mut live: Vec<(PathBuf, ImageRecord, u64)> = Vec::new();
    for (path, r) in &refs {
        match store.image(&r.digest) {
            Some((dir, record)) => {
                let used = Store::last_used(&dir).unwrap_or(record.built_at_unix_ms);
                let stale = limits
                    .unused_for
                    .is_some_and(|d| now.saturating_sub(used) > d.as_millis() as u64);
                if stale && !in_use.contains(&image_rootfs(&dir)) {
                    report.remove(path.clone(), &format!("{} unused", r.reference))?;
                } else if !live.iter().any(|l| l.0 == dir) {
                    live.push((dir, record, used));
                }
            }
            None => report.remove(path.clone(), &format!("{} has no image", r.reference))?,
        }
    }
    if let Some(max) = limits.max_bytes {
        live.sort_by_key(|l| l.2);
        let mut total: u64 = live.iter().map(|l| host::disk_usage(&l.0)).sum();
        let mut i = 0;
        while total > max && i < live.len() {
            if in_use.contains(&image_rootfs(&live[i].0)) {
                i += 1;
                continue;
            }
            let (dir, record, _) = live.remove(i);
            total = total.saturating_sub(host::disk_usage(&dir));
            for (path, r) in &refs {
                if r.digest == record.manifest_digest && path.exists() {
                    report.remove(
                        path.clone(),
                        &format!("{} over the size limit", r.reference),
                    )?;
                }
            }
        }
    }

    // Images no reference names (unless a disk is built on them), then
    // blobs no remaining image lists.
    let named: HashSet<String> = store
        .all_refs()
        .into_iter()
        .map(|(_, r)| r.digest)
        .collect();
    let mut keep_blobs = HashSet::new();
    for e in fs::read_dir(store.images()).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let digest = format!("sha256:{name}");
        let record = store.image(&digest).map(|f| f.1);
        if named.contains(&digest) || in_use.contains(&image_rootfs(&e.path())) {
            if let Some(r) = record {
                keep_blobs.insert(r.config_digest.clone());
                keep_blobs.insert(r.manifest_digest.clone());
                keep_blobs.extend(r.layers.iter().map(|l| l.digest.clone()));
            }
            continue;
        }
        let Some(_held) = FileLock::try_acquire(&store.images().join(image_lock(&name)))? else {
            continue;
        };
        report.remove(e.path(), "image nothing refers to")?;
    }
    for e in fs::read_dir(store.blobs()).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || keep_blobs.contains(&format!("sha256:{name}")) {
            continue;
        }
        let Some(_held) = FileLock::try_acquire(&store.blobs().join(blob_lock(&name)))? else {
            continue;
        };
        report.remove(e.path(), "blob no image uses")?;
    }
    Ok(())
}

fn blob_lock(hex: &str) -> String {
    format!(".{hex}.lock")
}

fn image_lock(hex: &str) -> String {
    format!(".{hex}.lock")
}

fn import_lock(partial: &str) -> String {
    format!("{}.lock", partial.replacen(".partial-", ".", 1))
}
