//! The tools: one façade call each. Parameter structs (`params`) are the
//! tools' input schemas; the façade's result types are their output
//! schemas.

use pyro::{Pyro, Remedy};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Json;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{tool_handler, ServerHandler};

use crate::access::HostAccess;

mod full;
mod run;
mod workspace;

/// Which tools a client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    VmRun,
    WorkspaceCore,
    WorkspaceFull,
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vm-run" => Ok(Profile::VmRun),
            "workspace-core" => Ok(Profile::WorkspaceCore),
            "workspace-full" => Ok(Profile::WorkspaceFull),
            other => Err(format!(
                "unknown profile {other:?}; use vm-run, workspace-core or workspace-full"
            )),
        }
    }
}

#[derive(Clone)]
pub struct PyroServer {
    pyro: Pyro,
    access: HostAccess,
    tool_router: ToolRouter<Self>,
}

impl PyroServer {
    /// A server with the tools of `profile`, whose clients get `access` to
    /// the host and nothing more.
    pub fn new(pyro: Pyro, profile: Profile, access: HostAccess) -> PyroServer {
        let tool_router = match profile {
            Profile::VmRun => Self::run_router(),
            Profile::WorkspaceCore => Self::run_router() + Self::core_router(),
            Profile::WorkspaceFull => {
                let mut core = Self::core_router();
                core.remove_route("workspace_create");
                core.remove_route("workspace_exec");
                Self::run_router() + core + Self::full_router() + Self::vm_router()
            }
        };
        PyroServer {
            pyro,
            access,
            tool_router,
        }
    }

    /// What `tools/list` answers, sorted by name.
    pub fn tools(&self) -> Vec<rmcp::model::Tool> {
        self.tool_router.list_all()
    }
}

type ToolResult<T> = Result<Json<T>, String>;

/// Runs a façade call on a blocking thread; a failure becomes a tool error
/// whose remedy names this server's tools and parameters.
async fn call<T, F>(pyro: &Pyro, f: F) -> ToolResult<T>
where
    T: Send + 'static,
    F: FnOnce(Pyro) -> pyro::Result<T> + Send + 'static,
{
    let pyro = pyro.clone();
    match tokio::task::spawn_blocking(move || f(pyro)).await {
        Ok(Ok(v)) => Ok(Json(v)),
        Ok(Err(e)) => Err(message(&e)),
        Err(e) => Err(format!("internal error: {e}")),
    }
}

/// The error and its causes, then what the client can do about it, in
/// this server's words.
pub(crate) fn message(e: &pyro::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    let remedy = match e.remedy() {
        None => return s,
        Some(Remedy::StartWorkspace { workspace_id }) => {
            format!("call workspace_start with workspace_id {workspace_id} first")
        }
        Some(Remedy::StopWorkspace { workspace_id }) => {
            format!("call workspace_stop with workspace_id {workspace_id} first")
        }
        Some(Remedy::Overwrite) => "choose an output_path that does not exist".into(),
        Some(Remedy::ListWorkspaces) => "workspace_list shows them".into(),
        Some(Remedy::ListEnvironments) => "vm_list_environments shows the catalog".into(),
        Some(Remedy::PullEnvironment { environment }) => {
            format!("pull {environment} again on the host to repair it")
        }
        Some(Remedy::AllowHostCompat) => {
            "or set allow_host_compat to run the command on the host, without isolation".into()
        }
        Some(Remedy::NetworkPolicy { policy }) => {
            format!("create the workspace with network_policy {policy}")
        }
    };
    format!("{s}; {remedy}")
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for PyroServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("pyro", env!("CARGO_PKG_VERSION")))
            .with_instructions(
            "pyro runs commands in disposable, isolated Linux microVMs. Use vm_run for one command; \
             use workspace_create, then workspace_exec, file and patch tools, workspace_diff and \
             workspace_reset for multi-step work, and workspace_delete when done.",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remedies_name_tools_and_parameters_never_cli_flags() {
        let all = [
            Remedy::StartWorkspace {
                workspace_id: "ab12".into(),
            },
            Remedy::StopWorkspace {
                workspace_id: "ab12".into(),
            },
            Remedy::Overwrite,
            Remedy::ListWorkspaces,
            Remedy::ListEnvironments,
            Remedy::PullEnvironment {
                environment: "debian:12".into(),
            },
            Remedy::AllowHostCompat,
            Remedy::NetworkPolicy {
                policy: "egress+published-ports".into(),
            },
        ];
        for remedy in all {
            let e = pyro::Error::Conflict {
                message: "something is in the way".into(),
                remedy: Some(remedy.clone()),
            };
            let text = message(&e);
            assert!(text.starts_with("something is in the way; "), "{text}");
            assert!(
                !text.contains("--") && !text.contains("`pyro "),
                "{remedy:?}: {text}"
            );
        }
        let e = pyro::Error::Conflict {
            message: "workspace ab12 is stopped".into(),
            remedy: Some(Remedy::StartWorkspace {
                workspace_id: "ab12".into(),
            }),
        };
        assert!(message(&e).contains("call workspace_start"));
    }
}
