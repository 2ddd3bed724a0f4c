//! One-shot runs: start a VM (restoring a template when there is one), run
//! one command, stream its output, delete the VM, return the exit code.

use std::collections::BTreeMap;
use std::time::Instant;

use pyro_protocol::{ExecRequest, ExitStatus, WORKSPACE_ROOT};
use serde::{Deserialize, Serialize};

use crate::contract::{defaults, validate_resources, validate_timeout, Command, ExecutionMode};
use crate::error::{Error, Result};
use crate::paths::Context;
use crate::progress::Progress;
use crate::vmm::client::{Capture, OutputSink, VmClient};
use crate::vmm::dir::{self, Shape, VmDir};
use crate::vmm::{admission, launch, templates};
use crate::{assets, environments, host, pool};

/// Parameters of [`Pyro::run_in_vm`](crate::Pyro::run_in_vm).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunParams {
    pub environment: String,
    pub command: Command,
    pub vcpu_count: u32,
    pub mem_mib: u32,
    pub timeout_seconds: u64,
    pub ttl_seconds: u64,
    pub network: bool,
    pub allow_host_compat: bool,
}

impl RunParams {
    pub fn new(environment: impl Into<String>, command: Command) -> RunParams {
        RunParams {
            environment: environment.into(),
            command,
            vcpu_count: defaults::vcpu_count(),
            mem_mib: defaults::mem_mib(),
            timeout_seconds: defaults::timeout_seconds(),
            ttl_seconds: defaults::ttl_seconds(),
            network: false,
            allow_host_compat: false,
        }
    }
}

/// Why a run's VM was deleted.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CleanupReason {
    /// The command ended and the VM was deleted.
    PostExecCleanup,
    /// The VM failed mid-run and was destroyed.
    RunVmErrorCleanup,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cleanup {
    pub deleted: bool,
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub reason: CleanupReason,
}

/// The outcome of a one-shot run; also its `--json` form.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub environment: String,
    pub vm_id: String,
    pub execution_mode: ExecutionMode,
    pub exit_code: i32,
    /// The signal that ended the command, if one did.
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub duration_ms: u64,
    pub timings: RunTimings,
    pub stdout: String,
    pub stderr: String,
    /// Only the last part of a stream is kept (1 MiB); these say whether
    /// earlier output was dropped.
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    pub cleanup: Cleanup,
}

impl RunResult {
    /// The result of a command that ran in the guest of VM `vm_id`.
    pub(crate) fn guest(
        environment: &str,
        vm_id: &str,
        status: ExitStatus,
        capture: Capture<'_>,
        started: Instant,
        timings: RunTimings,
        cleanup: Cleanup,
    ) -> RunResult {
        let (stdout, stdout_truncated) = capture.stdout.finish();
        let (stderr, stderr_truncated) = capture.stderr.finish();
        RunResult {
            environment: environment.into(),
            vm_id: vm_id.into(),
            execution_mode: ExecutionMode::GuestVirtioSerial,
            exit_code: status.exit_code,
            signal: status.signal,
            timed_out: status.timed_out,
            duration_ms: started.elapsed().as_millis() as u64,
            timings,
            stdout,
            stderr,
            stdout_truncated,
            stderr_truncated,
            cleanup,
        }
    }
}

/// How a run's guest came to be.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartKind {
    /// Claimed from the warm pool: restored and warmed before the run.
    Pooled,
    /// Restored from the template for this run.
    Restored,
    /// Booted.
    #[default]
    Booted,
}

/// Where a run's time went, in milliseconds.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunTimings {
    /// `pooled`, `restored` or `booted`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub start: StartKind,
    /// Resolving assets and the environment, creating the VM's disk (or
    /// claiming a warm guest).
    pub prepare_ms: u64,
    /// From starting the supervisor to the agent's welcome (QEMU start,
    /// kernel, agent; or restoring a template).
    pub boot_ms: u64,
    /// The guest was restored from a template snapshot instead of booted
    /// (for this run, or for the pool it was claimed from).
    pub restored: bool,
    /// The guest's own clock at the agent's welcome: kernel start to agent
    /// ready (0 when restored).
    pub guest_boot_ms: u64,
    /// From sending the command to its exit status.
    pub exec_ms: u64,
    /// Deleting the VM.
    pub cleanup_ms: u64,
}

pub(crate) fn validate(p: &RunParams) -> Result<()> {
    validate_resources(p.vcpu_count, p.mem_mib, p.ttl_seconds)?;
    validate_timeout(p.timeout_seconds)?;
    p.command.validate()
}

