//! `pyro_mcp._native`: the pyro library for Python.
//!
//! The Python package (`crates/pyro-py/python/pyro_mcp`) gives it its
//! public shape: keyword-only methods with the reference's defaults, result
//! dicts, exception types. This module does the work: one [`Native::call`]
//! per façade operation, with the arguments as JSON and the result as
//! JSON, run with the GIL released so Python threads drive VMs in parallel.
//! Errors carry the library's [`ErrorKind`] so Python raises the matching
//! exception class (`pyro_mcp.errors`), with remedies worded as SDK calls.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyro::{
    Command, CreateVm, CreateWorkspace, Discard, ErrorKind, NetworkPolicy, OpenShell, Paths,
    Progress, PublishedPort, Pyro, ReadShell, ReadinessCheck, Remedy, RunParams, SecretInput,
    StartService, UpdateWorkspace, WorkspaceExec,
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// A failure on its way to Python: the exception class's name in
/// `pyro_mcp.errors` and the message.
struct Failure {
    class: &'static str,
    message: String,
}

impl From<pyro::Error> for Failure {
    fn from(e: pyro::Error) -> Failure {
        let class = match e.kind() {
            ErrorKind::NotFound => "NotFoundError",
            ErrorKind::InvalidArgument => "InvalidArgumentError",
            ErrorKind::Conflict => "ConflictError",
            ErrorKind::Unavailable => "UnavailableError",
            ErrorKind::Guest => "GuestError",
            ErrorKind::Internal => "InternalError",
        };
        Failure {
            class,
            message: message(&e),
        }
    }
}

fn invalid(message: impl Into<String>) -> Failure {
    Failure {
        class: "InvalidArgumentError",
        message: message.into(),
    }
}

/// The error and its causes, then what the caller can do, in SDK terms.
fn message(e: &pyro::Error) -> String {
    let s = e.with_causes();
    let remedy = match e.remedy() {
        None => return s,
        Some(Remedy::StartWorkspace { workspace_id }) => {
            format!("call start_workspace({workspace_id:?}) first")
        }
        Some(Remedy::StopWorkspace { workspace_id }) => {
            format!("call stop_workspace({workspace_id:?}) first")
        }
        Some(Remedy::Overwrite) => "choose an output_path that does not exist".into(),
        Some(Remedy::ListWorkspaces) => "list_workspaces() shows them".into(),
        Some(Remedy::ListEnvironments) => "list_environments() shows the catalog".into(),
        Some(Remedy::PullEnvironment { environment }) => {
            format!("pull_environment({environment:?}) repairs it")
        }
        Some(Remedy::AllowHostCompat) => {
            "or pass allow_host_compat=True to run the command on the host, without isolation"
                .into()
        }
        Some(Remedy::NetworkPolicy { policy }) => {
            format!("create the workspace with network_policy={policy:?}")
        }
    };
    format!("{s}; {remedy}")
}

/// The keyword arguments of one call.
struct Args(Map<String, Value>);

impl Args {
    /// The argument `key`, or a type error naming it.
    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<T, Failure> {
        let v = self.0.get(key).cloned().unwrap_or(Value::Null);
        serde_json::from_value(v).map_err(|e| invalid(format!("{key}: {e}")))
    }

    fn id(&self) -> Result<String, Failure> {
        self.get("workspace_id")
    }

    fn command(&self) -> Result<Command, Failure> {
        match self.0.get("command") {
            Some(Value::String(s)) => Ok(Command::Shell(s.clone())),
            Some(Value::Array(_)) => self.get::<Vec<String>>("command").map(Command::Argv),
            _ => Err(invalid(
                "command must be a string (a shell command) or a list of strings (an argv)",
            )),
        }
    }

    fn secret_env(&self) -> Result<BTreeMap<String, String>, Failure> {
        Ok(self.get::<Option<_>>("secret_env")?.unwrap_or_default())
    }
}

fn json<T: serde::Serialize>(v: pyro::Result<T>) -> Result<String, Failure> {
    let v = v?;
    serde_json::to_string(&v).map_err(|e| Failure {
        class: "InternalError",
        message: format!("encoding the result: {e}"),
    })
}

/// Long steps (building an environment, booting, restoring) reported to a
/// Python callable `(area, detail)`, with the GIL taken just for the call.
struct PyProgress(Option<Py<PyAny>>);

