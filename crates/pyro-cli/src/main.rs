//! The `pyro` binary: argument parsing, rendering and exit codes over the
//! `pyro` library. Each command is one façade call.

mod render;
mod workspace;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use pyro::{Pyro, RunParams};

#[derive(Parser)]
#[command(
    name = "pyro",
    version,
    about = "Disposable, isolated Linux sandboxes that are real microVMs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a microVM, run one command in it, delete it; exits with the command's exit code.
    Run(RunArgs),
    /// Check what this host can run, and how to fix what it cannot.
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Show the one-shot lifecycle on debian:12 as JSON.
    Demo {
        /// Give the guest network access.
        #[arg(long)]
        network: bool,
    },
    /// Manage environments (root filesystems guests boot from).
    #[command(subcommand)]
    Env(EnvCommand),
    /// Serve the tools to MCP clients (LLM agents).
    #[command(subcommand)]
    Mcp(McpCommand),
    /// Persistent sandboxes: create, exec, files, checkpoints, stop/start.
    #[command(subcommand)]
    Workspace(workspace::WorkspaceCommand),
    /// The per-VM supervisor (internal).
    #[command(name = "__supervise", hide = true)]
    Supervise { dir: PathBuf },
}

#[derive(Args)]
struct RunArgs {
    /// Environment to boot, e.g. debian:12 (see `pyro env list`).
    environment: String,
    #[arg(long, default_value_t = 1)]
    vcpu_count: u32,
    #[arg(long, default_value_t = 1024)]
    mem_mib: u32,
    /// Kill the command (and everything it started) after this long; exit code 124.
    #[arg(long, default_value_t = 30)]
    timeout_seconds: u64,
    /// Delete the VM after this long, whatever happens.
    #[arg(long, default_value_t = 600)]
    ttl_seconds: u64,
    /// Give the guest outbound network access.
    #[arg(long)]
    network: bool,
    /// If no guest can boot, run the command on this host without isolation.
    #[arg(long)]
    allow_host_compat: bool,
    /// Print one JSON result object on stdout instead of streaming.
    #[arg(long)]
    json: bool,
    /// The command. One argument is a shell command string (`/bin/sh -lc`);
    /// several are an argv.
    #[arg(last = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

#[derive(Subcommand)]
enum McpCommand {
    /// Serve MCP on stdin/stdout (or over HTTP with --http).
    Serve {
        /// vm-run, workspace-core (recommended) or workspace-full.
        #[arg(long, default_value = "workspace-core")]
        profile: pyro_mcp::Profile,
        /// Serve streamable HTTP at ADDR (e.g. 127.0.0.1:8765) instead of stdio.
        #[arg(long)]
        http: Option<std::net::SocketAddr>,
        /// The bearer token HTTP clients must send (default: generated and printed on stderr).
        #[arg(long, env = "PYRO_MCP_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

#[derive(Subcommand)]
enum EnvCommand {
    /// List the catalog and what is installed.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Build or download an environment (and the guest kernel).
    Pull {
        environment: String,
        #[arg(long)]
        json: bool,
    },
    /// Show an environment's manifest.
    Inspect {
        environment: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove partial builds, incomplete installs and unknown directories.
    Prune {
        #[arg(long)]
        json: bool,
    },
    /// Write an installed environment and the guest kernel to one archive.
    Export {
        environment: String,
        #[arg(long)]
        output: PathBuf,
        /// Overwrite OUTPUT if it exists.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Install an environment from an archive made by `env export`.
    Import {
        archive: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Supervise { dir } = &cli.command {
        pyro::supervise(dir);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("PYRO_LOG"))
        .init();
    let json = match &cli.command {
        Command::Run(a) => a.json,
        Command::Doctor { json } => *json,
        Command::Demo { .. } => true,
        Command::Env(
            EnvCommand::List { json }
            | EnvCommand::Pull { json, .. }
            | EnvCommand::Inspect { json, .. }
            | EnvCommand::Prune { json }
            | EnvCommand::Export { json, .. }
            | EnvCommand::Import { json, .. },
        ) => *json,
        Command::Workspace(w) => w.json(),
        Command::Mcp(_) => false,
        Command::Supervise { .. } => false,
    };
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
    match cli.command {
        Command::Run(a) => run(&pyro, a),
        Command::Demo { network } => {
            let mut params = RunParams::new("debian:12", vec!["git --version".into()]);
            params.network = network;
            let result = pyro.run_in_vm(&params, &render::Phases::new(), &mut render::Discard)?;
            render::json(&result)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor { json } => {
            let report = pyro.doctor();
            if json {
                render::json(&report)?;
            } else {
                render::doctor(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Env(EnvCommand::List { json }) => {
            let list = pyro.list_environments();
            if json {
                render::json(&serde_json::json!({
                    "catalog_version": pyro::CATALOG_VERSION,
                    "environments": list,
                }))?;
            } else {
                render::environment_list(&list);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Env(EnvCommand::Pull { environment, json }) => {
            let progress = render::Phases::new();
            let info = pyro.pull_environment(&environment, &progress)?;
            progress.finish();
            if json {
                render::json(&info)?;
            } else {
                render::environment(&info, "Pulled");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Env(EnvCommand::Inspect { environment, json }) => {
            let info = pyro.inspect_environment(&environment)?;
            if json {
                render::json(&info)?;
            } else {
                render::environment(&info, "Environment");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Env(EnvCommand::Prune { json }) => {
            let report = pyro.prune_environments()?;
            if json {
                render::json(&report)?;
            } else {
                for d in &report.deleted {
                    println!(
                        "Deleted {} ({}, {})",
                        d.path,
                        d.reason,
                        render::bytes(d.bytes)
                    );
                }
                println!(
                    "Pruned {} entries, freed {}",
                    report.count,
                    render::bytes(report.freed_bytes)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Env(EnvCommand::Export {
            environment,
            output,
            force,
            json,
        }) => {
            let report = pyro.export_environment(&environment, &output, force)?;
            if json {
                render::json(&report)?;
            } else {
                println!(
                    "Exported {} to {} ({}{})",
                    report.environment,
                    report.output_path,
                    render::bytes(report.bytes_written),
                    if report.includes_kernel {
                        ", with the guest kernel"
                    } else {
                        ""
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Env(EnvCommand::Import { archive, json }) => {
            let progress = render::Phases::new();
            let info = pyro.import_environment(&archive, &progress)?;
            progress.finish();
            if json {
                render::json(&info)?;
            } else {
                render::environment(&info, "Imported");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Workspace(w) => workspace::dispatch(&pyro, w),
        Command::Mcp(McpCommand::Serve {
            profile,
            http,
            token,
        }) => {
            match http {
                None => pyro_mcp::run_stdio(pyro, profile),
                Some(addr) => {
                    if !addr.ip().is_loopback() {
                        eprintln!("[mcp] warning: {addr} is not a loopback address; anyone who can reach it and has the token controls your sandboxes");
                    }
                    let token = token.unwrap_or_else(pyro::random_token);
                    pyro_mcp::run_http(pyro, profile, addr, token.clone(), |bound| {
                        eprintln!("[mcp] serving http://{bound}/mcp");
                        eprintln!("[mcp] token: {token}");
                    })
                }
            }
            .map_err(|e| anyhow::anyhow!("mcp server: {e}"))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Supervise { .. } => unreachable!("handled before dispatch"),
    }
}

fn run(pyro: &Pyro, a: RunArgs) -> anyhow::Result<ExitCode> {
    let params = RunParams {
        environment: a.environment,
        command: a.command,
        vcpu_count: a.vcpu_count,
        mem_mib: a.mem_mib,
        timeout_seconds: a.timeout_seconds,
        ttl_seconds: a.ttl_seconds,
        network: a.network,
        allow_host_compat: a.allow_host_compat,
    };
    let result = if a.json {
        let r = pyro.run_in_vm(&params, &pyro::Silent, &mut render::Discard)?;
        render::json(&r)?;
        r
    } else {
        let r = pyro.run_in_vm(&params, &render::Stderr, &mut render::Stream)?;
        let _ = std::io::stdout().flush();
        let signal = r.signal.map(|s| format!(" signal={s}")).unwrap_or_default();
        let timed_out = if r.timed_out { " timed_out=yes" } else { "" };
        eprintln!(
            "[run] environment={} execution_mode={} exit_code={}{signal}{timed_out} duration_ms={}",
            r.environment,
            render::mode(r.execution_mode),
            r.exit_code,
            r.duration_ms
        );
        r
    };
    Ok(ExitCode::from(result.exit_code.clamp(0, 255) as u8))
}
