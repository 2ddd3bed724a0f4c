//! `pyro env ...`: the environment catalog and cache.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use pyro::Pyro;

use crate::human::{environment, EnvironmentList};
use crate::render::{self, show};

#[derive(Subcommand)]
pub enum EnvCommand {
    /// List the catalog and what is installed.
    List,
    /// Build or download an environment (and the guest kernel).
    Pull { environment: String },
    /// Show an environment's manifest.
    Inspect { environment: String },
    /// Remove partial builds, incomplete installs and unknown directories.
    Prune,
    /// Write an installed environment and the guest kernel to one archive.
    Export {
        environment: String,
        #[arg(long)]
        output: PathBuf,
        /// Overwrite OUTPUT if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Install an environment from an archive made by `env export`.
    Import { archive: PathBuf },
}

fn info(json: bool, heading: &str, e: &pyro::EnvironmentInfo) -> anyhow::Result<ExitCode> {
    if json {
        render::json(e)?;
    } else {
        environment(heading, e);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn dispatch(pyro: &Pyro, c: EnvCommand, json: bool) -> anyhow::Result<ExitCode> {
    match c {
        EnvCommand::List => show(
            json,
            &EnvironmentList {
                catalog_version: pyro::CATALOG_VERSION,
                environments: pyro.list_environments(),
            },
        ),
        EnvCommand::Pull { environment } => {
            let progress = render::Phases::new();
            let e = pyro.pull_environment(&environment, &progress)?;
            progress.finish();
            info(json, "Pulled", &e)
        }
        EnvCommand::Inspect { environment } => info(
            json,
            "Environment",
            &pyro.inspect_environment(&environment)?,
        ),
        EnvCommand::Prune => show(json, &pyro.prune_environments()?),
        EnvCommand::Export {
            environment,
            output,
            force,
        } => show(
            json,
            &pyro.export_environment(&environment, &output, force)?,
        ),
        EnvCommand::Import { archive } => {
            let progress = render::Phases::new();
            let e = pyro.import_environment(&archive, &progress)?;
            progress.finish();
            info(json, "Imported", &e)
        }
    }
}