/// Runs `command` in `/workspace` of the VM `client` is attached to, with
/// the output captured (and streamed to `capture`'s sink).
pub(crate) fn exec_once(
    client: &mut VmClient,
    command: &Command,
    cwd: Option<&str>,
    timeout_seconds: u64,
    capture: &mut Capture<'_>,
) -> Result<ExitStatus> {
    client.exec(
        ExecRequest {
            command: command.clone().into(),
            env: BTreeMap::new(),
            cwd: Some(cwd.unwrap_or(WORKSPACE_ROOT).into()),
            timeout_ms: Some(timeout_seconds * 1000),
            // The disk is thrown away after the command.
            sync_after: false,
        },
        capture,
    )
}

pub(crate) fn run_in_vm(
    ctx: &Context,
    p: &RunParams,
    progress: &dyn Progress,
    sink: &mut dyn OutputSink,
) -> Result<RunResult> {
    validate(p)?;
    // Only a name (no network, nothing built) before the host-compat
    // decision below.
    environments::canonical_name(&ctx.paths, &p.environment)?;
    let started = Instant::now();
    progress.phase(
        "run",
        &format!("phase=create environment={}", p.environment),
    );
    let assets = match assets::ensure(&ctx.paths, progress) {
        Ok(a) => a,
        Err(Error::GuestUnavailable { .. }) if p.allow_host_compat => {
            return run_on_host(p, sink);
        }
        Err(Error::GuestUnavailable { reason, fix, .. }) => {
            return Err(Error::GuestUnavailable {
                reason,
                fix,
                host_compat: true,
            })
        }
        Err(e) => return Err(e),
    };
    let env = environments::ensure_named(&ctx.paths, &p.environment, progress)?;
    launch::collect_garbage(&ctx.paths);

    let id = host::random_id(6);
    let dir = VmDir::new(&ctx.paths, &id);
    let shape = Shape {
        vcpu_count: p.vcpu_count,
        mem_mib: p.mem_mib,
    };
    let spec = dir.spec(&assets, shape, dir.disk(), false, p.network);
    // Restore a saved guest when there is (or can be) one; boot otherwise.
    let template = templates::usable(&ctx.paths, &spec, &env, progress);
    // A warm guest of exactly that template, if one waits (never with a
    // network: each networked guest has its own).
    let poolable = template
        .as_ref()
        .filter(|_| !p.network && pool::pool_size() > 0);
    // After this run (so the filler does not slow it down), the next one
    // finds a guest waiting.
    let _top_up = poolable.map(|_| {
        pool::TopUp::after(
            ctx,
            pool::FillRequest {
                environment: env.name.clone(),
                vcpu_count: p.vcpu_count,
                mem_mib: p.mem_mib,
            },
        )
    });
    if let Some(claimed) = poolable.and_then(|t| pool::claim(&ctx.paths, &templates::key_of(t))) {
        let timings = RunTimings {
            start: StartKind::Pooled,
            prepare_ms: started.elapsed().as_millis() as u64,
            restored: true,
            ..RunTimings::default()
        };
        let (dir, client) = (claimed.dir, claimed.client);
        return finish(&env, p, &dir, client, started, timings, progress, sink);
    }
    create_and_run(
        ctx,
        p,
        &dir,
        &spec,
        template.as_ref(),
        &env,
        started,
        progress,
        sink,
    )
}

/// Creates the run's VM (restoring `template` if there is one) and runs
/// the command on it.
#[allow(clippy::too_many_arguments)]
fn create_and_run(
    ctx: &Context,
    p: &RunParams,
    dir: &VmDir,
    spec: &crate::vmm::qemu::VmSpec,
    template: Option<&templates::Template>,
    env: &environments::Installed,
    started: Instant,
    progress: &dyn Progress,
    sink: &mut dyn OutputSink,
) -> Result<RunResult> {
    let id = dir.id.clone();
    let mut spec = spec.clone();
    let base = match template {
        Some(t) => {
            spec.snapshot = Some(t.state.clone());
            t.disk.clone()
        }
        None => env.rootfs.clone(),
    };
    let record = dir::new_record(&id, &env.name, true, p.ttl_seconds, spec);
    let mut timings = RunTimings::default();
    let mut boot_started = started;
    let created = (|| {
        let _admission = admission::admit(ctx, p.mem_mib)?;
        dir::create(dir, &record, &base)?;
        boot_started = Instant::now();
        progress.phase("run", &format!("phase=start vm_id={id}"));
        let report = launch::start_supervisor(&ctx.program, dir)?;
        let mut client = VmClient::connect(dir)?;
        client.attach(true)?;
        Ok((report, client))
    })();
    let (report, client) = match created {
        Ok(v) => v,
        Err(e) => {
            launch::destroy(dir);
            return Err(e);
        }
    };

    timings.prepare_ms = (boot_started - started).as_millis() as u64;
    timings.boot_ms = report.boot_ms;
    timings.restored = report.restored;
    timings.start = if report.restored {
        StartKind::Restored
    } else {
        StartKind::Booted
    };
    timings.guest_boot_ms = if report.restored {
        0
    } else {
        report.guest_boot_ms
    };
    finish(env, p, dir, client, started, timings, progress, sink)
}

