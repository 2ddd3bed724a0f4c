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
        let mut tool_router = tool_router;
        for route in tool_router.map.values_mut() {
            standard_formats(std::sync::Arc::make_mut(&mut route.attr.input_schema));
            if let Some(out) = &mut route.attr.output_schema {
                standard_formats(std::sync::Arc::make_mut(out));
            }
        }
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

/// The formats JSON Schema defines (2020-12, "Defined Formats").
const JSON_SCHEMA_FORMATS: &[&str] = &[
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// Rewrites a schema so that it only uses JSON Schema's own formats:
/// schemars describes Rust's number types with OpenAPI formats (`uint64`,
/// `int32`, `double`), which strict validators (Ajv, the TypeScript SDK's)
/// reject as unknown. A bounded integer keeps its bounds as
/// `minimum`/`maximum` instead.
fn standard_formats(schema: &mut serde_json::Map<String, serde_json::Value>) {
    use serde_json::Value;
    let bounds = match schema.get("format").and_then(Value::as_str) {
        Some(f) if JSON_SCHEMA_FORMATS.contains(&f) => None,
        Some("uint8") => Some((0, i64::from(u8::MAX))),
        Some("uint16") => Some((0, i64::from(u16::MAX))),
        Some("uint32") => Some((0, i64::from(u32::MAX))),
        Some("int32") => Some((i64::from(i32::MIN), i64::from(i32::MAX))),
        Some(_) => Some((i64::MIN, i64::MAX)),
        None => None,
    };
    if let Some((min, max)) = bounds {
        schema.remove("format");
        if min != i64::MIN {
            schema.entry("minimum").or_insert(min.into());
        }
        if max != i64::MAX {
            schema.entry("maximum").or_insert(max.into());
        }
    }
    for value in schema.values_mut() {
        match value {
            Value::Object(o) => standard_formats(o),
            Value::Array(items) => {
                for item in items {
                    if let Value::Object(o) = item {
                        standard_formats(o);
                    }
                }
            }
            _ => {}
        }
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
    let s = e.with_causes();
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
    fn schemas_use_only_json_schema_formats() {
        let server = PyroServer::new(Pyro::new(), Profile::WorkspaceFull, HostAccess::default());
        for tool in server.tools() {
            let mut text = serde_json::to_string(&*tool.input_schema).unwrap();
            text += &serde_json::to_string(&tool.output_schema).unwrap();
            for bad in ["uint", "int32", "int64", "double", "float"] {
                assert!(
                    !text.contains(&format!("\"format\":\"{bad}")),
                    "{}: {text}",
                    tool.name
                );
            }
        }
        let mut s = serde_json::json!({"type": "integer", "format": "uint16", "minimum": 0});
        standard_formats(s.as_object_mut().unwrap());
        assert_eq!(
            s,
            serde_json::json!({"type": "integer", "minimum": 0, "maximum": 65535})
        );
        let mut s = serde_json::json!({"type": "string", "format": "date-time"});
        standard_formats(s.as_object_mut().unwrap());
        assert_eq!(s["format"], "date-time");
    }

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
