//! Runtime assets: the guest kernel, the kernel modules the guest needs
//! before its root disk exists, and the initramfs that carries them with the
//! agent as `/init`.
//!
//! The kernel is Debian's `linux-image-cloud-amd64` (every virtio driver is a
//! module there), fetched with `apt-get download` and unpacked with
//! `dpkg-deb`, then cached with a manifest. `PYRO_KERNEL_IMAGE` (and
//! optionally `PYRO_KERNEL_MODULES_DIR`, a `/lib/modules/<release>`
//! directory) supply a kernel from elsewhere. The initramfs is rebuilt
//! whenever the agent or the kernel changes: its file name carries a hash of
//! both.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::host::{self, hex, FileLock};
use crate::paths::Paths;
use crate::progress::Progress;

/// The guest agent, built static by this crate's build script.
pub static AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pyro-agent"));

/// Debian's metapackage for the cloud kernel.
pub const KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";

/// Drivers the guest needs before its root disk is mounted; their
/// dependencies are added from `modules.dep`.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "virtio_net",
    "virtio_rng",
    // Free page reporting: memory the guest frees goes back to the host.
    "virtio_balloon",
];

/// 2: the balloon driver joined the guest modules.
const KERNEL_MANIFEST_VERSION: u32 = 2;

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelManifest {
    pub format_version: u32,
    /// The versioned Debian package, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub package: String,
    pub package_version: String,
    /// `uname -r` of the kernel.
    pub release: String,
    pub vmlinuz_sha256: String,
    pub vmlinuz_size: u64,
    /// Module files (relative to `modules/`) in load order.
    pub module_order: Vec<String>,
}

/// Resolved, ready-to-boot assets.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeAssets {
    pub kernel: PathBuf,
    pub kernel_release: String,
    /// Where the kernel came from: a Debian package name and version, or
    /// the override path.
    pub kernel_source: String,
    pub initramfs: PathBuf,
    pub agent_sha256: String,
}

fn unavailable(reason: impl Into<String>, remedy: impl Into<String>) -> Error {
    Error::GuestUnavailable {
        reason: reason.into(),
        fix: remedy.into(),
        host_compat: false,
    }
}

pub fn agent_sha256() -> String {
    hex(&Sha256::digest(AGENT))
}

/// Where a kernel comes from and which modules go with it.
struct KernelSource {
    kernel: PathBuf,
    release: String,
    description: String,
    /// Module files in load order, as (absolute path, file name).
    modules: Vec<PathBuf>,
}

/// Makes sure the kernel and initramfs exist, fetching or building them on
/// first use.
pub fn ensure(paths: &Paths, progress: &dyn Progress) -> Result<RuntimeAssets> {
    let source = match std::env::var_os("PYRO_KERNEL_IMAGE").filter(|v| !v.is_empty()) {
        Some(image) => override_kernel(PathBuf::from(image))?,
        None => cached_debian_kernel(paths, progress)?,
    };
    let initramfs = ensure_initramfs(paths, &source)?;
    Ok(RuntimeAssets {
        kernel: source.kernel,
        kernel_release: source.release,
        kernel_source: source.description,
        initramfs,
        agent_sha256: agent_sha256(),
    })
}

/// What `ensure` would use, without fetching or building anything.
pub fn inspect(paths: &Paths) -> Result<RuntimeAssets> {
    let source = match std::env::var_os("PYRO_KERNEL_IMAGE").filter(|v| !v.is_empty()) {
        Some(image) => override_kernel(PathBuf::from(image))?,
        None => {
            let dir = paths.runtime_cache.join("kernel");
            let manifest = read_kernel_manifest(&dir).ok_or_else(|| {
                unavailable(
                    format!("the guest kernel is not installed in {}", dir.display()),
                    "run `pyro env pull debian:12` (or any `pyro run`) to fetch it",
                )
            })?;
            debian_source(&dir, manifest)?
        }
    };
    let initramfs = initramfs_path(paths, &source);
    Ok(RuntimeAssets {
        kernel: source.kernel,
        kernel_release: source.release,
        kernel_source: source.description,
        initramfs,
        agent_sha256: agent_sha256(),
    })
}

