//! `pyro doctor`: what this host can do, and what to fix when it cannot.

use std::path::Path;

use serde::Serialize;

use crate::paths::Paths;
use crate::vmm::jail;
use crate::vmm::qemu::{self, AccelChoice};
use crate::vmm::templates;
use crate::{assets, environments, host};

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct Issue {
    pub problem: String,
    pub remedy: String,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct Kvm {
    pub exists: bool,
    pub readable: bool,
    pub writable: bool,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct Qemu {
    pub binary: Option<String>,
    pub version: Option<String>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct Capabilities {
    pub supports_vm_boot: bool,
    pub supports_guest_exec: bool,
    pub supports_guest_network: bool,
    pub reason: Option<String>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct EnvironmentStatus {
    pub name: String,
    pub installed: bool,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct Runtime {
    pub kernel: Option<String>,
    pub kernel_release: Option<String>,
    pub kernel_source: Option<String>,
    pub initramfs: Option<String>,
    pub agent_sha256: String,
    pub agent_size_bytes: u64,
    pub catalog_version: String,
    pub cache_dir: String,
    pub state_dir: String,
    /// Fast start: whether VMs restore saved templates (`PYRO_FAST_START`),
    /// where those live and how many there are.
    pub fast_start: bool,
    pub template_dir: String,
    pub templates: usize,
    pub environments: Vec<EnvironmentStatus>,
    pub capabilities: Capabilities,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct Networking {
    pub passt_binary: Option<String>,
    pub enabled_by_default: bool,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct Tools {
    pub qemu_img: Option<String>,
    pub mmdebstrap: Option<String>,
    pub mkfs_ext4: Option<String>,
    pub cpio: Option<String>,
    pub apt_get: Option<String>,
    pub dpkg_deb: Option<String>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    pub platform: String,
    pub runtime_ok: bool,
    pub issues: Vec<Issue>,
    pub accelerator: AccelChoice,
    pub kvm: Kvm,
    pub qemu: Qemu,
    pub runtime: Runtime,
    pub networking: Networking,
    pub tools: Tools,
    /// How each VM's QEMU is confined on this host (`vmm::jail`).
    pub protections: jail::Protections,
    /// The memory running guests hold, and what KSM saves or would save.
    pub density: crate::density::Density,
}

fn which(p: &str) -> Option<String> {
    host::which(p).map(|p| p.display().to_string())
}

pub(crate) fn doctor(paths: &Paths) -> DoctorReport {
    let mut issues = Vec::new();
    let mut issue = |problem: String, remedy: &str| {
        issues.push(Issue {
            problem,
            remedy: remedy.to_string(),
        })
    };
    let platform = format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH);
    if platform != "linux-x86_64" {
        issue(
            format!("platform {platform} is not supported"),
            "run pyro on Linux x86_64",
        );
    }
    let accelerator = qemu::choose_accel();
    let kvm = Kvm {
        exists: accelerator.kvm_device,
        readable: std::fs::File::open("/dev/kvm").is_ok(),
        writable: accelerator.kvm_writable,
    };
    let qemu = Qemu {
        binary: which(qemu::QEMU),
        version: qemu::version(),
    };
    if qemu.binary.is_none() {
        issue(
            format!("{} is not installed", qemu::QEMU),
            "run scripts/setup.sh (or apt-get install qemu-system-x86)",
        );
    }
    let tools = Tools {
        qemu_img: which("qemu-img"),
        mmdebstrap: which("mmdebstrap"),
        mkfs_ext4: which("mkfs.ext4"),
        cpio: which("cpio"),
        apt_get: which("apt-get"),
        dpkg_deb: which("dpkg-deb"),
    };
    for (name, found, package) in [
        ("qemu-img", &tools.qemu_img, "qemu-utils"),
        ("mmdebstrap", &tools.mmdebstrap, "mmdebstrap"),
        ("mkfs.ext4", &tools.mkfs_ext4, "e2fsprogs"),
        ("cpio", &tools.cpio, "cpio"),
    ] {
        if found.is_none() {
            issue(
                format!("{name} is not installed"),
                &format!("run scripts/setup.sh (or apt-get install {package})"),
            );
        }
    }
    let assets = assets::inspect(paths);
    let mut reason = None;
    if let Err(e) = &assets {
        let (problem, remedy) = match e {
            crate::error::Error::GuestUnavailable { reason, fix, .. } => {
                (reason.clone(), fix.clone())
            }
            other => (other.to_string(), "run `pyro env pull debian:12`".into()),
        };
        reason = Some(problem.clone());
        issue(problem, &remedy);
    }
    let assets = assets.ok();
    let boot = qemu.binary.is_some() && assets.is_some() && tools.qemu_img.is_some();
    if reason.is_none() && !boot {
        reason = Some("required host tools are missing".into());
    }
    let environments = environments::CATALOG
        .iter()
        .map(|e| EnvironmentStatus {
            name: e.name.to_string(),
            installed: environments::installed(paths, e).is_some(),
        })
        .collect();
    let show = |p: &Path| p.display().to_string();
    DoctorReport {
        platform,
        runtime_ok: issues.is_empty(),
        issues,
        accelerator,
        kvm,
        qemu,
        runtime: Runtime {
            kernel: assets.as_ref().map(|a| show(&a.kernel)),
            kernel_release: assets.as_ref().map(|a| a.kernel_release.clone()),
            kernel_source: assets.as_ref().map(|a| a.kernel_source.clone()),
            initramfs: assets.as_ref().map(|a| show(&a.initramfs)),
            agent_sha256: assets::agent_sha256(),
            agent_size_bytes: assets::AGENT.len() as u64,
            catalog_version: environments::CATALOG_VERSION.into(),
            cache_dir: show(&paths.environment_cache),
            state_dir: show(&paths.home),
            fast_start: templates::enabled(),
            template_dir: show(&paths.template_cache),
            templates: templates::count(paths),
            environments,
            capabilities: Capabilities {
                supports_vm_boot: boot,
                supports_guest_exec: boot,
                supports_guest_network: boot && which("passt").is_some(),
                reason,
            },
        },
        networking: Networking {
            passt_binary: which("passt"),
            enabled_by_default: false,
        },
        tools,
        protections: jail::protections(),
        density: crate::density::report(paths),
    }
}
