//! `workspace exec`: streams the command's output, exits with its code.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use pyro::{defaults, Discard, Pyro, WorkspaceExec};

use crate::cmd::{command, secret_env};
use crate::render::{self, Human};

#[derive(Args)]
pub struct ExecArgs {
    workspace_id: String,
    #[arg(long, default_value_t = defaults::timeout_seconds())]
    timeout_seconds: u64,
    /// Pass a secret as an environment variable: SECRET or SECRET=ENV (repeatable).
    #[arg(long = "secret-env")]
    secret_env: Vec<String>,
    /// One argument: a shell command string; several: an argv.
    #[arg(last = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

pub fn exec(pyro: &Pyro, a: ExecArgs, json: bool) -> anyhow::Result<ExitCode> {
    let params = WorkspaceExec {
        command: command(a.command),
        timeout_seconds: a.timeout_seconds,
        secret_env: secret_env(&a.secret_env),
    };
    let e = if json {
        let e = pyro.exec_workspace(&a.workspace_id, &params, &mut Discard)?;
        render::json(&e)?;
        e
    } else {
        let e = pyro.exec_workspace(&a.workspace_id, &params, &mut render::Stream)?;
        let _ = std::io::stdout().flush();
        e.human();
        e
    };
    Ok(ExitCode::from(e.exit_code.clamp(0, 255) as u8))
}
