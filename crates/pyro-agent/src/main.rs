//! The pyro guest agent. It is `/init` of the initramfs that pyro builds,
//! switches to the root disk and stays PID 1 there: it mounts the usual
//! filesystems, reaps orphans, and serves the host over the virtio-serial
//! port named [`pyro_protocol::PORT_NAME`]. Everything a sandbox does inside
//! the guest goes through here.
//!
//! The request handling (`serve`) runs over any byte stream and takes its
//! places (`/workspace`, logs, secrets, cgroups) from a [`serve::Config`],
//! so the unit tests drive it over a socket pair on the host. Only PID 1
//! duties (`boot`) and the port lookup below are the guest's alone.
//!
//! It depends on nothing of the host's: only the protocol crate and libc.
//! All `unsafe` lives in [`sys`].

mod boot;
mod budget;
mod cgroup;
mod exec;
mod files;
mod image;
mod login;
mod reaper;
mod redact;
mod serve;
mod services;
mod shells;
mod sys;
mod tunnel;

#[cfg(test)]
mod tests;

use std::fs::OpenOptions;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

fn main() {
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(login::PRINT_ENV_ARG)) {
        login::print_env();
    }
    let pid1 = sys::getpid() == 1;
    if pid1 {
        if std::path::Path::new(boot::INITRAMFS_MARKER).exists() {
            if let Err(e) = boot::switch_to_root_disk() {
                eprintln!("pyro-agent: cannot switch to the root disk: {e}");
                boot::power_off();
            }
        }
        boot::prepare_userland();
    }
    let served = find_port().and_then(|path| {
        let port = OpenOptions::new().read(true).write(true).open(path)?;
        let agent = serve::Agent::new(serve::Config::guest(pid1), Box::new(port.try_clone()?));
        serve::serve(&agent, port, serve::OnEof::WaitForHost)
    });
    if let Err(e) = served {
        eprintln!("pyro-agent: {e}");
    }
    if pid1 {
        boot::power_off();
    }
    std::process::exit(1);
}

/// The device node of the agent's virtio-serial port.
fn find_port() -> io::Result<PathBuf> {
    for _ in 0..5000 {
        if let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") {
            for entry in entries.flatten() {
                let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                if name.trim() == pyro_protocol::PORT_NAME {
                    let dev = PathBuf::from("/dev").join(entry.file_name());
                    if dev.exists() {
                        return Ok(dev);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("virtio-serial port {} not found", pyro_protocol::PORT_NAME),
    ))
}
