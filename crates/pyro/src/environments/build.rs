//! Building an environment: `mmdebstrap` into a tree (rootless under
//! `unshare`, or directly as root), then `mkfs.ext4 -d` into an image, in a
//! `.partial-*` directory that is renamed into place.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::error::{Error, IoContext, Result};
use crate::host::{self};
use crate::paths::Paths;
use crate::progress::Progress;

use super::catalog::{
    install_dir, slug, write_stamp, CatalogEntry, EnvironmentManifest, CATALOG_VERSION,
    IMAGE_HEADROOM_MIB, MANIFEST_VERSION, SUITE,
};

pub(super) fn build(paths: &Paths, entry: &CatalogEntry, progress: &dyn Progress) -> Result<()> {
    let fail = |detail: String| Error::Environment {
        name: entry.name.into(),
        detail,
        remedy: None,
    };
    let partial =
        paths
            .environment_cache
            .join(format!(".partial-{}-{}", slug(entry), host::random_id(4)));
    // Only its owner may enter: the tree holds setuid files and device
    // nodes on their way into the image.
    host::private_dir(&partial)?;
    let result = (|| -> Result<()> {
        let tree = partial.join("tree");
        progress.phase(
            "pull",
            &format!("phase=bootstrap environment={} suite={SUITE}", entry.name),
        );
        let mirror = std::env::var("PYRO_DEBIAN_MIRROR")
            .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
        let security = std::env::var("PYRO_DEBIAN_SECURITY_MIRROR")
            .unwrap_or_else(|_| "http://deb.debian.org/debian-security".into());
        // As root, mmdebstrap writes the tree directly. Otherwise it runs in
        // a user namespace (unshare mode) and writes a tarball, which is
        // unpacked and turned into an image under one fakeroot session, so
        // the image records root ownership, setuid bits and device nodes.
        let rootless = !host::is_root();
        let tarball = partial.join("rootfs.tar");
        let fakeroot_state = partial.join("fakeroot.state");
        let mut cmd = Command::new("mmdebstrap");
        cmd.args(["--variant=minbase", "--quiet"]);
        cmd.arg(if rootless {
            "--mode=unshare"
        } else {
            "--mode=root"
        });
        if !entry.packages.is_empty() {
            cmd.arg(format!("--include={}", entry.packages.join(",")));
        }
        cmd.arg(SUITE)
            .arg(if rootless { &tarball } else { &tree })
            .arg(format!("deb {mirror} {SUITE} main"))
            .arg(format!("deb {mirror} {SUITE}-updates main"))
            .arg(format!("deb {security} {SUITE}-security main"));
        host::tool(&mut cmd).map_err(|e| {
            let hint = if rootless {
                " (building as a regular user needs user namespaces, the uidmap package and \
                 /etc/subuid and /etc/subgid entries for this user)"
            } else {
                ""
            };
            fail(format!("bootstrap failed: {e}{hint}"))
        })?;
        if rootless {
            fs::create_dir_all(&tree).ctx(|| "create build tree".into())?;
            host::tool(
                Command::new("fakeroot")
                    .arg("-s")
                    .arg(&fakeroot_state)
                    .args(["--", "tar", "--numeric-owner", "-xpf"])
                    .arg(&tarball)
                    .arg("-C")
                    .arg(&tree),
            )?;
            fs::remove_file(&tarball).ctx(|| "remove tarball".into())?;
        }

        let installed_packages = host::tool(
            Command::new("dpkg-query")
                .arg(format!(
                    "--admindir={}",
                    tree.join("var/lib/dpkg").display()
                ))
                .args(["-W", "-f", "${Package}=${Version}\\n"]),
        )
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default();
        prepare_tree(&tree)?;

        progress.phase("pull", &format!("phase=image environment={}", entry.name));
        let image = partial.join("rootfs.ext4");
        make_image(&tree, &image, rootless.then_some(fakeroot_state.as_path()))?;
        fs::remove_dir_all(&tree).ctx(|| "remove build tree".into())?;
        open_up(&partial)?;
        progress.phase("pull", &format!("phase=verify environment={}", entry.name));
        let manifest = EnvironmentManifest {
            format_version: MANIFEST_VERSION,
            name: entry.name.into(),
            version: entry.version.into(),
            catalog_version: CATALOG_VERSION.into(),
            suite: SUITE.into(),
            packages: entry.packages.iter().map(|s| s.to_string()).collect(),
            installed_packages,
            image_size_bytes: fs::metadata(&image).ctx(|| "stat image".into())?.len(),
            image_sha256: host::sha256_file(&image)?,
            built_at_unix_ms: host::now_unix_ms(),
        };
        host::write_atomic(
            &partial.join("environment.json"),
            &serde_json::to_vec_pretty(&manifest).unwrap(),
        )?;
        write_stamp(&partial, &image)?;
        install(&partial, &install_dir(paths, entry))?;
        progress.phase("pull", &format!("phase=ready environment={}", entry.name));
        Ok(())
    })();
    if result.is_err() {
        let _ = host::remove_tree(&partial);
    }
    result
}

