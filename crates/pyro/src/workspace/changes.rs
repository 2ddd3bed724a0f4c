//! `workspace diff` (live `/workspace` against the create-time baseline)
//! and `workspace patch apply` (unified and git diffs, all-or-nothing).

use std::collections::BTreeMap;
use std::path::PathBuf;

use diffy::patch_set::{FileMode, FileOperation, ParseOptions, PatchKind, PatchSet};
use serde::{Deserialize, Serialize};

use crate::contract::ExecutionMode;
use crate::error::{Error, Result};
use crate::paths::Context;
use crate::workspace::archive::Artifact;
use crate::workspace::files::{self, workspace_path, ArtifactType, MAX_FILE_BYTES};
use crate::workspace::vm::connect;
use crate::workspace::{secrets, Workspace};

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeStatus {
    Added,
    Modified,
    Deleted,
    TypeChanged,
}

impl ChangeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeStatus::Added => "added",
            ChangeStatus::Modified => "modified",
            ChangeStatus::Deleted => "deleted",
            ChangeStatus::TypeChanged => "type_changed",
        }
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiffEntry {
    pub path: String,
    pub status: ChangeStatus,
    pub artifact_type: ArtifactType,
    /// A unified diff for text files; `None` for directories, symlinks and
    /// binary files.
    pub text_patch: Option<String>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DiffSummary {
    pub total: usize,
    pub added: usize,
    pub modified: usize,
    pub deleted: usize,
    pub type_changed: usize,
    pub text_patched: usize,
    pub non_text: usize,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiffResult {
    pub workspace_id: String,
    pub changed: bool,
    pub summary: DiffSummary,
    pub entries: Vec<DiffEntry>,
    /// Every text patch, concatenated.
    pub patch: String,
}

fn kind(a: &Artifact) -> ArtifactType {
    match a {
        Artifact::File(_) => ArtifactType::File,
        Artifact::Directory => ArtifactType::Directory,
        Artifact::Symlink(_) => ArtifactType::Symlink,
    }
}

fn as_text(a: Option<&Artifact>) -> Option<&str> {
    match a {
        None => Some(""),
        Some(Artifact::File(c)) => match &c.bytes {
            Some(bytes) if !bytes.contains(&0) => std::str::from_utf8(bytes).ok(),
            _ => None,
        },
        _ => None,
    }
}

fn text_patch(path: &str, old: Option<&Artifact>, new: Option<&Artifact>) -> Option<String> {
    let (a, b) = (as_text(old)?, as_text(new)?);
    let from = if old.is_some() {
        format!("a/{path}")
    } else {
        "/dev/null".into()
    };
    let to = if new.is_some() {
        format!("b/{path}")
    } else {
        "/dev/null".into()
    };
    Some(
        similar::TextDiff::from_lines(a, b)
            .unified_diff()
            .context_radius(3)
            .header(&from, &to)
            .to_string(),
    )
}

/// Compares two trees (relative paths → artifacts).
pub fn compare(
    base: &BTreeMap<PathBuf, Artifact>,
    live: &BTreeMap<PathBuf, Artifact>,
) -> (DiffSummary, Vec<DiffEntry>) {
    let mut entries = Vec::new();
    let mut summary = DiffSummary::default();
    let paths: std::collections::BTreeSet<&PathBuf> = base.keys().chain(live.keys()).collect();
    for p in paths {
        let (old, new) = (base.get(p), live.get(p));
        let status = match (old, new) {
            (None, Some(_)) => ChangeStatus::Added,
            (Some(_), None) => ChangeStatus::Deleted,
            (Some(o), Some(n)) if kind(o) != kind(n) => ChangeStatus::TypeChanged,
            (Some(o), Some(n)) if o != n => ChangeStatus::Modified,
            _ => continue,
        };
        let shown = p.display().to_string();
        let artifact = new.or(old).map(kind).unwrap();
        let text = if artifact == ArtifactType::File && status != ChangeStatus::TypeChanged {
            text_patch(&shown, old, new)
        } else {
            None
        };
        match status {
            ChangeStatus::Added => summary.added += 1,
            ChangeStatus::Modified => summary.modified += 1,
            ChangeStatus::Deleted => summary.deleted += 1,
            ChangeStatus::TypeChanged => summary.type_changed += 1,
        }
        if text.is_some() {
            summary.text_patched += 1;
        } else if artifact == ArtifactType::File {
            summary.non_text += 1;
        }
        entries.push(DiffEntry {
            path: format!("{}/{shown}", pyro_protocol::WORKSPACE_ROOT),
            status,
            artifact_type: artifact,
            text_patch: text,
        });
    }
    summary.total = entries.len();
    (summary, entries)
}

pub fn diff(ctx: &Context, id: &str) -> Result<DiffResult> {
    let ws = Workspace::locate(&ctx.paths, id)?;
    let mut client = connect(ctx, &ws)?;
    let (base, live) = files::trees(&ws, &mut client)?;
    let (summary, mut entries) = compare(&base, &live);
    let hide = ws.redactions()?;
    for e in &mut entries {
        if let Some(t) = &e.text_patch {
            e.text_patch = Some(secrets::redact(t, &hide));
        }
    }
    let patch = entries
        .iter()
        .filter_map(|e| e.text_patch.clone())
        .collect::<Vec<_>>()
        .join("");
    Ok(DiffResult {
        workspace_id: id.into(),
        changed: !entries.is_empty(),
        summary,
        entries,
        patch,
    })
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PatchEntry {
    pub path: String,
    pub status: ChangeStatus,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PatchSummary {
    pub total: usize,
    pub added: usize,
    pub modified: usize,
    pub deleted: usize,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PatchResult {
    pub workspace_id: String,
    pub changed: bool,
    pub summary: PatchSummary,
    pub entries: Vec<PatchEntry>,
    pub execution_mode: ExecutionMode,
}

/// One file's change, parsed and ready to check against the workspace.
#[derive(Debug)]
pub struct FileChange<'a> {
    pub path: String,
    pub status: ChangeStatus,
    pub patch: Option<diffy::Patch<'a, str>>,
    pub mode: Option<u32>,
}

fn strip(p: &str) -> String {
    let p = p.trim();
    p.strip_prefix("a/")
        .or_else(|| p.strip_prefix("b/"))
        .unwrap_or(p)
        .to_string()
}

fn mode_bits(m: Option<&FileMode>) -> Result<Option<u32>> {
    match m {
        None | Some(FileMode::Regular) => Ok(m.map(|_| 0o644)),
        Some(FileMode::Executable) => Ok(Some(0o755)),
        Some(other) => Err(Error::invalid(format!(
            "patch: {other:?} entries are not supported"
        ))),
    }
}

/// Parses a unified or git diff into per-file changes.
pub fn parse(text: &str) -> Result<Vec<FileChange<'_>>> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::invalid(format!(
            "patch is larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    let opts = if text.contains("diff --git ") {
        ParseOptions::gitdiff()
    } else {
        ParseOptions::unidiff()
    };
    let mut out: Vec<FileChange> = Vec::new();
    for fp in PatchSet::parse(text, opts) {
        let fp = fp.map_err(|e| Error::invalid(format!("malformed patch: {e}")))?;
        let (path, status) = match fp.operation() {
            FileOperation::Create(p) => (strip(p), ChangeStatus::Added),
            FileOperation::Delete(p) => (strip(p), ChangeStatus::Deleted),
            FileOperation::Modify { original, modified } => {
                if strip(original) != strip(modified) {
                    return Err(Error::invalid(format!(
                        "patch: renames are not supported ({original} -> {modified})"
                    )));
                }
                (strip(modified), ChangeStatus::Modified)
            }
            _ => {
                return Err(Error::invalid(
                    "patch: renames and copies are not supported",
                ))
            }
        };
        let patch = match fp.patch() {
            PatchKind::Text(p) => Some(p.clone()),
            PatchKind::Binary(_) => {
                return Err(Error::invalid(format!(
                    "patch: {path}: binary patches are not supported"
                )))
            }
        };
        let mode = mode_bits(fp.new_mode())?;
        if out.iter().any(|c| c.path == path) {
            return Err(Error::invalid(format!("patch: {path} appears twice")));
        }
        out.push(FileChange {
            path,
            status,
            patch,
            mode,
        });
    }
    if out.is_empty() {
        return Err(Error::invalid("patch: no file changes found"));
    }
    Ok(out)
}

pub fn apply(ctx: &Context, id: &str, text: &str) -> Result<PatchResult> {
    let changes = parse(text)?;
    let ws = Workspace::locate(&ctx.paths, id)?;
    let mut client = connect(ctx, &ws)?;
    let mut writes = Vec::new();
    let mut removes = Vec::new();
    let mut summary = PatchSummary::default();
    let mut entries = Vec::new();
    // Check every file first; nothing is written unless all apply.
    for c in &changes {
        let path = workspace_path(&c.path)?;
        let current = match files::read_bytes(&mut client, &path, MAX_FILE_BYTES + 1) {
            Ok((data, size, _)) if size > MAX_FILE_BYTES => {
                let _ = data;
                return Err(Error::invalid(format!(
                    "patch: {path} is larger than {MAX_FILE_BYTES} bytes"
                )));
            }
            Ok((data, _, _)) => Some(
                String::from_utf8(data)
                    .map_err(|_| Error::invalid(format!("patch: {path} is not UTF-8 text")))?,
            ),
            Err(Error::Guest(m)) if m.contains("no such file") => None,
            Err(e) => return Err(e),
        };
        let fail = |why: &str| {
            Error::invalid(format!(
                "patch does not apply to {path}: {why}; nothing was changed"
            ))
        };
        let base = match (c.status, &current) {
            (ChangeStatus::Added, Some(_)) => return Err(fail("the file already exists")),
            (ChangeStatus::Added, None) => String::new(),
            (_, None) => return Err(fail("no such file")),
            (_, Some(s)) => s.clone(),
        };
        let new = match &c.patch {
            Some(p) => diffy::apply(&base, p).map_err(|e| fail(&e.to_string()))?,
            None => base.clone(),
        };
        match c.status {
            ChangeStatus::Deleted => {
                if !new.is_empty() {
                    return Err(fail("the deletion does not remove every line"));
                }
                removes.push(path.clone());
                summary.deleted += 1;
            }
            _ => {
                if new.len() as u64 > MAX_FILE_BYTES {
                    return Err(fail("the result is too large"));
                }
                let mode = c.mode.unwrap_or(0o644);
                writes.push((path.clone(), new.into_bytes(), mode));
                if c.status == ChangeStatus::Added {
                    summary.added += 1;
                } else {
                    summary.modified += 1;
                }
            }
        }
        entries.push(PatchEntry {
            path,
            status: c.status,
        });
    }
    files::write_files(&mut client, &writes, removes)?;
    summary.total = entries.len();
    Ok(PatchResult {
        workspace_id: id.into(),
        changed: !entries.is_empty(),
        summary,
        entries,
        execution_mode: ExecutionMode::GuestVirtioSerial,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::archive::Content;

    #[test]
    fn git_diffs_with_new_deleted_and_mode_lines_parse() {
        let patch = "\
diff --git a/new.txt b/new.txt
new file mode 100755
index 0000000..3b18e51
--- /dev/null
+++ b/new.txt
@@ -0,0 +1 @@
+hello
diff --git a/old.txt b/old.txt
deleted file mode 100644
index 3b18e51..0000000
--- a/old.txt
+++ /dev/null
@@ -1 +0,0 @@
-bye
diff --git a/keep.txt b/keep.txt
index 1111111..2222222 100644
--- a/keep.txt
+++ b/keep.txt
@@ -1,2 +1,2 @@
 one
-two
+zwei
\\ No newline at end of file
";
        let changes = parse(patch).unwrap();
        let summary: Vec<(&str, ChangeStatus, Option<u32>)> = changes
            .iter()
            .map(|c| (c.path.as_str(), c.status, c.mode))
            .collect();
        assert_eq!(
            summary,
            [
                ("new.txt", ChangeStatus::Added, Some(0o755)),
                ("old.txt", ChangeStatus::Deleted, None),
                ("keep.txt", ChangeStatus::Modified, None),
            ]
        );
        let keep = changes[2].patch.as_ref().unwrap();
        assert_eq!(diffy::apply("one\ntwo\n", keep).unwrap(), "one\nzwei");
    }

    #[test]
    fn malformed_patches_are_refused() {
        assert!(parse("not a patch").is_err());
        assert!(parse("--- a/x\n+++ b/x\n@@ -1,3 +1 @@\n-a\n").is_err());
    }

    #[test]
    fn diff_statuses() {
        let mut base = BTreeMap::new();
        base.insert(
            PathBuf::from("same"),
            Artifact::File(Content::of(b"1\n".to_vec())),
        );
        base.insert(
            PathBuf::from("edit"),
            Artifact::File(Content::of(b"a\n".to_vec())),
        );
        base.insert(
            PathBuf::from("gone"),
            Artifact::File(Content::of(b"x\n".to_vec())),
        );
        base.insert(
            PathBuf::from("swap"),
            Artifact::File(Content::of(b"x\n".to_vec())),
        );
        base.insert(PathBuf::from("dir"), Artifact::Directory);
        let mut live = base.clone();
        live.insert(
            PathBuf::from("edit"),
            Artifact::File(Content::of(b"b\n".to_vec())),
        );
        live.remove(&PathBuf::from("gone"));
        live.insert(PathBuf::from("swap"), Artifact::Symlink("same".into()));
        live.insert(
            PathBuf::from("bin"),
            Artifact::File(Content::of(vec![0, 1, 2])),
        );
        let (s, entries) = compare(&base, &live);
        assert_eq!(
            (s.total, s.added, s.modified, s.deleted, s.type_changed),
            (4, 1, 1, 1, 1)
        );
        assert_eq!((s.text_patched, s.non_text), (2, 1));
        let edit = entries
            .iter()
            .find(|e| e.path == "/workspace/edit")
            .unwrap();
        assert_eq!(
            edit.text_patch.as_deref(),
            Some("--- a/edit\n+++ b/edit\n@@ -1 +1 @@\n-a\n+b\n")
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn text() -> impl Strategy<Value = String> {
            prop::collection::vec(prop_oneof!["[a-c]{0,3}", Just(String::new())], 0..12)
                .prop_map(|lines| lines.iter().map(|l| format!("{l}\n")).collect())
        }

        proptest! {
            /// What `diff` shows is a patch that `patch apply` takes back: the
            /// parsed patch turns the baseline into the live file.
            #[test]
            fn a_diff_applies_as_a_patch(old in text(), new in text(), no_newline in any::<bool>()) {
                let mut new = new;
                if no_newline && new.ends_with('\n') {
                    new.pop();
                }
                prop_assume!(old != new);
                let mut base = BTreeMap::new();
                base.insert(PathBuf::from("f.txt"), Artifact::File(Content::of(old.clone().into_bytes())));
                let mut live = BTreeMap::new();
                live.insert(PathBuf::from("f.txt"), Artifact::File(Content::of(new.clone().into_bytes())));
                let (_, entries) = compare(&base, &live);
                let patch = entries[0].text_patch.clone().unwrap();
                let changes = parse(&patch).unwrap();
                prop_assert_eq!(changes.len(), 1);
                prop_assert_eq!(&changes[0].path, "f.txt");
                let applied = diffy::apply(&old, changes[0].patch.as_ref().unwrap()).unwrap();
                prop_assert_eq!(applied, new);
            }
        }
    }
}