/// Runs the command on the VM `client` owns, then deletes the VM.
#[allow(clippy::too_many_arguments)]
fn finish(
    env: &environments::Installed,
    p: &RunParams,
    dir: &VmDir,
    mut client: VmClient,
    started: Instant,
    mut timings: RunTimings,
    progress: &dyn Progress,
    sink: &mut dyn OutputSink,
) -> Result<RunResult> {
    let id = dir.id.clone();
    progress.phase("run", &format!("phase=execute vm_id={id}"));
    let exec_started = Instant::now();
    let mut capture = Capture::new(sink);
    let outcome = exec_once(
        &mut client,
        &p.command,
        env.working_dir.as_deref(),
        p.timeout_seconds,
        &mut capture,
    );
    timings.exec_ms = exec_started.elapsed().as_millis() as u64;
    let cleanup_started = Instant::now();
    let cleanup = match &outcome {
        Ok(_) => Cleanup {
            deleted: client.stop().is_ok(),
            reason: CleanupReason::PostExecCleanup,
        },
        Err(_) => {
            drop(client);
            launch::destroy(dir);
            Cleanup {
                deleted: true,
                reason: CleanupReason::RunVmErrorCleanup,
            }
        }
    };
    timings.cleanup_ms = cleanup_started.elapsed().as_millis() as u64;
    let status = outcome?;
    Ok(RunResult::guest(
        &env.name, &id, status, capture, started, timings, cleanup,
    ))
}

/// Host compatibility: the command runs on the host, without isolation,
/// with only PATH and HOME in its environment, in a scratch directory.
fn run_on_host(p: &RunParams, sink: &mut dyn OutputSink) -> Result<RunResult> {
    use std::process::Stdio;
    let started = Instant::now();
    let scratch = std::env::temp_dir().join(format!("pyro-compat-{}", host::random_id(6)));
    std::fs::create_dir_all(&scratch).map_err(|e| Error::Io {
        context: format!("create {}", scratch.display()),
        source: e,
    })?;
    let mut cmd = match &p.command {
        Command::Shell(s) => {
            let mut c = std::process::Command::new("/bin/sh");
            c.arg("-lc").arg(s);
            c
        }
        Command::Argv(a) => {
            let mut c = std::process::Command::new(&a[0]);
            c.args(&a[1..]);
            c
        }
    };
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &scratch)
        .current_dir(&scratch)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let result = cmd.output();
    let _ = std::fs::remove_dir_all(&scratch);
    let (code, stdout, stderr) = match result {
        Ok(out) => {
            use std::os::unix::process::ExitStatusExt;
            let code = out
                .status
                .code()
                .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0));
            (code, out.stdout, out.stderr)
        }
        Err(e) => (127, Vec::new(), format!("pyro: {e}\n").into_bytes()),
    };
    sink.stdout(&stdout);
    sink.stderr(&stderr);
    Ok(RunResult {
        environment: p.environment.clone(),
        vm_id: String::new(),
        execution_mode: ExecutionMode::HostCompat,
        exit_code: code,
        signal: None,
        timed_out: false,
        duration_ms: started.elapsed().as_millis() as u64,
        timings: RunTimings::default(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        stdout_truncated: false,
        stderr_truncated: false,
        cleanup: Cleanup {
            deleted: true,
            reason: CleanupReason::PostExecCleanup,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked_before_anything_runs() {
        let mut p = RunParams::new("debian:12", Command::shell("true"));
        assert!(validate(&p).is_ok());
        p.vcpu_count = 0;
        assert!(validate(&p).unwrap_err().to_string().contains("vcpu_count"));
        p.vcpu_count = 1;
        p.timeout_seconds = 0;
        assert!(validate(&p).is_err());
        p.timeout_seconds = 1;
        p.command = Command::shell(" ");
        assert!(validate(&p).is_err());
        let r = serde_json::to_value(CleanupReason::RunVmErrorCleanup).unwrap();
        assert_eq!(r, "run_vm_error_cleanup");
    }
}
