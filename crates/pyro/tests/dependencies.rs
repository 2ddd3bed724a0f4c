//! Keeps the dependency directions of ARCHITECTURE.md true, from
//! `cargo metadata`: the guest agent never pulls in host crates, the
//! protocol needs only serde, and the library stays free of front-end
//! crates (argument parsing, MCP, terminal output).

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

fn normal_closure(crate_name: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--offline",
            "--filter-platform",
            "x86_64-unknown-linux-gnu",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes: HashMap<&str, Vec<&str>> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let deps = n["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["kind"].is_null())
                })
                .map(|d| d["pkg"].as_str().unwrap())
                .collect();
            (n["id"].as_str().unwrap(), deps)
        })
        .collect();
    let root = names
        .iter()
        .find(|(_, n)| **n == crate_name)
        .map(|(id, _)| *id)
        .unwrap();
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        for dep in &nodes[id] {
            if seen.insert(names[dep].to_string()) {
                stack.push(dep);
            }
        }
    }
    seen
}

#[test]
fn the_agent_depends_on_no_host_crate() {
    let deps = normal_closure("pyro-agent");
    let direct: BTreeSet<&str> = ["pyro-protocol", "serde", "serde_json", "libc"].into();
    for host_crate in [
        "pyro", "pyro-mcp", "pyro-cli", "tokio", "clap", "rmcp", "tracing",
    ] {
        assert!(
            !deps.contains(host_crate),
            "the agent pulls in {host_crate}: {deps:?}"
        );
    }
    for d in &direct {
        assert!(deps.contains(*d), "{d} missing from {deps:?}");
    }
}

#[test]
fn the_protocol_needs_only_serde() {
    let deps = normal_closure("pyro-protocol");
    let allowed = [
        "serde",
        "serde_core",
        "serde_derive",
        "serde_json",
        "itoa",
        "memchr",
        "ryu",
        "zmij",
        "proc-macro2",
        "quote",
        "syn",
        "unicode-ident",
    ];
    for d in &deps {
        assert!(
            allowed.contains(&d.as_str()),
            "pyro-protocol depends on {d}"
        );
    }
}

#[test]
fn the_library_has_no_front_end_crates() {
    let deps = normal_closure("pyro");
    for front_end in [
        "clap",
        "rmcp",
        "anyhow",
        "tracing-subscriber",
        "indicatif",
        "pyro-mcp",
        "pyro-cli",
    ] {
        assert!(
            !deps.contains(front_end),
            "the library pulls in {front_end}"
        );
    }
}
