//! The QEMU command line, as a pure function of a [`VmSpec`].
//!
//! The machine is QEMU's `microvm` with ACPI (the cloud kernel finds its
//! virtio-mmio devices through ACPI), no default devices, one virtio disk,
//! a virtio-serial port for the agent, virtio-rng for entropy, the serial
//! console captured to a file and QMP on a socket. QEMU's seccomp sandbox is
//! on, with spawning denied.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

pub const QEMU: &str = "qemu-system-x86_64";

/// The size of TCG's cache of translated code, in MiB. QEMU's default
/// (1 GiB on a large host) would all count against a jailed QEMU's memory
/// once used; a quarter of it holds a busy guest's code.
pub const TCG_CODE_CACHE_MIB: u64 = 256;

/// `qemu-system-x86_64 --version`, first line.
pub fn version() -> Option<String> {
    let out = Command::new(QEMU)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_owned)
}

/// Which accelerator QEMU uses.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The accelerator to use, and why.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
    pub kvm_device: bool,
    pub kvm_writable: bool,
    pub cpu_virtualization_flag: bool,
}

/// KVM only when `/dev/kvm` opens read-write *and* the CPU advertises
/// hardware virtualization (`vmx`/`svm`); nested paravirtual KVM without
/// those flags boots stock kernels too slowly to use. `PYRO_ACCEL` overrides.
pub fn choose_accel() -> AccelChoice {
    let kvm_device = Path::new("/dev/kvm").exists();
    let kvm_writable = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flag = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    let mk = |accel, reason: &str| AccelChoice {
        accel,
        reason: reason.into(),
        kvm_device,
        kvm_writable,
        cpu_virtualization_flag: flag,
    };
    match std::env::var("PYRO_ACCEL").ok().as_deref() {
        Some("kvm") => return mk(Accel::Kvm, "PYRO_ACCEL=kvm"),
        Some("tcg") => return mk(Accel::Tcg, "PYRO_ACCEL=tcg"),
        _ => {}
    }
    if kvm_writable && flag {
        mk(
            Accel::Kvm,
            "/dev/kvm is usable and the CPU has hardware virtualization",
        )
    } else if !kvm_device {
        mk(Accel::Tcg, "/dev/kvm does not exist")
    } else if !kvm_writable {
        mk(
            Accel::Tcg,
            "/dev/kvm is not readable and writable by this user",
        )
    } else {
        mk(
            Accel::Tcg,
            "/dev/kvm exists but the CPU has no vmx/svm flag (nested paravirtual KVM is too slow for stock kernels)",
        )
    }
}

/// The guest's side of its user-mode network: the same for every VM, since
/// each has a passt of its own (`host::spawn_passt`).
pub mod net {
    pub const INTERFACE: &str = "eth0";
    pub const ADDRESS: &str = "10.0.2.15";
    pub const PREFIX: u8 = 24;
    pub const SUBNET: &str = "10.0.2.0/24";
    pub const GATEWAY: &str = "10.0.2.2";
    /// passt answers DNS here by forwarding to the host's resolver.
    pub const DNS: &str = "10.0.2.3";
    pub const MAC: &str = "52:54:00:12:34:56";

    /// Where a VM's passt socket lives: outside `$PYRO_HOME`, whose parents
    /// (a home directory) the unprivileged passt may not traverse, in a
    /// directory whose name nobody can guess ahead.
    pub fn socket_path(vm_id: &str) -> std::path::PathBuf {
        std::env::temp_dir()
            .join(format!("pyro-net-{vm_id}-{}", crate::host::random_id(8)))
            .join("passt.sock")
    }
}

/// Everything QEMU needs to start one VM.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmSpec {
    pub accel: Accel,
    pub vcpu_count: u32,
    pub mem_mib: u32,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// The VM's own disk (a qcow2 overlay on the environment image).
    pub disk: PathBuf,
    /// Writes may be lost on a host crash (one-shot VMs, whose disk is
    /// thrown away anyway).
    pub disk_cache_unsafe: bool,
    /// Host TSC frequency, passed as `tsc_early_khz` under TCG.
    pub tsc_khz: Option<u64>,
    pub agent_socket: PathBuf,
    pub qmp_socket: PathBuf,
    pub console_log: PathBuf,
    /// The user-mode network's socket (passt); no network device at all
    /// when absent.
    #[serde(default)]
    pub network_socket: Option<PathBuf>,
    /// Restore this saved VM state (a template, see `templates`) instead of
    /// booting; QEMU reads it from its standard input.
    #[serde(default)]
    pub snapshot: Option<PathBuf>,
}

pub fn kernel_cmdline(spec: &VmSpec) -> String {
    let mut parts = vec![
        "console=ttyS0".to_string(),
        "quiet".into(),
        "panic=-1".into(),
        "reboot=t".into(),
        "8250.nr_uarts=1".into(),
        "random.trust_cpu=on".into(),
    ];
    if spec.accel == Accel::Tcg {
        if let Some(khz) = spec.tsc_khz {
            parts.push(format!("tsc_early_khz={khz}"));
        }
    }
    parts.join(" ")
}