impl Progress for PyProgress {
    fn phase(&self, area: &str, detail: &str) {
        if let Some(f) = &self.0 {
            Python::attach(|py| {
                if let Err(e) = f.call1(py, (area, detail)) {
                    // A failing callback must not fail the operation.
                    e.write_unraisable(py, None);
                }
            });
        }
    }
}

/// One façade operation by name.
fn dispatch(
    pyro: &Pyro,
    method: &str,
    args: &str,
    progress: &PyProgress,
) -> Result<String, Failure> {
    let a = match serde_json::from_str(args) {
        Ok(Value::Object(m)) => Args(m),
        _ => return Err(invalid("arguments must be a JSON object")),
    };
    match method {
        "list_environments" => json(Ok(pyro.list_environments())),
        "inspect_environment" => json(pyro.inspect_environment(&a.get::<String>("environment")?)),
        "pull_environment" => {
            json(pyro.pull_environment(&a.get::<String>("environment")?, progress))
        }
        "prune_environments" => json(pyro.prune_environments()),
        "doctor" => json(Ok(pyro.doctor())),
        "run_in_vm" => {
            let mut p = RunParams::new(a.get::<String>("environment")?, a.command()?);
            p.vcpu_count = a.get("vcpu_count")?;
            p.mem_mib = a.get("mem_mib")?;
            p.timeout_seconds = a.get("timeout_seconds")?;
            p.ttl_seconds = a.get("ttl_seconds")?;
            p.network = a.get("network")?;
            p.allow_host_compat = a.get("allow_host_compat")?;
            json(pyro.run_in_vm(&p, progress, &mut Discard))
        }
        "create_vm" => {
            let mut p = CreateVm::new(a.get::<String>("environment")?);
            p.vcpu_count = a.get("vcpu_count")?;
            p.mem_mib = a.get("mem_mib")?;
            p.ttl_seconds = a.get("ttl_seconds")?;
            p.network = a.get("network")?;
            p.allow_host_compat = a.get("allow_host_compat")?;
            json(pyro.create_vm(&p, progress))
        }
        "start_vm" => json(pyro.start_vm(&a.get::<String>("vm_id")?, progress)),
        "exec_vm" => json(pyro.exec_vm(
            &a.get::<String>("vm_id")?,
            &a.command()?,
            a.get("timeout_seconds")?,
            progress,
            &mut Discard,
        )),
        "stop_vm" => json(pyro.stop_vm(&a.get::<String>("vm_id")?)),
        "delete_vm" => json(pyro.delete_vm(&a.get::<String>("vm_id")?)),
        "status_vm" => json(pyro.status_vm(&a.get::<String>("vm_id")?)),
        "network_info_vm" => json(pyro.network_info_vm(&a.get::<String>("vm_id")?)),
        "reap_expired" => json(Ok(pyro.reap_expired())),
        "create_workspace" => {
            let p = CreateWorkspace {
                environment: a.get("environment")?,
                vcpu_count: a.get("vcpu_count")?,
                mem_mib: a.get("mem_mib")?,
                ttl_seconds: a.get("ttl_seconds")?,
                network_policy: a
                    .get::<String>("network_policy")?
                    .parse::<NetworkPolicy>()
                    .map_err(Failure::from)?,
                seed_path: a.get::<Option<PathBuf>>("seed_path")?,
                name: a.get("name")?,
                labels: a.get::<Option<_>>("labels")?.unwrap_or_default(),
                secrets: a
                    .get::<Option<Vec<SecretInput>>>("secrets")?
                    .unwrap_or_default(),
                allow_host_compat: a.get("allow_host_compat")?,
                on_idle: match a.get::<Option<String>>("on_idle")? {
                    Some(s) => s.parse().map_err(Failure::from)?,
                    None => pyro::IdleAction::default(),
                },
            };
            json(pyro.create_workspace(&p, progress))
        }
        "list_workspaces" => json(pyro.list_workspaces()),
        "status_workspace" => json(pyro.status_workspace(&a.id()?)),
        "update_workspace" => {
            let u = UpdateWorkspace {
                name: a.get("name")?,
                clear_name: a.get("clear_name")?,
                labels: a.get::<Option<_>>("labels")?.unwrap_or_default(),
                clear_labels: a.get::<Option<_>>("clear_labels")?.unwrap_or_default(),
            };
            json(pyro.update_workspace(&a.id()?, &u))
        }
        "logs_workspace" => json(pyro.logs_workspace(&a.id()?)),
        "stop_workspace" => json(pyro.stop_workspace(&a.id()?)),
        "start_workspace" => json(pyro.start_workspace(&a.id()?, progress)),
        "pause_workspace" => json(pyro.pause_workspace(&a.id()?)),
        "resume_workspace" => json(pyro.resume_workspace(&a.id()?, progress)),
        "fork_workspace" => {
            let p = pyro::ForkWorkspace {
                count: a.get::<Option<u32>>("count")?.unwrap_or(1),
                names: a.get::<Option<_>>("names")?.unwrap_or_default(),
            };
            json(pyro.fork_workspace(&a.id()?, &p, progress))
        }
        "delete_workspace" => json(pyro.delete_workspace(&a.id()?)),
        "exec_workspace" => {
            let mut p = WorkspaceExec::new(a.command()?);
            p.timeout_seconds = a.get("timeout_seconds")?;
            p.secret_env = a.secret_env()?;
            json(pyro.exec_workspace(&a.id()?, &p, &mut Discard))
        }
        "push_workspace_sync" => json(pyro.push_workspace_sync(
            &a.id()?,
            &a.get::<PathBuf>("source_path")?,
            &a.get::<String>("dest")?,
        )),
        "export_workspace" => json(pyro.export_workspace(
            &a.id()?,
            &a.get::<String>("path")?,
            &a.get::<PathBuf>("output_path")?,
            a.get::<Option<bool>>("force")?.unwrap_or(false),
        )),
        "diff_workspace" => json(pyro.diff_workspace(&a.id()?)),
        "list_workspace_files" => json(pyro.list_workspace_files(
            &a.id()?,
            &a.get::<String>("path")?,
            a.get("recursive")?,
        )),
        "read_workspace_file" => {
            json(pyro.read_workspace_file(&a.id()?, &a.get::<String>("path")?, a.get("max_bytes")?))
        }
        "write_workspace_file" => json(pyro.write_workspace_file(
            &a.id()?,
            &a.get::<String>("path")?,
            &a.get::<String>("text")?,
        )),
        "apply_workspace_patch" => {
            json(pyro.apply_workspace_patch(&a.id()?, &a.get::<String>("patch")?))
        }
        "export_workspace_disk" => json(pyro.export_workspace_disk(
            &a.id()?,
            &a.get::<PathBuf>("output_path")?,
            a.get::<Option<bool>>("force")?.unwrap_or(false),
        )),
        "list_workspace_disk" => {
            json(pyro.list_workspace_disk(&a.id()?, &a.get::<String>("path")?, a.get("recursive")?))
        }
        "read_workspace_disk" => {
            json(pyro.read_workspace_disk(&a.id()?, &a.get::<String>("path")?, a.get("max_bytes")?))
        }
        "create_snapshot" => {
            json(pyro.create_snapshot(&a.id()?, &a.get::<String>("snapshot_name")?))
        }
        "list_snapshots" => json(pyro.list_snapshots(&a.id()?)),
        "delete_snapshot" => {
            json(pyro.delete_snapshot(&a.id()?, &a.get::<String>("snapshot_name")?))
        }
        "reset_workspace" => {
            json(pyro.reset_workspace(&a.id()?, &a.get::<String>("snapshot")?, progress))
        }
        "open_shell" => {
            let p = OpenShell {
                cwd: a.get("cwd")?,
                cols: a.get("cols")?,
                rows: a.get("rows")?,
                secret_env: a.secret_env()?,
            };
            json(pyro.open_shell(&a.id()?, &p))
        }
        "read_shell" => {
            let p = ReadShell {
                cursor: a.get("cursor")?,
                max_chars: a.get("max_chars")?,
                plain: a.get("plain")?,
                wait_for_idle_ms: a.get("wait_for_idle_ms")?,
            };
            json(pyro.read_shell(&a.id()?, &a.get::<String>("shell_id")?, &p))
        }
        "write_shell" => json(pyro.write_shell(
            &a.id()?,
            &a.get::<String>("shell_id")?,
            &a.get::<String>("input")?,
            a.get("append_newline")?,
        )),
        "signal_shell" => json(pyro.signal_shell(
            &a.id()?,
            &a.get::<String>("shell_id")?,
            &a.get::<String>("signal_name")?,
        )),
        "close_shell" => json(pyro.close_shell(&a.id()?, &a.get::<String>("shell_id")?)),
        "start_service" => {
            let mut p = StartService::new(a.command()?);
            p.cwd = a.get("cwd")?;
            p.readiness = a.get::<Option<ReadinessCheck>>("readiness")?;
            p.ready_timeout_seconds = a.get("ready_timeout_seconds")?;
            p.ready_interval_ms = a.get("ready_interval_ms")?;
            p.secret_env = a.secret_env()?;
            p.published_ports = a
                .get::<Option<Vec<PublishedPort>>>("published_ports")?
                .unwrap_or_default();
            json(pyro.start_service(&a.id()?, &a.get::<String>("service_name")?, &p))
        }
        "list_services" => json(pyro.list_services(&a.id()?)),
        "status_service" => json(pyro.status_service(&a.id()?, &a.get::<String>("service_name")?)),
        "stop_service" => json(pyro.stop_service(&a.id()?, &a.get::<String>("service_name")?)),
        "logs_service" => json(pyro.logs_service(
            &a.id()?,
            &a.get::<String>("service_name")?,
            a.get("tail_lines")?,
        )),
        other => Err(invalid(format!("no method {other:?}"))),
    }
}

