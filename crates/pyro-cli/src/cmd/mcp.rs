//! `pyro mcp serve`.

use std::process::ExitCode;

use clap::Subcommand;
use pyro::Pyro;

#[derive(Subcommand)]
pub enum McpCommand {
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

pub fn dispatch(pyro: Pyro, c: McpCommand) -> anyhow::Result<ExitCode> {
    let McpCommand::Serve {
        profile,
        http,
        token,
    } = c;
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