/// A path inside a QEMU option list, where a comma would end the value
/// (and could start another option): commas are doubled.
fn opt(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// Arguments after the program name.
pub fn args(spec: &VmSpec) -> Vec<OsString> {
    let (accel, cpu) = match spec.accel {
        Accel::Kvm => ("kvm".to_string(), "host"),
        Accel::Tcg => (
            format!("tcg,thread=multi,tb-size={TCG_CODE_CACHE_MIB}"),
            "max",
        ),
    };
    let mut a: Vec<OsString> = ["-M", "microvm,acpi=on", "-accel", &accel, "-cpu", cpu]
        .into_iter()
        .map(OsString::from)
        .collect();
    if let Some(sock) = &spec.network_socket {
        for s in [
            "-netdev".to_string(),
            format!(
                "stream,id=n0,server=off,addr.type=unix,addr.path={}",
                opt(sock)
            ),
            "-device".into(),
            format!("virtio-net-device,netdev=n0,mac={}", net::MAC),
        ] {
            a.push(s.into());
        }
    }
    for s in [
        "-smp".to_string(),
        spec.vcpu_count.to_string(),
        "-m".into(),
        format!("{}M", spec.mem_mib),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        "-sandbox".into(),
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
        // Appended, so the supervisor can cut the file while QEMU writes.
        "-chardev".into(),
        format!("file,id=console,path={},append=on", opt(&spec.console_log)),
        "-serial".into(),
        "chardev:console".into(),
        "-kernel".into(),
        spec.kernel.display().to_string(),
        "-initrd".into(),
        spec.initramfs.display().to_string(),
        "-append".into(),
        kernel_cmdline(spec),
        "-drive".into(),
        format!(
            "id=root,file={},format=qcow2,if=none,discard=unmap,cache={}",
            opt(&spec.disk),
            if spec.disk_cache_unsafe {
                "unsafe"
            } else {
                "writeback"
            }
        ),
        "-device".into(),
        "virtio-blk-device,drive=root".into(),
        "-object".into(),
        "rng-random,id=rng0,filename=/dev/urandom".into(),
        "-device".into(),
        "virtio-rng-device,rng=rng0".into(),
        // The guest reports memory it freed (in 2 MiB runs), and QEMU gives
        // it back to the host: an idle guest that once ran something big
        // does not keep holding it.
        "-device".into(),
        "virtio-balloon-device,free-page-reporting=on".into(),
        "-device".into(),
        "virtio-serial-device".into(),
        "-chardev".into(),
        format!(
            "socket,id=agent,path={},server=on,wait=off",
            opt(&spec.agent_socket)
        ),
        "-device".into(),
        format!(
            "virtserialport,chardev=agent,name={}",
            pyro_protocol::PORT_NAME
        ),
        "-chardev".into(),
        format!(
            "socket,id=qmp,path={},server=on,wait=off",
            opt(&spec.qmp_socket)
        ),
        "-mon".into(),
        "chardev=qmp,mode=control".into(),
    ] {
        a.push(s.into());
    }
    if spec.snapshot.is_some() {
        a.push("-incoming".into());
        a.push("fd:0".into());
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(accel: Accel) -> VmSpec {
        VmSpec {
            accel,
            vcpu_count: 2,
            mem_mib: 1024,
            kernel: "/c/vmlinuz".into(),
            initramfs: "/c/initramfs.cpio".into(),
            disk: "/v/disk.qcow2".into(),
            disk_cache_unsafe: true,
            tsc_khz: Some(2_596_128),
            agent_socket: "/v/agent.sock".into(),
            qmp_socket: "/v/qmp.sock".into(),
            console_log: "/v/console.log".into(),
            network_socket: None,
            snapshot: None,
        }
    }

    fn render(spec: &VmSpec) -> String {
        args(spec)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn tcg_command_line() {
        assert_eq!(
            render(&spec(Accel::Tcg)),
            "-M microvm,acpi=on -accel tcg,thread=multi,tb-size=256 -cpu max -smp 2 -m 1024M -nodefaults \
             -no-user-config -nographic -no-reboot \
             -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny \
             -chardev file,id=console,path=/v/console.log,append=on -serial chardev:console \
             -kernel /c/vmlinuz -initrd /c/initramfs.cpio \
             -append console=ttyS0 quiet panic=-1 reboot=t 8250.nr_uarts=1 random.trust_cpu=on \
             tsc_early_khz=2596128 \
             -drive id=root,file=/v/disk.qcow2,format=qcow2,if=none,discard=unmap,cache=unsafe \
             -device virtio-blk-device,drive=root -object rng-random,id=rng0,filename=/dev/urandom \
             -device virtio-rng-device,rng=rng0 \
             -device virtio-balloon-device,free-page-reporting=on -device virtio-serial-device \
             -chardev socket,id=agent,path=/v/agent.sock,server=on,wait=off \
             -device virtserialport,chardev=agent,name=org.pyro.agent \
             -chardev socket,id=qmp,path=/v/qmp.sock,server=on,wait=off -mon chardev=qmp,mode=control"
        );
    }

    #[test]
    fn a_snapshot_is_restored_from_standard_input() {
        let mut s = spec(Accel::Tcg);
        assert!(!render(&s).contains("-incoming"));
        s.snapshot = Some("/t/state.bin".into());
        assert!(render(&s).ends_with(" -incoming fd:0"));
    }

    #[test]
    fn a_network_adds_one_virtio_nic_on_the_passt_socket() {
        let mut s = spec(Accel::Tcg);
        assert!(!render(&s).contains("netdev"));
        s.network_socket = Some("/v/net/passt.sock".into());
        assert!(render(&s).contains(
            "-netdev stream,id=n0,server=off,addr.type=unix,addr.path=/v/net/passt.sock -device virtio-net-device,netdev=n0,mac=52:54:00:12:34:56"
        ));
    }

    #[test]
    fn commas_in_paths_cannot_add_options() {
        let mut s = spec(Accel::Tcg);
        s.disk = "/v/a,readonly=on/disk.qcow2".into();
        assert!(render(&s).contains("file=/v/a,,readonly=on/disk.qcow2,format=qcow2"));
    }

    #[test]
    fn kvm_uses_host_cpu_and_no_tsc_hint() {
        let line = render(&spec(Accel::Kvm));
        assert!(line.contains("-accel kvm -cpu host"));
        assert!(!line.contains("tsc_early_khz"));
    }
}