/// One façade with its configuration.
#[pyclass(frozen, module = "pyro_mcp._native")]
struct Native {
    pyro: Pyro,
}

#[pymethods]
impl Native {
    /// `program` is the bundled `pyro` binary, started as each VM's
    /// supervisor; `home` and `environment_cache` override `PYRO_HOME` and
    /// the environment cache; `max_running_vms` caps running VMs.
    #[new]
    #[pyo3(signature = (program, home=None, environment_cache=None, max_running_vms=None))]
    fn new(
        program: PathBuf,
        home: Option<PathBuf>,
        environment_cache: Option<PathBuf>,
        max_running_vms: Option<u64>,
    ) -> Native {
        let mut paths = Paths::from_env();
        let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
        if let Some(home) = home {
            paths.home = absolute(home);
        }
        if let Some(cache) = environment_cache {
            paths.environment_cache = absolute(cache);
        }
        let mut pyro = Pyro::new().with_paths(paths).with_program(program);
        if let Some(n) = max_running_vms {
            pyro = pyro.with_max_running_vms(n);
        }
        Native { pyro }
    }

    /// The home directory and caches in use.
    fn paths(&self) -> BTreeMap<&'static str, String> {
        let p = self.pyro.paths();
        BTreeMap::from([
            ("home", p.home.display().to_string()),
            ("runtime_cache", p.runtime_cache.display().to_string()),
            (
                "environment_cache",
                p.environment_cache.display().to_string(),
            ),
            ("template_cache", p.template_cache.display().to_string()),
        ])
    }

    /// Runs façade operation `method` with `args` (a JSON object) and
    /// returns its result as JSON. The GIL is released meanwhile;
    /// `progress(area, detail)` is told of long steps.
    #[pyo3(signature = (method, args, progress=None))]
    fn call(
        &self,
        py: Python<'_>,
        method: &str,
        args: &str,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<String> {
        let pyro = &self.pyro;
        let progress = PyProgress(progress);
        py.detach(|| dispatch(pyro, method, args, &progress))
            .map_err(|f| raise(py, f))
    }

    /// Serves MCP over stdin/stdout until the client goes away.
    #[pyo3(signature = (profile, allow_host_paths, allow_host_compat))]
    fn serve_stdio(
        &self,
        py: Python<'_>,
        profile: &str,
        allow_host_paths: Vec<PathBuf>,
        allow_host_compat: bool,
    ) -> PyResult<()> {
        let profile: pyro_mcp::Profile =
            profile.parse().map_err(|m: String| raise(py, invalid(m)))?;
        let access = pyro_mcp::HostAccess::new(allow_host_paths, allow_host_compat)
            .map_err(|m| raise(py, invalid(m)))?;
        let server = pyro_mcp::PyroServer::new(self.pyro.clone(), profile, access);
        py.detach(|| pyro_mcp::run_stdio(server).map_err(|e| e.to_string()))
            .map_err(|e| PyRuntimeError::new_err(format!("mcp server: {e}")))
    }
}

/// The exception `pyro_mcp.errors.<class>(message)`.
fn raise(py: Python<'_>, f: Failure) -> PyErr {
    let class = py
        .import("pyro_mcp.errors")
        .and_then(|m| m.getattr(f.class));
    match class {
        Ok(class) => match class.call1((f.message.clone(),)) {
            Ok(instance) => PyErr::from_value(instance),
            Err(e) => e,
        },
        Err(e) => e,
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Native>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("CATALOG_VERSION", pyro::CATALOG_VERSION)?;
    Ok(())
}
