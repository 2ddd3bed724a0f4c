//! `workspace shell ...`: PTYs that keep their state between calls.

use std::process::ExitCode;

use clap::Subcommand;
use pyro::{defaults, Pyro, ShellInfo};

use crate::cmd::secret_env;
use crate::human::shell_line;
use crate::render;

#[derive(Subcommand)]
pub enum ShellCommand {
    Open {
        workspace_id: String,
        #[arg(long, default_value_t = defaults::workspace_path())]
        cwd: String,
        #[arg(long, default_value_t = defaults::cols())]
        cols: u16,
        #[arg(long, default_value_t = defaults::rows())]
        rows: u16,
        /// Pass a secret as an environment variable: SECRET or SECRET=ENV (repeatable).
        #[arg(long = "secret-env")]
        secret_env: Vec<String>,
        #[arg(long, conflicts_with = "json")]
        id_only: bool,
    },
    Read {
        workspace_id: String,
        shell_id: String,
        #[arg(long, default_value_t = 0)]
        cursor: u64,
        #[arg(long, default_value_t = defaults::max_chars())]
        max_chars: u64,
        /// Render as the screen would show it (a terminal emulator, not escape stripping).
        #[arg(long)]
        plain: bool,
        /// Keep reading until the shell has been quiet this long.
        #[arg(long)]
        wait_for_idle_ms: Option<u64>,
    },
    Write {
        workspace_id: String,
        shell_id: String,
        #[arg(long, allow_hyphen_values = true)]
        input: String,
        #[arg(long)]
        no_newline: bool,
    },
    Signal {
        workspace_id: String,
        shell_id: String,
        #[arg(long, default_value_t = defaults::signal())]
        signal: String,
    },
    Close {
        workspace_id: String,
        shell_id: String,
    },
}

/// The shell as JSON, or its line (after the output a read printed).
fn show(json: bool, verb: &str, s: &ShellInfo) -> anyhow::Result<ExitCode> {
    if json {
        render::json(s)?;
    } else {
        shell_line(verb, s);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn dispatch(pyro: &Pyro, c: ShellCommand, json: bool) -> anyhow::Result<ExitCode> {
    match c {
        ShellCommand::Open {
            workspace_id,
            cwd,
            cols,
            rows,
            secret_env: secrets,
            id_only,
        } => {
            let params = pyro::OpenShell {
                cwd,
                cols,
                rows,
                secret_env: secret_env(&secrets),
            };
            let s = pyro.open_shell(&workspace_id, &params)?;
            if id_only {
                println!("{}", s.shell_id);
                return Ok(ExitCode::SUCCESS);
            }
            show(json, "open", &s)
        }
        ShellCommand::Read {
            workspace_id,
            shell_id,
            cursor,
            max_chars,
            plain,
            wait_for_idle_ms,
        } => {
            let params = pyro::ReadShell {
                cursor,
                max_chars,
                plain,
                wait_for_idle_ms,
            };
            let s = pyro.read_shell(&workspace_id, &shell_id, &params)?;
            if !json {
                print!("{}", s.output);
                if plain && !s.output.is_empty() {
                    println!();
                }
            }
            show(json, "read", &s)
        }
        ShellCommand::Write {
            workspace_id,
            shell_id,
            input,
            no_newline,
        } => show(
            json,
            "write",
            &pyro.write_shell(&workspace_id, &shell_id, &input, !no_newline)?,
        ),
        ShellCommand::Signal {
            workspace_id,
            shell_id,
            signal,
        } => show(
            json,
            "signal",
            &pyro.signal_shell(&workspace_id, &shell_id, &signal)?,
        ),
        ShellCommand::Close {
            workspace_id,
            shell_id,
        } => show(json, "close", &pyro.close_shell(&workspace_id, &shell_id)?),
    }
}
