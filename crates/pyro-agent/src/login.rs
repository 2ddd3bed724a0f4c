//! The login environment, resolved once and reused.
//!
//! A shell command runs as `/bin/sh -lc`, so images' `/etc/profile` and
//! `/etc/profile.d` set its PATH and variables. Sourcing them costs a fork
//! and exec or more per command (Debian's `/etc/profile` runs `id -u`),
//! which under TCG is most of a short command's time. So the agent runs
//! the login shell once, records the environment it exports, and runs
//! later shell commands as `/bin/sh -c` with that environment, for as long
//! as the profile files are unchanged (their sizes and times are checked
//! before every command: installing a package that adds a profile.d
//! script is seen by the next command).

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::image::Image;
use crate::reaper::Reaper;

/// The agent prints its environment (NUL-separated) when started with this
/// argument: the login shell `exec`s it to show what it exports.
pub const PRINT_ENV_ARG: &str = "--pyro-print-login-env";

/// The first bytes of `print_env`'s answer.
const MARKER: &[u8] = b"pyro-login-env\0";

/// A profile that takes longer than this is not cached (commands then run
/// `sh -lc` as they always did).
const CAPTURE_LIMIT: Duration = Duration::from_secs(10);

/// The most of the login shell's output that is read.
const ENV_LIMIT: u64 = 1 << 20;

/// What the login shell reads (dash and bash as `sh`), by size and time.
type Fingerprint = Vec<(OsString, Option<(u64, SystemTime)>)>;

fn fingerprint(home: &str) -> Fingerprint {
    let mut files: Vec<OsString> = ["/etc/profile", "/etc/profile.d"]
        .iter()
        .map(OsString::from)
        .collect();
    if let Ok(entries) = std::fs::read_dir("/etc/profile.d") {
        let mut names: Vec<OsString> = entries.flatten().map(|e| e.path().into()).collect();
        names.sort();
        files.extend(names);
    }
    files.push(Path::new(home).join(".profile").into());
    files
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let stamp = meta.and_then(|m| Some((m.len(), m.modified().ok()?)));
            (f, stamp)
        })
        .collect()
}

pub type Env = Vec<(OsString, OsString)>;

#[derive(Default)]
pub struct LoginEnv {
    cached: Mutex<Option<(Fingerprint, Env)>>,
}

impl LoginEnv {
    /// The environment a login shell started with `base` exports, if it
    /// can be had; `None` means "run `sh -lc` instead".
    pub fn get(&self, base: &[(&str, &str)], reaper: &Reaper, image: &Image) -> Option<Env> {
        let home = base
            .iter()
            .find(|(k, _)| *k == "HOME")
            .map_or("/root", |(_, v)| v);
        let now = fingerprint(home);
        let mut cached = self.cached.lock().unwrap();
        if let Some((print, env)) = cached.as_ref() {
            if *print == now {
                return Some(env.clone());
            }
        }
        let env = capture(base, reaper, image)?;
        *cached = Some((now, env.clone()));
        Some(env)
    }
}

/// Runs the login shell once, as the user commands run as (it reads that
/// user's `~/.profile`), and reads what it exports.
fn capture(base: &[(&str, &str)], reaper: &Reaper, image: &Image) -> Option<Env> {
    let me = format!("/proc/{}/exe", std::process::id());
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-lc")
        .arg(format!("exec {me} {PRINT_ENV_ARG}"))
        .env_clear()
        .envs(base.iter().copied())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    image.apply(&mut cmd);
    let (tx, rx) = mpsc::channel();
    let mut child = reaper.spawn(&mut cmd, tx, |status| status).ok()?;
    let mut out = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        // An environment is small; a profile that prints without end is
        // cut off here (and then killed at the time limit, its pipe full).
        let mut bytes = Vec::new();
        let _ = (&mut out).take(ENV_LIMIT).read_to_end(&mut bytes);
        bytes
    });
    let status = match rx.recv_timeout(CAPTURE_LIMIT) {
        Ok(status) => status,
        Err(_) => {
            crate::sys::kill_group(child.id() as i32, libc::SIGKILL);
            let _ = child.kill();
            return None;
        }
    };
    let bytes = reader.join().ok()?;
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return None;
    }
    // Only this agent's own answer counts (the shell may not have reached it).
    let entries = bytes.strip_prefix(MARKER)?;
    let env = entries
        .split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let eq = kv.iter().position(|b| *b == b'=')?;
            Some((
                OsString::from_vec(kv[..eq].to_vec()),
                OsString::from_vec(kv[eq + 1..].to_vec()),
            ))
        })
        // What the shell itself sets for its child, not the profile.
        .filter(|(k, _)| k != "_" && k != "PWD" && k != "OLDPWD" && k != "SHLVL")
        .collect();
    Some(env)
}

/// `--pyro-print-login-env`: this process's environment, NUL-separated.
pub fn print_env() -> ! {
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    let mut out = MARKER.to_vec();
    for (k, v) in std::env::vars_os() {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    let _ = std::io::stdout().write_all(&out);
    std::process::exit(0)
}
