//! One-shot runs: boot a VM, run one command, stream its output, delete the
//! VM, return the exit code.

use std::collections::BTreeMap;
use std::time::Instant;

use pyro_protocol::{Command, ExecRequest};
use serde::{Deserialize, Serialize};

use crate::client::{Capture, OutputSink, VmClient};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::vm::{self, VmDir};
use crate::{assets, environments, host, qemu, templates, Pyro};

/// Parameters of [`Pyro::run_in_vm`]; defaults match the CLI's.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunParams {
    pub environment: String,
    /// One element: a shell command string for `/bin/sh -lc`. Several: an
    /// argv, run as is.
    pub command: Vec<String>,
    pub vcpu_count: u32,
    pub mem_mib: u32,
    pub timeout_seconds: u64,
    pub ttl_seconds: u64,
    pub network: bool,
    pub allow_host_compat: bool,
}

impl RunParams {
    pub fn new(environment: impl Into<String>, command: Vec<String>) -> RunParams {
        RunParams {
            environment: environment.into(),
            command,
            vcpu_count: 1,
            mem_mib: 1024,
            timeout_seconds: 30,
            ttl_seconds: 600,
            network: false,
            allow_host_compat: false,
        }
    }
}

/// How a command was executed.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionMode {
    /// In the guest, through the agent on its virtio-serial port.
    GuestVirtioSerial,
    /// On the host, without isolation (`--allow-host-compat`).
    HostCompat,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cleanup {
    pub deleted: bool,
    pub reason: String,
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
    pub cleanup: Cleanup,
}

/// Where a run's time went, in milliseconds.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunTimings {
    /// Resolving assets and the environment, creating the VM's disk.
    pub prepare_ms: u64,
    /// From starting the supervisor to the agent's welcome (QEMU start,
    /// kernel, agent; or restoring a template).
    pub boot_ms: u64,
    /// The guest was restored from a template snapshot instead of booted.
    pub restored: bool,
    /// The guest's own clock at the agent's welcome: kernel start to agent
    /// ready (0 when restored).
    pub guest_boot_ms: u64,
    /// From sending the command to its exit status.
    pub exec_ms: u64,
    /// Deleting the VM.
    pub cleanup_ms: u64,
}

/// Turns the words after `--` into a command, by the one rule: exactly one
/// word is a shell command string, several are an argv.
pub fn command_from_args(args: &[String]) -> Result<Command> {
    match args {
        [] => Err(Error::InvalidArgument(
            "command is required after --".into(),
        )),
        [one] if one.trim().is_empty() => Err(Error::InvalidArgument(
            "command is required after --".into(),
        )),
        [one] => Ok(Command::Shell(one.clone())),
        many => Ok(Command::Argv(many.to_vec())),
    }
}

/// The limits every VM's resources share (runs and workspaces).
pub(crate) fn validate_resources(vcpu_count: u32, mem_mib: u32, ttl_seconds: u64) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidArgument(m));
    if !(1..=8).contains(&vcpu_count) {
        return bad(format!("vcpu_count must be 1 to 8, not {vcpu_count}"));
    }
    if !(256..=32768).contains(&mem_mib) {
        return bad(format!("mem_mib must be 256 to 32768, not {mem_mib}"));
    }
    if !(1..=86_400).contains(&ttl_seconds) {
        return bad(format!("ttl_seconds must be 1 to 86400, not {ttl_seconds}"));
    }
    Ok(())
}

pub(crate) fn validate(p: &RunParams) -> Result<()> {
    validate_resources(p.vcpu_count, p.mem_mib, p.ttl_seconds)?;
    if p.timeout_seconds == 0 {
        return Err(Error::InvalidArgument(
            "timeout_seconds must be at least 1".into(),
        ));
    }
    Ok(())
}