fn override_kernel(image: PathBuf) -> Result<KernelSource> {
    if !image.is_file() {
        return Err(unavailable(
            format!("the guest kernel {} does not exist", image.display()),
            "point PYRO_KERNEL_IMAGE at a bzImage/vmlinuz file, or unset it to use Debian's cloud kernel",
        ));
    }
    let modules_dir = std::env::var_os("PYRO_KERNEL_MODULES_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let (release, modules) = match modules_dir {
        Some(dir) => {
            let dep = fs::read_to_string(dir.join("modules.dep")).map_err(|e| {
                unavailable(
                    format!("cannot read {}/modules.dep: {e}", dir.display()),
                    "point PYRO_KERNEL_MODULES_DIR at the kernel's /lib/modules/<release> directory",
                )
            })?;
            let order = module_load_order(&dep, GUEST_MODULES)?;
            let release = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (
                release,
                order.into_iter().map(|rel| dir.join(rel)).collect(),
            )
        }
        // A kernel with the virtio drivers built in needs no modules.
        None => ("custom".to_string(), Vec::new()),
    };
    Ok(KernelSource {
        description: format!("PYRO_KERNEL_IMAGE={}", image.display()),
        kernel: image,
        release,
        modules,
    })
}

fn read_kernel_manifest(dir: &Path) -> Option<KernelManifest> {
    let text = fs::read_to_string(dir.join("kernel.json")).ok()?;
    let m: KernelManifest = serde_json::from_str(&text).ok()?;
    (m.format_version == KERNEL_MANIFEST_VERSION).then_some(m)
}

fn debian_source(dir: &Path, m: KernelManifest) -> Result<KernelSource> {
    let kernel = dir.join("vmlinuz");
    let size = fs::metadata(&kernel).map(|md| md.len()).unwrap_or(0);
    if size != m.vmlinuz_size {
        return Err(unavailable(
            format!(
                "the cached guest kernel {} is missing or damaged",
                kernel.display()
            ),
            format!(
                "delete {} and run `pyro env pull debian:12` to fetch it again",
                dir.display()
            ),
        ));
    }
    Ok(KernelSource {
        kernel,
        release: m.release.clone(),
        description: format!("{} {}", m.package, m.package_version),
        modules: m
            .module_order
            .iter()
            .map(|f| dir.join("modules").join(f))
            .collect(),
    })
}

fn cached_debian_kernel(paths: &Paths, progress: &dyn Progress) -> Result<KernelSource> {
    let dir = paths.runtime_cache.join("kernel");
    if let Some(m) = read_kernel_manifest(&dir) {
        if let Ok(source) = debian_source(&dir, m) {
            return Ok(source);
        }
    }
    fs::create_dir_all(&paths.runtime_cache)
        .ctx(|| format!("create {}", paths.runtime_cache.display()))?;
    let _lock = FileLock::acquire(&paths.runtime_cache.join(".kernel.lock"))?;
    // Another process may have fetched it while we waited.
    if let Some(m) = read_kernel_manifest(&dir) {
        if let Ok(source) = debian_source(&dir, m) {
            return Ok(source);
        }
    }
    match crate::registry::environment_registry() {
        Some(registry) => {
            let reference = format!("{registry}/{}", crate::contract::defaults::environment());
            progress.phase(
                "kernel",
                &format!("fetching the guest kernel from {reference}"),
            );
            fetch_registry_kernel(paths, &reference)?;
        }
        None => {
            progress.phase("kernel", &format!("fetching {KERNEL_PACKAGE}"));
            fetch_debian_kernel(&paths.runtime_cache, &dir)?;
        }
    }
    let m = read_kernel_manifest(&dir).expect("manifest just written");
    debian_source(&dir, m)
}

fn no_apt(detail: String) -> Error {
    unavailable(
        format!("cannot fetch Debian's {KERNEL_PACKAGE}: {detail}"),
        "run scripts/setup.sh (it runs `apt-get update`), or set PYRO_KERNEL_IMAGE and PYRO_KERNEL_MODULES_DIR to a kernel with virtio drivers",
    )
}

