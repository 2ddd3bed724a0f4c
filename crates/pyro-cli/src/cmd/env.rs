//! `pyro env ...`: the environment catalog and cache.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use pyro::Pyro;

use crate::human::{environment, EnvironmentList};
use crate::render::{self, show};

#[derive(Subcommand)]
pub enum EnvCommand {
    /// List the catalog, what is installed, and image environments.
    List,
    /// Build or download an environment (and the guest kernel): a catalog
    /// name, or an image reference such as
    /// docker.io/library/python:3.12-slim.
    Pull {
        environment: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Show an environment's manifest.
    Inspect { environment: String },
    /// Remove partial builds and pulls, incomplete installs, unknown
    /// directories, and images and layers nothing refers to.
    Prune {
        /// Also remove image environments unused for this long (30m, 12h,
        /// 7d).
        #[arg(long, value_parser = parse_duration)]
        unused_for: Option<std::time::Duration>,
        /// Then remove the least recently used image environments until
        /// they take at most this much disk (500M, 20G).
        #[arg(long, value_parser = parse_size)]
        max_size: Option<u64>,
    },
    /// Push an installed catalog environment, with the guest kernel, to a
    /// registry as an OCI artifact (pulled back with
    /// PYRO_ENVIRONMENT_REGISTRY).
    Publish {
        environment: String,
        /// Where to: REGISTRY/REPOSITORY:TAG.
        destination: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Write an installed environment and the guest kernel to one archive.
    Export {
        environment: String,
        #[arg(long)]
        output: PathBuf,
        /// Overwrite OUTPUT if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Install an environment from an archive made by `env export`, or a
    /// container image from a `docker save` tarball or an OCI layout
    /// (directory or tarball).
    Import {
        archive: PathBuf,
        /// The image's name (default: the one the archive gives it).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(clap::Args)]
pub struct RegistryArgs {
    /// Allow plain HTTP to this registry (HOST[:PORT]); loopback
    /// registries are always allowed. Also PYRO_INSECURE_REGISTRIES.
    #[arg(long = "insecure-registry", value_name = "REGISTRY")]
    insecure: Vec<String>,
}

impl RegistryArgs {
    /// The library reads the allowance from the environment, as every
    /// surface (SDK, MCP) does.
    fn apply(&self) {
        if self.insecure.is_empty() {
            return;
        }
        let mut all: Vec<String> = std::env::var("PYRO_INSECURE_REGISTRIES")
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        all.extend(self.insecure.iter().cloned());
        std::env::set_var("PYRO_INSECURE_REGISTRIES", all.join(","));
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and s, m, h or d"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit is one of s, m, h, d")),
    };
    Ok(std::time::Duration::from_secs(n * secs))
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and K, M or G"))?;
    let mult = match unit.trim_end_matches(['B', 'i']) {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        _ => return Err(format!("{s:?}: the unit is one of K, M, G")),
    };
    Ok(n * mult)
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
        EnvCommand::Pull {
            environment,
            registry,
        } => {
            registry.apply();
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
        EnvCommand::Prune {
            unused_for,
            max_size,
        } => show(
            json,
            &pyro.prune_environments_with(pyro::PruneLimits {
                unused_for,
                max_bytes: max_size,
            })?,
        ),
        EnvCommand::Publish {
            environment,
            destination,
            registry,
        } => {
            registry.apply();
            let progress = render::Phases::new();
            let r = pyro.publish_environment(&environment, &destination, &progress)?;
            progress.finish();
            show(json, &r)
        }
        EnvCommand::Export {
            environment,
            output,
            force,
        } => show(
            json,
            &pyro.export_environment(&environment, &output, force)?,
        ),
        EnvCommand::Import { archive, name } => {
            let progress = render::Phases::new();
            let e = pyro.import_environment(&archive, name.as_deref(), &progress)?;
            progress.finish();
            info(json, "Imported", &e)
        }
    }
}
