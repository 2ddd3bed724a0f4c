//! What of the host an MCP client may name. Clients (and the agents behind
//! them, which a prompt can steer) get no host paths and no host execution
//! unless the operator who starts the server grants them: host paths only
//! inside the directories named with `--allow-host-path` (or
//! `PYRO_MCP_HOST_PATHS`), host execution only with `--allow-host-compat`.
//! The server's working directory is no implicit root: desktop clients
//! often start servers in `/`.

use std::path::{Component, Path, PathBuf};

/// The host access granted to this server's clients.
#[derive(Debug, Clone, Default)]
pub struct HostAccess {
    /// Directories (resolved) whose contents tools may read and write.
    roots: Vec<PathBuf>,
    /// Whether `vm_run` may run a command on the host when no guest boots.
    pub allow_host_compat: bool,
}

/// How the operator grants access; said in every refusal.
const HOW: &str = "the server must be started with --allow-host-path DIR (or PYRO_MCP_HOST_PATHS) naming a directory that holds it";

impl HostAccess {
    /// Access to `roots` (each must be an existing directory).
    pub fn new(
        roots: impl IntoIterator<Item = PathBuf>,
        allow_host_compat: bool,
    ) -> Result<HostAccess, String> {
        let roots = roots
            .into_iter()
            .map(|r| {
                let real = r
                    .canonicalize()
                    .map_err(|e| format!("--allow-host-path {}: {e}", r.display()))?;
                if !real.is_dir() {
                    return Err(format!(
                        "--allow-host-path {}: not a directory",
                        r.display()
                    ));
                }
                Ok(real)
            })
            .collect::<Result<_, _>>()?;
        Ok(HostAccess {
            roots,
            allow_host_compat,
        })
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    fn absolute<'a>(&self, path: &'a str, param: &str) -> Result<&'a Path, String> {
        if self.roots.is_empty() {
            return Err(format!(
                "{param}: this server gives no access to host paths; {HOW}"
            ));
        }
        let p = Path::new(path);
        if !p.is_absolute() {
            return Err(format!("{param} {path:?} must be an absolute host path"));
        }
        if p.components().any(|c| c == Component::ParentDir) {
            return Err(format!("{param} {path:?}: `..` is not allowed"));
        }
        Ok(p)
    }

    fn inside(&self, real: &Path, param: &str, path: &str) -> Result<(), String> {
        if self.roots.iter().any(|r| real.starts_with(r)) {
            Ok(())
        } else {
            Err(format!(
                "{param} {path:?} is outside the host paths this server may use; {HOW}"
            ))
        }
    }

    /// A host path a tool reads (a seed, a sync source, a secret file):
    /// resolved, symlinks included, and inside a root. The resolved path is
    /// what the tool then uses.
    pub fn readable(&self, path: &str, param: &str) -> Result<PathBuf, String> {
        let p = self.absolute(path, param)?;
        let real = p
            .canonicalize()
            .map_err(|e| format!("{param} {path:?}: {e}"))?;
        self.inside(&real, param, path)?;
        Ok(real)
    }

    /// A host path a tool writes (an export): its directory resolved and
    /// inside a root; the path itself is a new name in that directory
    /// (whether it may replace something is the tool's business).
    pub fn writable(&self, path: &str, param: &str) -> Result<PathBuf, String> {
        let p = self.absolute(path, param)?;
        let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
            return Err(format!("{param} {path:?} names no file"));
        };
        let dir = parent
            .canonicalize()
            .map_err(|e| format!("{param} {path:?}: {}: {e}", parent.display()))?;
        self.inside(&dir, param, path)?;
        let out = dir.join(name);
        // An existing symlink there would be followed by whoever writes
        // through it later; it is never written through.
        if out.is_symlink() {
            return Err(format!("{param} {path:?} is a symlink"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_stay_inside_the_granted_roots() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("work");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("seed.txt"), "x").unwrap();
        std::fs::write(base.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(base.path().join("secret"), root.join("link")).unwrap();
        std::os::unix::fs::symlink(base.path(), root.join("up")).unwrap();
        let s = |p: &Path| p.to_str().unwrap().to_string();

        let none = HostAccess::default();
        let e = none
            .readable(&s(&root.join("seed.txt")), "seed_path")
            .unwrap_err();
        assert!(e.contains("--allow-host-path"), "{e}");

        let access = HostAccess::new([root.clone()], false).unwrap();
        assert!(access
            .readable(&s(&root.join("seed.txt")), "seed_path")
            .is_ok());
        for bad in [
            s(&base.path().join("secret")),
            s(&root.join("link")),
            s(&root.join("up/secret")),
            format!("{}/../secret", root.display()),
            "seed.txt".to_string(),
            "/etc".to_string(),
        ] {
            assert!(access.readable(&bad, "seed_path").is_err(), "{bad}");
        }
        assert!(access
            .writable(&s(&root.join("out.txt")), "output_path")
            .is_ok());
        for bad in [
            s(&base.path().join("out.txt")),
            s(&root.join("up/out.txt")),
            s(&root.join("link")),
            "/root/.bash_login".to_string(),
        ] {
            assert!(access.writable(&bad, "output_path").is_err(), "{bad}");
        }
    }
}
