//! A container image's defaults for every command: its `Env` on top of the
//! agent's base environment, and its `User` (commands, services and shells
//! run as that user; files the host writes into `/workspace` belong to
//! it). The host writes them to `/etc/pyro/image.json` when it builds an
//! image environment; catalog environments have none.

use std::process::Command;

use serde::Deserialize;

use crate::sys;

pub const CONFIG: &str = "/etc/pyro/image.json";

const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Deserialize, Default)]
struct File {
    #[serde(default)]
    env: Vec<String>,
    user: Option<String>,
}

/// Who commands run as.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub home: String,
}

impl Identity {
    fn root() -> Identity {
        Identity {
            uid: 0,
            gid: 0,
            name: "root".into(),
            home: "/root".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Image {
    env: Vec<(String, String)>,
    pub user: Identity,
}

impl Default for Image {
    fn default() -> Image {
        Image {
            env: Vec::new(),
            user: Identity::root(),
        }
    }
}

impl Image {
    /// The defaults in `path` (none if it is absent or unreadable), the
    /// user resolved against `etc`'s `passwd` and `group`.
    pub fn load(path: &str, etc: &str) -> Image {
        let Ok(bytes) = std::fs::read(path) else {
            return Image::default();
        };
        let file: File = serde_json::from_slice(&bytes).unwrap_or_default();
        let env = file
            .env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let passwd = std::fs::read_to_string(format!("{etc}/passwd")).unwrap_or_default();
        let group = std::fs::read_to_string(format!("{etc}/group")).unwrap_or_default();
        let user = file
            .user
            .as_deref()
            .map_or_else(Identity::root, |u| resolve(u, &passwd, &group));
        Image { env, user }
    }

    /// The environment every command starts from: PATH, HOME, USER,
    /// LOGNAME, LANG, then the image's variables over them.
    pub fn base_env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("PATH", BASE_PATH),
            ("HOME", &self.user.home),
            ("USER", &self.user.name),
            ("LOGNAME", &self.user.name),
            ("LANG", "C.UTF-8"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in &self.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }

    /// Has `cmd` run as the image's user (after anything else set up to
    /// run before its exec, such as joining a cgroup, which needs root).
    pub fn apply(&self, cmd: &mut Command) {
        if self.user.uid != 0 || self.user.gid != 0 {
            sys::become_on_spawn(cmd, self.user.uid, self.user.gid);
        }
    }

    /// The owner of what the host writes into the workspace.
    pub fn owner(&self) -> Option<(u32, u32)> {
        (self.user.uid != 0 || self.user.gid != 0).then_some((self.user.uid, self.user.gid))
    }
}

/// Who an unknown name or group runs as: nobody, never root.
const NOBODY: u32 = 65534;

/// `name`, `uid`, `name:group` or `uid:gid`, as Docker reads `User`: a
/// name is looked up in the image's `passwd`, a numeric uid without an
/// entry there gets gid 0 (as under Docker), and a name or group the image
/// does not know runs as nobody rather than failing open to root.
fn resolve(user: &str, passwd: &str, group: &str) -> Identity {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    // name:password:uid:gid:gecos:home:shell
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && (f[0] == u || f[2] == u) && f[2].parse::<u32>().is_ok());
    let uid = match &entry {
        Some(f) => f[2].parse().unwrap_or(NOBODY),
        None => u.parse().unwrap_or(NOBODY),
    };
    let gid = match g {
        Some(g) => g.parse().ok().or_else(|| {
            group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
        }),
        None => match &entry {
            Some(f) => f[3].parse().ok(),
            None if uid == NOBODY => Some(NOBODY),
            None => Some(0),
        },
    }
    .unwrap_or(NOBODY);
    Identity {
        uid,
        gid,
        name: entry
            .as_ref()
            .map_or_else(|| u.to_owned(), |f| f[0].to_owned()),
        home: entry
            .as_ref()
            .map_or_else(|| "/".to_owned(), |f| f[5].to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:\napp:x:1001:\n";

    #[test]
    fn users_resolve_as_docker_reads_them() {
        let app = resolve("app", PASSWD, GROUP);
        assert_eq!(
            (app.uid, app.gid, app.home.as_str()),
            (1000, 1001, "/home/app")
        );
        assert_eq!(resolve("1000", PASSWD, GROUP).name, "app");
        let g = resolve("app:staff", PASSWD, GROUP);
        assert_eq!((g.uid, g.gid), (1000, 50));
        let unknown = resolve("4242:4343", PASSWD, GROUP);
        assert_eq!(
            (unknown.uid, unknown.gid, unknown.home.as_str()),
            (4242, 4343, "/")
        );
        assert_eq!(resolve("4242", PASSWD, GROUP).gid, 0);
        // Unknown names fail closed.
        let ghost = resolve("ghost", PASSWD, GROUP);
        assert_eq!((ghost.uid, ghost.gid), (NOBODY, NOBODY));
        assert_eq!(resolve("app:nogroup", PASSWD, GROUP).gid, NOBODY);
    }
}
