//! `workspace snapshot ...` and `workspace reset`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use pyro::{defaults, Pyro};

use super::Id;
use crate::render::{self, show};

#[derive(Subcommand)]
pub enum SnapshotCommand {
    Create { workspace_id: String, name: String },
    List(Id),
    Delete { workspace_id: String, name: String },
}

#[derive(Args)]
pub struct ResetArgs {
    workspace_id: String,
    #[arg(long, default_value_t = defaults::snapshot())]
    snapshot: String,
}

pub fn dispatch(pyro: &Pyro, c: SnapshotCommand, json: bool) -> anyhow::Result<ExitCode> {
    match c {
        SnapshotCommand::Create { workspace_id, name } => {
            show(json, &pyro.create_snapshot(&workspace_id, &name)?)
        }
        SnapshotCommand::List(a) => show(json, &pyro.list_snapshots(&a.workspace_id)?),
        SnapshotCommand::Delete { workspace_id, name } => {
            let d = pyro.delete_snapshot(&workspace_id, &name)?;
            if json {
                render::json(&d)?;
            } else {
                println!("Deleted snapshot: {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn reset(pyro: &Pyro, a: ResetArgs, json: bool) -> anyhow::Result<ExitCode> {
    let progress = render::Phases::new();
    show(
        json,
        &pyro.reset_workspace(&a.workspace_id, &a.snapshot, &progress)?,
    )
}