/// Downloads the current cloud kernel package and keeps `vmlinuz`, the
/// guest modules and `modules.dep`.
fn fetch_debian_kernel(cache: &Path, dest: &Path) -> Result<()> {
    let depends = host::tool(Command::new("apt-cache").args(["depends", KERNEL_PACKAGE]))
        .map_err(|e| no_apt(e.to_string()))?;
    let package = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .ok_or_else(|| no_apt("apt knows no such package; is `apt-get update` done?".into()))?
        .to_string();
    let work = cache.join(format!(".partial-kernel-{}", host::random_id(4)));
    fs::create_dir_all(&work).ctx(|| format!("create {}", work.display()))?;
    let result = (|| -> Result<()> {
        host::tool(
            Command::new("apt-get")
                .args(["download", "-q", &package])
                .current_dir(&work),
        )
        .map_err(|e| no_apt(e.to_string()))?;
        let deb = fs::read_dir(&work)
            .ctx(|| format!("read {}", work.display()))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| no_apt("apt-get download produced no .deb".into()))?;
        let version = host::tool(
            Command::new("dpkg-deb")
                .args(["-f"])
                .arg(&deb)
                .arg("Version"),
        )?
        .trim()
        .to_string();
        let tree = work.join("tree");
        host::tool(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
        let release = package.trim_start_matches("linux-image-").to_string();
        let module_root = tree.join("lib/modules").join(&release);
        // The package ships no modules.dep (its postinst generates it).
        host::tool(Command::new("depmod").arg("-b").arg(&tree).arg(&release))?;
        let dep = fs::read_to_string(module_root.join("modules.dep"))
            .ctx(|| format!("read {}/modules.dep", module_root.display()))?;
        let order = module_load_order(&dep, GUEST_MODULES)?;
        let out = work.join("kernel");
        fs::create_dir_all(out.join("modules")).ctx(|| "create kernel dir".into())?;
        let mut module_order = Vec::new();
        for rel in &order {
            let name = Path::new(rel)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            fs::copy(module_root.join(rel), out.join("modules").join(&name))
                .ctx(|| format!("copy module {rel}"))?;
            module_order.push(name);
        }
        let vmlinuz = out.join("vmlinuz");
        fs::copy(tree.join(format!("boot/vmlinuz-{release}")), &vmlinuz)
            .ctx(|| "copy vmlinuz".into())?;
        let manifest = KernelManifest {
            format_version: KERNEL_MANIFEST_VERSION,
            package: package.clone(),
            package_version: version,
            release,
            vmlinuz_sha256: host::sha256_file(&vmlinuz)?,
            vmlinuz_size: fs::metadata(&vmlinuz).ctx(|| "stat vmlinuz".into())?.len(),
            module_order,
        };
        host::write_atomic(
            &out.join("kernel.json"),
            &serde_json::to_vec_pretty(&manifest).unwrap(),
        )?;
        if dest.exists() {
            fs::remove_dir_all(dest).ctx(|| format!("remove {}", dest.display()))?;
        }
        fs::rename(&out, dest).ctx(|| format!("install {}", dest.display()))?;
        Ok(())
    })();
    let _ = fs::remove_dir_all(&work);
    result
}

/// Orders `wanted` modules and their dependencies so each loads after what
/// it needs, from a `modules.dep` file. `modules.dep` lists a module's
/// dependencies so that the last must load first.
pub fn module_load_order(modules_dep: &str, wanted: &[&str]) -> Result<Vec<String>> {
    let norm = |s: &str| s.replace('-', "_");
    let mut by_name: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in modules_dep.lines() {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        let name = Path::new(path)
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .trim_end_matches(".ko")
            .to_string();
        let deps = deps.split_whitespace().map(str::to_owned).collect();
        by_name.insert(norm(&name), (path.to_string(), deps));
    }
    fn visit(
        name: &str,
        by_name: &HashMap<String, (String, Vec<String>)>,
        out: &mut Vec<String>,
        norm: &dyn Fn(&str) -> String,
    ) -> Result<()> {
        let Some((path, deps)) = by_name.get(&norm(name)) else {
            return Err(unavailable(
                format!("the guest kernel has no module {name}"),
                "use Debian's cloud kernel, or a kernel with the virtio drivers",
            ));
        };
        if out.contains(path) {
            return Ok(());
        }
        for dep in deps.iter().rev() {
            let dep_name = Path::new(dep)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .trim_end_matches(".ko")
                .to_string();
            visit(&dep_name, by_name, out, norm)?;
        }
        out.push(path.clone());
        Ok(())
    }
    let mut out = Vec::new();
    for name in wanted {
        visit(name, &by_name, &mut out, &norm)?;
    }
    Ok(out)
}

