//! Builds the guest agent as a static binary and hands its path to the
//! library, which embeds it. The agent is a separate crate with no host
//! dependencies; it is compiled for the gnu target with a static C runtime
//! (no extra toolchain needed). `PYRO_AGENT_BIN` points at a prebuilt agent
//! instead.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    println!("cargo:rerun-if-env-changed=PYRO_AGENT_BIN");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let dest = out.join("pyro-agent");
    if let Some(prebuilt) = std::env::var_os("PYRO_AGENT_BIN") {
        std::fs::copy(&prebuilt, &dest).expect("copy PYRO_AGENT_BIN");
        return;
    }
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let crates = manifest_dir.parent().unwrap();
    for dir in ["pyro-agent", "pyro-protocol"] {
        watch(&crates.join(dir).join("src"));
        println!(
            "cargo:rerun-if-changed={}",
            crates.join(dir).join("Cargo.toml").display()
        );
    }
    let agent_manifest = crates.join("pyro-agent").join("Cargo.toml");
    if !agent_manifest.exists() {
        panic!(
            "the guest agent's source is not beside this crate ({}); build pyro from its \
             repository, or set PYRO_AGENT_BIN to a static pyro-agent binary",
            agent_manifest.display()
        );
    }
    let target_dir = out.join("agent-target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--offline",
            "--target",
            TARGET,
            "--manifest-path",
        ])
        .arg(&agent_manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Ctarget-feature=+crt-static\u{1f}-Cstrip=symbols",
        )
        .status()
        .expect("run cargo to build the guest agent");
    assert!(status.success(), "building the guest agent failed");
    let built = target_dir.join(TARGET).join("release").join("pyro-agent");
    std::fs::copy(&built, &dest).expect("copy the built guest agent");
}

fn watch(dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                watch(&e.path());
            }
        }
    }
}
