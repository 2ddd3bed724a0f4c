//! `workspace disk ...`: a stopped workspace's disk, read offline.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use pyro::{defaults, Pyro};

use crate::human::show_content;
use crate::render::show;

#[derive(Subcommand)]
pub enum DiskCommand {
    /// Write the disk as a raw ext4 image.
    Export {
        workspace_id: String,
        #[arg(long)]
        output: PathBuf,
        #[arg(long)]
        force: bool,
    },
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
        #[arg(long, conflicts_with = "json")]
        content_only: bool,
    },
}

pub fn dispatch(pyro: &Pyro, c: DiskCommand, json: bool) -> anyhow::Result<ExitCode> {
    match c {
        DiskCommand::Export {
            workspace_id,
            output,
            force,
        } => show(
            json,
            &pyro.export_workspace_disk(&workspace_id, &output, force)?,
        ),
        DiskCommand::List {
            workspace_id,
            path,
            recursive,
        } => show(
            json,
            &pyro.list_workspace_disk(&workspace_id, &path, recursive)?,
        ),
        DiskCommand::Read {
            workspace_id,
            path,
            max_bytes,
            content_only,
        } => {
            let r = pyro.read_workspace_disk(&workspace_id, &path, max_bytes)?;
            show_content(json, content_only, &r)
        }
    }
}
