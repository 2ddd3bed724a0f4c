//! Fixtures shared by the real-VM tests. Each test gets its own `PYRO_HOME`
//! (so it can check that nothing is left behind); all of them share one
//! cache of kernels, environments and templates that belongs to the test
//! run (`target/test-cache`, or `PYRO_TEST_CACHE_DIR`), never the
//! machine's own: every `pyro` a test starts gets [`hermetic`] settings.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The test run's cache root (`PYRO_CACHE_DIR` of every `pyro` started).
pub fn test_cache() -> PathBuf {
    std::env::var_os("PYRO_TEST_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            root.canonicalize()
                .unwrap_or(root)
                .join("target/test-cache")
        })
}

/// Makes `cmd` use the test run's cache and nothing of the machine's or
/// the caller's pyro settings.
pub fn hermetic(cmd: &mut Command) -> &mut Command {
    for var in [
        "PYRO_ENVIRONMENT_CACHE_DIR",
        "PYRO_TEMPLATE_CACHE_DIR",
        "PYRO_KERNEL_IMAGE",
        "PYRO_FAST_START",
        "PYRO_MAX_RUNNING_VMS",
        "PYRO_MAX_GUEST_MEMORY_MIB",
        "PYRO_ACCEL",
        "XDG_CACHE_HOME",
        "XDG_DATA_HOME",
        "PYRO_ENVIRONMENT_REGISTRY",
        "PYRO_INSECURE_REGISTRIES",
        "PYRO_REGISTRY_CA",
        "REGISTRY_AUTH_FILE",
        "XDG_RUNTIME_DIR",
    ] {
        cmd.env_remove(var);
    }
    // No registry credentials of the machine's.
    cmd.env("DOCKER_CONFIG", "/nonexistent/pyro-test");
    // No warm pool unless a test asks for one: a pooled guest outlives the
    // run that started its filler.
    cmd.env("PYRO_POOL_SIZE", "0");
    cmd.env("PYRO_CACHE_DIR", test_cache())
}

/// The paths the Rust SDK should use for a test with home `home`.
pub fn sdk_paths(home: &Path) -> pyro::Paths {
    let cache = test_cache();
    pyro::Paths {
        home: home.to_path_buf(),
        runtime_cache: cache.join("runtime"),
        environment_cache: cache.join("environments"),
        template_cache: cache.join("runtime/templates"),
    }
}

/// Where the VM in directory `vm_dir` keeps its sockets and console:
/// outside it, in a short directory keyed by a hash of its path (UNIX
/// socket paths are limited to 107 bytes). Computed independently of the
/// library: `sockets_root()/<first 8 bytes of sha256(path), hex>`.
pub fn sockets_dir(vm_dir: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(vm_dir.as_os_str().as_encoded_bytes());
    let key: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc_geteuid() };
    let root = if euid == 0 {
        PathBuf::from("/run/pyro")
    } else {
        PathBuf::from(format!("/tmp/pyro-{euid}"))
    };
    root.join(key)
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Tests that need root (network namespaces, other users) call this
/// first and return when it says no.
pub fn running_as_root(test: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false);
    if !root {
        eprintln!("skipped {test}: it needs root");
    }
    root
}

pub struct Sandbox {
    pub home: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            home: tempfile::Builder::new()
                .prefix("pyro-test-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pyro"));
        hermetic(&mut c);
        c.env("PYRO_HOME", self.home.path()).stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// `pyro run --json ENV -- COMMAND...`, parsed.
    pub fn run_json(&self, env: &str, command: &[&str]) -> serde_json::Value {
        let mut args = vec!["run", "--json", env, "--"];
        args.extend_from_slice(command);
        let out = self.run(&args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "no JSON from pyro ({e}): stdout={} stderr={}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    pub fn vm_dirs(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.home.path().join("vms")) {
            Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Processes whose command line mentions this sandbox's home: its
    /// supervisors and QEMUs.
    pub fn processes(&self) -> Vec<String> {
        processes_mentioning(self.home.path())
    }

    /// Waits until no VM directory and no process of this sandbox remain.
    pub fn assert_clean_within(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            let dirs = self.vm_dirs();
            let procs = self.processes();
            if dirs.is_empty() && procs.is_empty() {
                return;
            }
            if start.elapsed() > limit {
                panic!("left behind after {limit:?}: dirs={dirs:?} processes={procs:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Sandbox {
    /// A failed test must not leave VMs running: end whatever this
    /// sandbox's home still has (supervisors take their QEMU with them).
    fn drop(&mut self) {
        let home = self.home.path().to_string_lossy().into_owned();
        let _ = Command::new("pkill")
            .args(["-9", "-f", &format!("__supervise {home}")])
            .status();
    }
}

pub fn processes_mentioning(needle: &Path) -> Vec<String> {
    let needle = needle.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false);
        if cmdline.contains(&needle) && !zombie {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}): stdout={} stderr={}",
            stdout(out),
            stderr(out)
        )
    })
}

/// `pyro workspace ARGS... --json`, which must succeed.
pub fn ws(sb: &Sandbox, args: &[&str]) -> serde_json::Value {
    let mut full = vec!["workspace"];
    full.extend_from_slice(args);
    // Options go before `--`; what follows it is the command.
    match full.iter().position(|a| *a == "--") {
        Some(i) => full.insert(i, "--json"),
        None => full.push("--json"),
    }
    let out = sb.run(&full);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    json(&out)
}

/// `pyro workspace exec ID --json -- COMMAND`.
pub fn exec(sb: &Sandbox, id: &str, command: &str) -> serde_json::Value {
    let out = sb.run(&["workspace", "exec", id, "--json", "--", command]);
    json(&out)
}
