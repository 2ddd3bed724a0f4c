//! Where pyro keeps things. State (`$PYRO_HOME`, default the XDG data dir)
//! holds VM directories and records; the cache (`$XDG_CACHE_HOME/pyro`)
//! holds the guest kernel, initramfs and environment images, which can be
//! rebuilt at any time. `PYRO_ENVIRONMENT_CACHE_DIR` moves the environment
//! images alone.

use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Paths {
    /// `$PYRO_HOME`: VM directories and records.
    pub home: PathBuf,
    /// Runtime assets: kernel, modules, initramfs.
    pub runtime_cache: PathBuf,
    /// Installed environments.
    pub environment_cache: PathBuf,
    /// Template snapshots for fast start (`PYRO_TEMPLATE_CACHE_DIR`, else
    /// `templates/` in the runtime cache).
    pub template_cache: PathBuf,
}

/// A path from the environment, made absolute: disks name their backing
/// images by these paths, and a relative one would be read relative to
/// the disk.
fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(|v| std::path::absolute(&v).unwrap_or_else(|_| PathBuf::from(v)))
}

fn home_dir() -> PathBuf {
    env_path("HOME").unwrap_or_else(|| PathBuf::from("/root"))
}

impl Paths {
    /// Locations from the environment, with XDG defaults.
    pub fn from_env() -> Paths {
        let home = env_path("PYRO_HOME").unwrap_or_else(|| {
            env_path("XDG_DATA_HOME")
                .unwrap_or_else(|| home_dir().join(".local/share"))
                .join("pyro")
        });
        let cache = env_path("PYRO_CACHE_DIR").unwrap_or_else(|| {
            env_path("XDG_CACHE_HOME")
                .unwrap_or_else(|| home_dir().join(".cache"))
                .join("pyro")
        });
        Paths {
            home,
            template_cache: env_path("PYRO_TEMPLATE_CACHE_DIR")
                .unwrap_or_else(|| cache.join("runtime").join("templates")),
            runtime_cache: cache.join("runtime"),
            environment_cache: env_path("PYRO_ENVIRONMENT_CACHE_DIR")
                .unwrap_or_else(|| cache.join("environments")),
        }
    }

    /// One-shot runs and lifecycle VMs, a directory each.
    pub fn vms(&self) -> PathBuf {
        self.home.join("vms")
    }

    /// Workspaces, a directory each.
    pub fn workspaces(&self) -> PathBuf {
        self.home.join("workspaces")
    }
}

/// What every operation needs to know of its surroundings: where things
/// are kept, and which program to start as each VM's supervisor. The
/// façade holds one; operations take it instead of the façade itself.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub paths: Paths,
    /// The `pyro` binary, started in its hidden supervisor mode per VM.
    pub program: PathBuf,
    /// How many VMs may run at once, when the caller said so; otherwise
    /// `PYRO_MAX_RUNNING_VMS`, if set.
    pub max_running_vms: Option<u64>,
}
