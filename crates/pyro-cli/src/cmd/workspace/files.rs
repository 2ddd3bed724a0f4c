//! `workspace sync/export/file/diff/patch`: files in and out of /workspace.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use pyro::{defaults, Pyro};

use super::Id;
use crate::cmd::read_utf8;
use crate::human::show_content;
use crate::render::show;

#[derive(Subcommand)]
pub enum SyncCommand {
    /// Copy a directory or archive into the workspace (overwrites, never deletes).
    Push {
        workspace_id: String,
        source: PathBuf,
        #[arg(long, default_value_t = defaults::workspace_path())]
        dest: String,
    },
}

#[derive(Args)]
pub struct ExportArgs {
    workspace_id: String,
    path: String,
    #[arg(long)]
    output: PathBuf,
    /// Overwrite OUTPUT if it exists.
    #[arg(long)]
    force: bool,
}

#[derive(Subcommand)]
pub enum FileCommand {
    List {
        workspace_id: String,
        #[arg(default_value_t = defaults::workspace_path())]
        path: String,
        #[arg(long)]
        recursive: bool,
    },
    Read {
        workspace_id: String,
        path: String,
        #[arg(long, default_value_t = defaults::max_bytes())]
        max_bytes: u64,
        /// Print only the content.
        #[arg(long, conflicts_with = "json")]
        content_only: bool,
    },
    Write {
        workspace_id: String,
        path: String,
        #[arg(
            long,
            required_unless_present = "text_file",
            conflicts_with = "text_file",
            allow_hyphen_values = true
        )]
        text: Option<String>,
        /// Read the text from this (UTF-8) file.
        #[arg(long)]
        text_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum PatchCommand {
    Apply {
        workspace_id: String,
        #[arg(
            long,
            required_unless_present = "patch_file",
            conflicts_with = "patch_file",
            allow_hyphen_values = true
        )]
        patch: Option<String>,
        /// Read the patch from this (UTF-8) file.
        #[arg(long)]
        patch_file: Option<PathBuf>,
    },
}

/// Text given inline or as a file.
fn text(inline: Option<String>, file: Option<PathBuf>, what: &str) -> anyhow::Result<String> {
    match (inline, file) {
        (Some(t), _) => Ok(t),
        (None, Some(f)) => read_utf8(&f, &format!("{what} file")),
        (None, None) => bail!("--{what} or --{what}-file is required"),
    }
}

pub fn sync(pyro: &Pyro, c: SyncCommand, json: bool) -> anyhow::Result<ExitCode> {
    let SyncCommand::Push {
        workspace_id,
        source,
        dest,
    } = c;
    show(
        json,
        &pyro.push_workspace_sync(&workspace_id, &source, &dest)?,
    )
}

pub fn export(pyro: &Pyro, a: ExportArgs, json: bool) -> anyhow::Result<ExitCode> {
    let r = pyro.export_workspace(&a.workspace_id, &a.path, &a.output, a.force)?;
    show(json, &r)
}

pub fn file(pyro: &Pyro, c: FileCommand, json: bool) -> anyhow::Result<ExitCode> {
    match c {
        FileCommand::List {
            workspace_id,
            path,
            recursive,
        } => show(
            json,
            &pyro.list_workspace_files(&workspace_id, &path, recursive)?,
        ),
        FileCommand::Read {
            workspace_id,
            path,
            max_bytes,
            content_only,
        } => {
            let r = pyro.read_workspace_file(&workspace_id, &path, max_bytes)?;
            show_content(json, content_only, &r)
        }
        FileCommand::Write {
            workspace_id,
            path,
            text: inline,
            text_file,
        } => {
            let t = text(inline, text_file, "text")?;
            show(json, &pyro.write_workspace_file(&workspace_id, &path, &t)?)
        }
    }
}

pub fn diff(pyro: &Pyro, a: Id, json: bool) -> anyhow::Result<ExitCode> {
    show(json, &pyro.diff_workspace(&a.workspace_id)?)
}

pub fn patch(pyro: &Pyro, c: PatchCommand, json: bool) -> anyhow::Result<ExitCode> {
    let PatchCommand::Apply {
        workspace_id,
        patch,
        patch_file,
    } = c;
    let p = text(patch, patch_file, "patch")?;
    show(json, &pyro.apply_workspace_patch(&workspace_id, &p)?)
}