/// Turns `tree` into a sparse ext4 image with room to grow. A rootless
/// build runs `mkfs.ext4` in the fakeroot session (`fakeroot_state`) that
/// unpacked the tree, so the image records the ownership the tree has
/// there, and leaves the tree removable by this user.
pub(super) fn make_image(tree: &Path, image: &Path, fakeroot_state: Option<&Path>) -> Result<()> {
    let used_mib: u64 = host::tool(
        Command::new("du")
            .args(["-s", "-x", "--block-size=1M"])
            .arg(tree),
    )?
    .split_whitespace()
    .next()
    .and_then(|n| n.parse().ok())
    .unwrap_or(1024);
    let size_mib = used_mib + used_mib / 4 + IMAGE_HEADROOM_MIB;
    let mut mkfs = match fakeroot_state {
        Some(state) => {
            let mut c = Command::new("fakeroot");
            c.arg("-i").arg(state).args(["--", "mkfs.ext4"]);
            c
        }
        None => Command::new("mkfs.ext4"),
    };
    host::tool(
        mkfs.args(["-q", "-F", "-L", "pyro-root", "-E", "root_owner=0:0", "-d"])
            .arg(tree)
            .arg(image)
            .arg(format!("{size_mib}M")),
    )?;
    if fakeroot_state.is_some() {
        // Unpacked as this user, some directories are read-only to it.
        host::tool(Command::new("chmod").args(["-R", "u+rwX"]).arg(tree))?;
    }
    Ok(())
}

/// Makes an install directory readable again once its tree is gone.
pub(super) fn open_up(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .ctx(|| format!("chmod {}", dir.display()))
}

/// Moves a finished build into place, replacing an old install.
pub(super) fn install(partial: &Path, dest: &Path) -> Result<()> {
    if dest.exists() {
        let old = dest.with_file_name(format!(
            ".partial-{}-{}",
            dest.file_name().unwrap().to_string_lossy(),
            host::random_id(4)
        ));
        fs::rename(dest, &old).ctx(|| format!("move aside {}", dest.display()))?;
        host::remove_tree(&old)?;
    }
    fs::rename(partial, dest).ctx(|| format!("install {}", dest.display()))
}

/// Adjusts a freshly bootstrapped tree for life as a pyro guest.
fn prepare_tree(tree: &Path) -> Result<()> {
    fs::create_dir_all(tree.join("workspace")).ctx(|| "create /workspace".into())?;
    // apt's cache is rebuilt on first use; leave it out of the image.
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        if let Ok(entries) = fs::read_dir(tree.join(dir)) {
            for e in entries.flatten() {
                if e.path().is_file() {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
    host::write_atomic(&tree.join("etc/hostname"), b"pyro\n")?;
    host::write_atomic(
        &tree.join("etc/hosts"),
        b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )?;
    Ok(())
}