pub(crate) fn run_in_vm(
    pyro: &Pyro,
    p: &RunParams,
    progress: &dyn Progress,
    sink: &mut dyn OutputSink,
) -> Result<RunResult> {
    validate(p)?;
    let command = command_from_args(&p.command)?;
    let entry = environments::lookup(&p.environment)?;
    let started = Instant::now();
    progress.phase(
        "run",
        &format!("phase=create environment={}", p.environment),
    );
    let assets = match assets::ensure(&pyro.paths, progress) {
        Ok(a) => a,
        Err(Error::GuestUnavailable { .. }) if p.allow_host_compat => {
            return run_on_host(p, command, sink);
        }
        Err(e) => return Err(e),
    };
    let env = environments::ensure(&pyro.paths, entry, false, progress)?;
    vm::collect_garbage(&pyro.paths);

    let id = host::random_id(6);
    let dir = VmDir::new(&pyro.paths, &id);
    let accel = host::choose_accel();
    let mut spec = qemu::VmSpec {
        accel: accel.accel,
        vcpu_count: p.vcpu_count,
        mem_mib: p.mem_mib,
        kernel: assets.kernel.clone(),
        initramfs: assets.initramfs.clone(),
        disk: dir.disk(),
        disk_cache_unsafe: true,
        tsc_khz: host::tsc_khz(),
        agent_socket: dir.agent_socket(),
        qmp_socket: dir.qmp_socket(),
        console_log: dir.console_log(),
        network_socket: p.network.then(|| host::network_socket(&id)),
        snapshot: None,
    };
    // Restore a saved guest when there is (or can be) one; boot otherwise.
    let template = templates::usable(&pyro.paths, &spec, &env, progress);
    let base = match &template {
        Some(t) => {
            spec.snapshot = Some(t.state.clone());
            t.disk.clone()
        }
        None => env.rootfs.clone(),
    };
    let record = vm::new_record(&id, entry.name, true, p.ttl_seconds, spec);
    let mut timings = RunTimings::default();
    let boot_started = std::cell::Cell::new(started);
    let created = vm::create(&dir, &record, &base)
        .and_then(|()| {
            boot_started.set(Instant::now());
            progress.phase("run", &format!("phase=start vm_id={id}"));
            vm::start_supervisor(&pyro.program, &dir)
        })
        .and_then(|report| {
            let mut client = VmClient::connect(&dir)?;
            client.attach(true)?;
            Ok((report, client))
        });
    let (report, mut client) = match created {
        Ok(v) => v,
        Err(e) => {
            vm::destroy(&dir);
            return Err(e);
        }
    };

    timings.prepare_ms = (boot_started.get() - started).as_millis() as u64;
    timings.boot_ms = report.boot_ms;
    timings.restored = report.restored;
    timings.guest_boot_ms = if report.restored {
        0
    } else {
        report.guest_boot_ms
    };
    progress.phase("run", &format!("phase=execute vm_id={id}"));
    let exec_started = Instant::now();
    let mut capture = Capture::new(sink);
    let request = ExecRequest {
        command,
        env: BTreeMap::new(),
        cwd: Some("/workspace".into()),
        timeout_ms: Some(p.timeout_seconds * 1000),
        // The disk is thrown away after the run.
        sync_after: false,
    };
    let outcome = client.exec(request, &mut capture);
    timings.exec_ms = exec_started.elapsed().as_millis() as u64;
    let cleanup_started = Instant::now();
    let (cleanup_reason, deleted) = match &outcome {
        Ok(_) => ("post_exec_cleanup", client.delete().is_ok()),
        Err(_) => {
            drop(client);
            vm::destroy(&dir);
            ("run_vm_error_cleanup", true)
        }
    };
    timings.cleanup_ms = cleanup_started.elapsed().as_millis() as u64;
    let status = outcome?;
    Ok(RunResult {
        environment: entry.name.to_string(),
        vm_id: id,
        execution_mode: ExecutionMode::GuestVirtioSerial,
        exit_code: status.exit_code,
        signal: status.signal,
        timed_out: status.timed_out,
        duration_ms: started.elapsed().as_millis() as u64,
        timings,
        stdout: String::from_utf8_lossy(&capture.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&capture.stderr).into_owned(),
        cleanup: Cleanup {
            deleted,
            reason: cleanup_reason.into(),
        },
    })
}

/// `--allow-host-compat`: the command runs on the host, without isolation,
/// with only PATH and HOME in its environment, in a scratch directory.
fn run_on_host(p: &RunParams, command: Command, sink: &mut dyn OutputSink) -> Result<RunResult> {
    use std::process::Stdio;
    let started = Instant::now();
    let scratch = std::env::temp_dir().join(format!("pyro-compat-{}", host::random_id(6)));
    std::fs::create_dir_all(&scratch).map_err(|e| Error::Io {
        context: format!("create {}", scratch.display()),
        source: e,
    })?;
    let mut cmd = match &command {
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
        cleanup: Cleanup {
            deleted: true,
            reason: "post_exec_cleanup".into(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_word_is_a_shell_string_and_several_are_an_argv() {
        assert_eq!(
            command_from_args(&words(&["python3 -c \"print(1)\""])).unwrap(),
            Command::Shell("python3 -c \"print(1)\"".into())
        );
        assert_eq!(
            command_from_args(&words(&["sh", "-c", "echo \"$0\"", "hi"])).unwrap(),
            Command::Argv(words(&["sh", "-c", "echo \"$0\"", "hi"]))
        );
        assert!(command_from_args(&[]).is_err());
        assert!(command_from_args(&words(&["  "])).is_err());
    }

    #[test]
    fn limits_are_checked() {
        let mut p = RunParams::new("debian:12", words(&["true"]));
        assert!(validate(&p).is_ok());
        p.vcpu_count = 0;
        assert!(validate(&p).unwrap_err().to_string().contains("vcpu_count"));
        p.vcpu_count = 1;
        p.mem_mib = 64;
        assert!(validate(&p).unwrap_err().to_string().contains("mem_mib"));
        p.mem_mib = 1024;
        p.timeout_seconds = 0;
        assert!(validate(&p).is_err());
    }
}
