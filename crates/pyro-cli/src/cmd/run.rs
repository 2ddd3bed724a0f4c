//! `pyro run` and `pyro demo`.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use pyro::{defaults, Discard, Pyro, RunParams, RunResult, Silent};

use crate::render;

#[derive(Args)]
pub struct RunArgs {
    /// Environment to boot, e.g. debian:12 (see `pyro env list`).
    environment: String,
    #[arg(long, default_value_t = defaults::vcpu_count())]
    vcpu_count: u32,
    #[arg(long, default_value_t = defaults::mem_mib())]
    mem_mib: u32,
    /// Kill the command (and everything it started) after this long; exit code 124.
    #[arg(long, default_value_t = defaults::timeout_seconds())]
    timeout_seconds: u64,
    /// Delete the VM after this long, whatever happens.
    #[arg(long, default_value_t = defaults::ttl_seconds())]
    ttl_seconds: u64,
    /// Give the guest outbound network access.
    #[arg(long)]
    network: bool,
    /// If no guest can boot, run the command on this host without isolation.
    #[arg(long)]
    allow_host_compat: bool,
    /// The command. One argument is a shell command string (`/bin/sh -lc`);
    /// several are an argv.
    #[arg(last = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

fn exit_code(r: &RunResult) -> ExitCode {
    ExitCode::from(r.exit_code.clamp(0, 255) as u8)
}

pub fn run(pyro: &Pyro, a: RunArgs, json: bool) -> anyhow::Result<ExitCode> {
    let params = RunParams {
        environment: a.environment,
        command: super::command(a.command),
        vcpu_count: a.vcpu_count,
        mem_mib: a.mem_mib,
        timeout_seconds: a.timeout_seconds,
        ttl_seconds: a.ttl_seconds,
        network: a.network,
        allow_host_compat: a.allow_host_compat,
    };
    if json {
        let r = pyro.run_in_vm(&params, &Silent, &mut Discard)?;
        render::json(&r)?;
        return Ok(exit_code(&r));
    }
    let r = pyro.run_in_vm(&params, &render::Stderr, &mut render::Stream)?;
    let _ = std::io::stdout().flush();
    let signal = r.signal.map(|s| format!(" signal={s}")).unwrap_or_default();
    let timed_out = if r.timed_out { " timed_out=yes" } else { "" };
    eprintln!(
        "[run] environment={} execution_mode={} exit_code={}{signal}{timed_out} duration_ms={}",
        r.environment, r.execution_mode, r.exit_code, r.duration_ms
    );
    Ok(exit_code(&r))
}

pub fn demo(pyro: &Pyro, network: bool) -> anyhow::Result<ExitCode> {
    let mut params = RunParams::new(
        defaults::environment(),
        pyro::Command::shell("git --version"),
    );
    params.network = network;
    let result = pyro.run_in_vm(&params, &render::Phases::new(), &mut Discard)?;
    render::json(&result)?;
    Ok(ExitCode::SUCCESS)
}