fn initramfs_path(paths: &Paths, source: &KernelSource) -> PathBuf {
    let mut h = Sha256::new();
    h.update(AGENT);
    h.update(source.release.as_bytes());
    h.update(source.kernel.to_string_lossy().as_bytes());
    for m in &source.modules {
        h.update(m.to_string_lossy().as_bytes());
    }
    let key = &hex(&h.finalize())[..16];
    paths.runtime_cache.join(format!("initramfs-{key}.cpio"))
}

/// Builds (once) the initramfs: the agent as `/init`, the marker that tells
/// it it is in the initramfs, the modules and their load order.
fn ensure_initramfs(paths: &Paths, source: &KernelSource) -> Result<PathBuf> {
    let path = initramfs_path(paths, source);
    if path.is_file() {
        return Ok(path);
    }
    fs::create_dir_all(&paths.runtime_cache)
        .ctx(|| format!("create {}", paths.runtime_cache.display()))?;
    let stage = paths
        .runtime_cache
        .join(format!(".partial-initramfs-{}", host::random_id(4)));
    let result = (|| -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        fs::create_dir_all(stage.join("modules")).ctx(|| "create initramfs stage".into())?;
        let init = stage.join("init");
        fs::write(&init, AGENT).ctx(|| "write init".into())?;
        fs::set_permissions(&init, fs::Permissions::from_mode(0o755))
            .ctx(|| "chmod init".into())?;
        fs::write(stage.join("pyro-initramfs"), b"").ctx(|| "write marker".into())?;
        let mut order = String::new();
        let mut files = vec![
            "init".to_string(),
            "pyro-initramfs".into(),
            "modules".into(),
        ];
        for m in &source.modules {
            let name = m.file_name().unwrap().to_string_lossy().into_owned();
            fs::copy(m, stage.join("modules").join(&name))
                .ctx(|| format!("copy {}", m.display()))?;
            order.push_str(&name);
            order.push('\n');
            files.push(format!("modules/{name}"));
        }
        fs::write(stage.join("modules.order"), order).ctx(|| "write modules.order".into())?;
        files.push("modules.order".into());
        let tmp = stage.join("initramfs.cpio");
        let out = fs::File::create(&tmp).ctx(|| "create initramfs".into())?;
        let mut child = Command::new("cpio")
            .args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
            .current_dir(&stage)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Tool {
                tool: "cpio".into(),
                detail: format!("{e} (run scripts/setup.sh)"),
            })?;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(files.join("\n").as_bytes())
            .ctx(|| "feed cpio".into())?;
        let output = child.wait_with_output().ctx(|| "run cpio".into())?;
        if !output.status.success() {
            return Err(Error::Tool {
                tool: "cpio".into(),
                detail: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        fs::rename(&tmp, &path).ctx(|| format!("install {}", path.display()))
    })();
    let _ = fs::remove_dir_all(&stage);
    result.map(|()| path)
}

/// Installs a kernel directory from an environment archive, unless this
/// machine already has a working one. Its `vmlinuz` must match the
/// manifest's checksum and every listed module must be present.
pub fn import_kernel(paths: &Paths, staged: &Path) -> Result<()> {
    let dest = paths.runtime_cache.join("kernel");
    let current = read_kernel_manifest(&dest).and_then(|m| debian_source(&dest, m).ok());
    if current.is_some() {
        return Ok(());
    }
    fs::create_dir_all(&paths.runtime_cache)
        .ctx(|| format!("create {}", paths.runtime_cache.display()))?;
    let _lock = FileLock::acquire(&paths.runtime_cache.join(".kernel.lock"))?;
    install_kernel(paths, staged)
}

/// The kernel layer of a published environment artifact (`env publish`
/// carries the kernel it was built with), installed as `import_kernel`
/// does. The caller holds the kernel lock.
fn fetch_registry_kernel(paths: &Paths, reference: &str) -> Result<()> {
    use crate::registry::{artifact, artifact_layer, artifact_manifest};
    let (session, manifest, _) = artifact_manifest(reference, &[])?;
    let stage = paths
        .runtime_cache
        .join(format!(".partial-kernel-pull-{}", host::random_id(4)));
    fs::create_dir_all(&stage).ctx(|| format!("create {}", stage.display()))?;
    let result = (|| {
        let tarball = stage.join("kernel.tar.gz");
        artifact_layer(&session, &manifest, artifact::KERNEL, &tarball)?;
        let file = fs::File::open(&tarball).ctx(|| "open the kernel layer".into())?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        // Regular files and directories only, inside the destination (the
        // tar crate refuses `..`): a link could make the checks below, and
        // the initramfs, read a host file.
        let dest = stage.join("unpacked");
        fs::create_dir_all(&dest).ctx(|| "create the kernel stage".into())?;
        for entry in archive.entries().ctx(|| "read the kernel layer".into())? {
            let mut entry = entry.ctx(|| "read the kernel layer".into())?;
            let t = entry.header().entry_type();
            if !(t.is_file() || t.is_dir()) {
                return Err(Error::InvalidArgument(format!(
                    "the kernel layer of {reference} holds something other than files and directories"
                )));
            }
            entry
                .unpack_in(&dest)
                .ctx(|| "unpack the kernel layer".into())?;
        }
        install_kernel(paths, &stage.join("unpacked/kernel"))
    })();
    let _ = host::remove_tree(&stage);
    result
}

/// Checks a staged kernel directory and moves a copy into place. The
/// caller holds the kernel lock.
fn install_kernel(paths: &Paths, staged: &Path) -> Result<()> {
    let dest = paths.runtime_cache.join("kernel");
    let bad = |why: &str| Error::InvalidArgument(format!("the archived kernel is unusable: {why}"));
    let m = read_kernel_manifest(staged).ok_or_else(|| bad("no valid kernel.json"))?;
    if host::sha256_file(&staged.join("vmlinuz"))? != m.vmlinuz_sha256 {
        return Err(bad("vmlinuz does not match its checksum"));
    }
    if m.module_order
        .iter()
        .any(|f| f.contains('/') || !staged.join("modules").join(f).is_file())
    {
        return Err(bad("modules are missing"));
    }
    if dest.exists() {
        host::remove_tree(&dest)?;
    }
    // The archive was extracted beside the environment cache, which may be
    // another filesystem: copy, then rename within the runtime cache.
    let tmp = paths
        .runtime_cache
        .join(format!(".partial-kernel-{}", host::random_id(4)));
    host::tool(Command::new("cp").arg("-a").arg(staged).arg(&tmp))?;
    fs::rename(&tmp, &dest).ctx(|| format!("install {}", dest.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
";

    #[test]
    fn dependencies_load_first_and_virtio_ring_before_virtio() {
        let order = module_load_order(
            DEP,
            &["virtio_mmio", "virtio_blk", "virtio_net", "virtio_rng"],
        )
        .unwrap();
        let names: Vec<&str> = order
            .iter()
            .map(|p| p.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "virtio_ring.ko",
                "virtio.ko",
                "virtio_mmio.ko",
                "virtio_blk.ko",
                "failover.ko",
                "net_failover.ko",
                "virtio_net.ko",
                "virtio-rng.ko"
            ]
        );
    }

    #[test]
    fn a_missing_module_is_a_clear_error() {
        let err = module_load_order(DEP, &["virtio_console"]).unwrap_err();
        assert!(
            err.to_string().contains("no module virtio_console"),
            "{err}"
        );
    }
}
