//! What `env prune` removed.

use std::path::PathBuf;

use serde::Serialize;

use crate::error::Result;
use crate::host;

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
