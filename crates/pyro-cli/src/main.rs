//! The `pyro` binary: argument parsing, rendering and exit codes over the
//! `pyro` library. One module per command group (`cmd`); each command is
//! one façade call and one render (`human`, or JSON with `--json`).

mod cmd;
mod human;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pyro::Pyro;

#[derive(Parser)]
#[command(
    name = "pyro",
    version,
    about = "Disposable, isolated Linux sandboxes that are real microVMs"
)]
struct Cli {
    /// Print one JSON result object on stdout (errors as {"ok": false, "error": ...}).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum DemoCommand {
    /// A model served by Ollama chooses commands; pyro runs each in a fresh microVM.
    Ollama(cmd::ollama::OllamaArgs),
}

#[derive(Subcommand)]
enum Command {
    /// Boot a microVM, run one command in it, delete it; exits with the command's exit code.
    Run(cmd::run::RunArgs),
    /// Check what this host can run, and how to fix what it cannot.
    Doctor {
        /// The platform guests are run for (pyro runs linux-x86_64 guests).
        #[arg(long, default_value = "linux-x86_64")]
        platform: String,
    },
    /// Show the one-shot lifecycle on debian:12 as JSON.
    Demo {
        #[command(subcommand)]
        demo: Option<DemoCommand>,
        /// Give the guest network access.
        #[arg(long)]
        network: bool,
    },
    /// Manage environments (root filesystems guests boot from).
    #[command(subcommand)]
    Env(cmd::env::EnvCommand),
    /// Serve the tools to MCP clients (LLM agents).
    #[command(subcommand)]
    Mcp(cmd::mcp::McpCommand),
    /// Persistent sandboxes: create, exec, files, checkpoints, stop/start.
    #[command(subcommand)]
    Workspace(cmd::workspace::WorkspaceCommand),
    /// The per-VM supervisor (internal).
    #[command(name = "__supervise", hide = true)]
    Supervise { dir: PathBuf },
    /// Fills the warm pool of one-shot runs (internal).
    #[command(name = "__pool-fill", hide = true)]
    PoolFill {
        environment: String,
        vcpu_count: u32,
        mem_mib: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Supervise { dir } = &cli.command {
        pyro::supervise(dir);
    }
    if let Command::PoolFill {
        environment,
        vcpu_count,
        mem_mib,
    } = &cli.command
    {
        pyro::fill_pool(environment.clone(), *vcpu_count, *mem_mib);
    }
    // rmcp logs tool arguments (secret values among them) at debug level:
    // whatever PYRO_LOG asks, it says no more than info.
    // Warnings show unless PYRO_LOG says otherwise.
    let filter = match tracing_subscriber::EnvFilter::try_from_env("PYRO_LOG") {
        Ok(f) => f.add_directive("rmcp=info".parse().expect("a valid directive")),
        Err(_) => tracing_subscriber::EnvFilter::new("warn"),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    let json = cli.json || matches!(cli.command, Command::Demo { .. });
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            render::error(&e, json);
            ExitCode::from(1)
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let pyro = Pyro::new();
    let json = cli.json;
    match cli.command {
        Command::Run(a) => cmd::run::run(&pyro, a, json),
        Command::Demo {
            demo: Some(DemoCommand::Ollama(a)),
            ..
        } => cmd::ollama::run(&pyro, a),
        Command::Demo {
            demo: None,
            network,
        } => cmd::run::demo(&pyro, network),
        Command::Doctor { platform } => {
            if platform != "linux-x86_64" {
                anyhow::bail!(
                    "pyro runs linux-x86_64 guests only; --platform {platform} is not available"
                );
            }
            render::show(json, &pyro.doctor())
        }
        Command::Env(c) => cmd::env::dispatch(&pyro, c, json),
        Command::Mcp(c) => cmd::mcp::dispatch(pyro, c),
        Command::Workspace(c) => cmd::workspace::dispatch(&pyro, c, json),
        Command::Supervise { .. } | Command::PoolFill { .. } => {
            unreachable!("handled before dispatch")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn json_is_accepted_wherever_it_is_written() {
        for args in [
            &["pyro", "--json", "workspace", "list"][..],
            &["pyro", "workspace", "list", "--json"],
            &["pyro", "workspace", "status", "abc", "--json"],
            &["pyro", "run", "--json", "debian:12", "--", "true"],
            &["pyro", "doctor", "--json"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert!(cli.json, "{args:?}");
        }
        // A flag that only makes sense without JSON refuses it.
        assert!(
            Cli::try_parse_from(["pyro", "workspace", "create", "d", "--id-only", "--json"])
                .is_err()
        );
    }
}
