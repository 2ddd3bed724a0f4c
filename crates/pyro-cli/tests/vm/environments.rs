//! The environment catalog, built and verified for real.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{processes_mentioning, stderr, stdout, Sandbox};

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}): stdout={} stderr={}",
            stdout(out),
            stderr(out)
        )
    })
}

/// A sandbox with a private, empty environment cache (the guest kernel is
/// still shared).
fn private_cache() -> (Sandbox, tempfile::TempDir) {
    let sb = Sandbox::new();
    let cache = tempfile::Builder::new()
        .prefix("pyro-envs-")
        .tempdir()
        .unwrap();
    (sb, cache)
}

fn with_cache(sb: &Sandbox, cache: &tempfile::TempDir) -> std::process::Command {
    let mut c = sb.cmd();
    c.env("PYRO_ENVIRONMENT_CACHE_DIR", cache.path());
    c
}

#[test]
fn the_three_environments_pull_and_have_what_they_promise() {
    let sb = Sandbox::new();
    for name in ["debian:12", "debian:12-base", "debian:12-build"] {
        let out = sb.run(&["env", "pull", name, "--json"]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let info = json(&out);
        assert_eq!(info["name"], name);
        assert_eq!(info["installed"], true);
        assert_eq!(info["version"], "1.0.0");
        let m = &info["manifest"];
        assert_eq!(m["suite"], "bookworm");
        assert_eq!(m["image_sha256"].as_str().unwrap().len(), 64);
        assert!(m["image_size_bytes"].as_u64().unwrap() > 100 << 20);
        assert!(m["installed_packages"].as_array().unwrap().len() > 50);
        assert!(m["built_at_unix_ms"].as_u64().unwrap() > 0);
    }

    let r = sb.run_json(
        "debian:12-build",
        &["sh", "-c", "gcc --version && cmake --version && python3 --version && make --version && pkg-config --version"],
    );
    assert_eq!(r["exit_code"], 0, "{r}");
    assert!(r["stdout"].as_str().unwrap().contains("Python 3.11"), "{r}");
    let r = sb.run_json("debian:12-base", &["git --version"]);
    assert_eq!(r["exit_code"], 127, "debian:12-base has git: {r}");

    let list = json(&sb.run(&["env", "list", "--json"]));
    assert_eq!(list["catalog_version"], "1.0.0");
    // The catalog's (image environments other tests pulled may follow).
    let envs: Vec<&serde_json::Value> = list["environments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("image").is_none())
        .collect();
    assert_eq!(envs.len(), 3);
    for e in envs {
        assert_eq!(e["installed"], true, "{e}");
        assert!(e["description"].as_str().unwrap().starts_with("Debian 12"));
    }
    let inspect = json(&sb.run(&["env", "inspect", "debian:12", "--json"]));
    assert_eq!(
        inspect["default_packages"],
        serde_json::json!(["git", "ca-certificates"])
    );
    assert!(inspect["manifest"]["installed_packages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p.as_str().unwrap().starts_with("git=1:2.39")));
    let out = sb.run(&["env", "inspect", "debian:13"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown environment"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn export_import_corruption_and_repair() {
    let (sb, cache) = private_cache();
    assert!(sb.run(&["env", "pull", "debian:12-base"]).status.success());
    let archive = sb.home.path().join("base.tar");
    let out = sb
        .cmd()
        .args(["env", "export", "debian:12-base", "--output"])
        .arg(&archive)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["includes_kernel"], true);
    // Never overwritten without --force.
    let out = sb
        .cmd()
        .args(["env", "export", "debian:12-base", "--output"])
        .arg(&archive)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));

    // Into an empty cache, then run from it.
    let out = with_cache(&sb, &cache)
        .args(["env", "import"])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = with_cache(&sb, &cache)
        .args(["run", "debian:12-base", "--", "echo imported"])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "imported\n", "{}", stderr(&out));

    // Flip bytes: the next run refuses, naming the fix.
    let image = cache.path().join("debian_12-base-1.0.0/rootfs.ext4");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap();
        f.seek(SeekFrom::Start(50 << 20)).unwrap();
        f.write_all(&[0xde, 0xad, 0xbe, 0xef]).unwrap();
    }
    let out = with_cache(&sb, &cache)
        .args(["run", "debian:12-base", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("is corrupted"), "{err}");
    assert!(err.contains("pyro env pull debian:12-base"), "{err}");
    assert!(sb.vm_dirs().is_empty());

    // Pull repairs it.
    let out = with_cache(&sb, &cache)
        .args(["env", "pull", "debian:12-base"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("phase=repair"), "{}", stderr(&out));
    let out = with_cache(&sb, &cache)
        .args(["run", "debian:12-base", "--", "echo repaired"])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "repaired\n", "{}", stderr(&out));
}

fn partial_dirs(cache: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(cache)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".partial-"))
        .collect()
}

#[test]
fn interrupted_and_concurrent_pulls_end_with_one_good_install() {
    let (sb, cache) = private_cache();
    let mut pull = with_cache(&sb, &cache)
        .args(["env", "pull", "debian:12-base"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once the bootstrap is under way.
    let start = Instant::now();
    loop {
        let busy = partial_dirs(cache.path()).iter().any(|p| {
            std::fs::read_dir(cache.path().join(p).join("tree"))
                .map(|d| d.count() > 3)
                .unwrap_or(false)
        });
        if busy {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the pull never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    pull.kill().unwrap();
    pull.wait().unwrap();
    // The bootstrap tool stops with it and leaves no mounts behind.
    let start = Instant::now();
    while !processes_mentioning(cache.path()).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{:?}",
            processes_mentioning(cache.path())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*cache.path().to_string_lossy()),
        "mounts left: {mounts}"
    );

    let list = json(
        &with_cache(&sb, &cache)
            .args(["env", "list", "--json"])
            .output()
            .unwrap(),
    );
    let base = list["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "debian:12-base")
        .unwrap()
        .clone();
    assert_eq!(
        base["installed"], false,
        "a killed pull looks installed: {base}"
    );

    // Two pulls at once: both succeed, one install, no leftovers.
    let pulls: Vec<_> = (0..2)
        .map(|_| {
            with_cache(&sb, &cache)
                .args(["env", "pull", "debian:12-base", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for p in pulls {
        let out = p.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(json(&out)["installed"], true);
    }
    let dirs: Vec<String> = std::fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert_eq!(dirs, vec!["debian_12-base-1.0.0".to_string()]);
    let out = with_cache(&sb, &cache)
        .args(["run", "debian:12-base", "--", "echo fine"])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "fine\n", "{}", stderr(&out));
}

#[test]
fn prune_removes_partial_and_unknown_directories() {
    let (sb, cache) = private_cache();
    let partial = cache.path().join(".partial-debian_12-1.0.0-abcd1234");
    std::fs::create_dir_all(partial.join("tree/etc")).unwrap();
    std::fs::write(partial.join("tree/etc/hostname"), vec![b'x'; 100_000]).unwrap();
    let unknown = cache.path().join("debian_11-1.0.0");
    std::fs::create_dir_all(&unknown).unwrap();
    let incomplete = cache.path().join("debian_12-build-1.0.0");
    std::fs::create_dir_all(&incomplete).unwrap();
    // Fast-start leftovers: a dead build, a failure marker, and a template
    // over an image of this cache that is not installed (any more).
    let templates = tempfile::tempdir().unwrap();
    let t = templates.path();
    std::fs::create_dir_all(t.join(".partial-0123456789-abcd")).unwrap();
    std::fs::write(t.join("0123456789.failed"), "boot failed").unwrap();
    std::fs::create_dir_all(t.join("outdated")).unwrap();
    let info = serde_json::json!({
        "format_version": 2, "key": "outdated", "environment": "debian:12",
        "vcpu_count": 1, "mem_mib": 1024, "network": false,
        "image": cache.path().join("debian_12-1.0.0/rootfs.ext4"),
        "image_sha256": "00", "built_at_unix_ms": 0, "build_ms": 0, "state_bytes": 0,
    });
    std::fs::write(t.join("outdated/template.json"), info.to_string()).unwrap();
    // One over another cache's image is not this prune's business.
    std::fs::create_dir_all(t.join("elsewhere")).unwrap();
    let mut other = info.clone();
    other["image"] = "/elsewhere/rootfs.ext4".into();
    std::fs::write(t.join("elsewhere/template.json"), other.to_string()).unwrap();

    let out = with_cache(&sb, &cache)
        .env("PYRO_TEMPLATE_CACHE_DIR", t)
        .args(["env", "prune", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let r = json(&out);
    assert_eq!(r["count"], 6, "{r}");
    assert!(r["freed_bytes"].as_u64().unwrap() >= 100_000, "{r}");
    let reasons: Vec<&str> = r["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    for reason in [
        "partial build",
        "not in the catalog",
        "incomplete install",
        "partial template build",
        "failed template build",
        "outdated template",
    ] {
        assert!(reasons.contains(&reason), "{r}");
    }
    assert!(!partial.exists() && !unknown.exists() && !incomplete.exists());
    assert!(!t.join("outdated").exists() && t.join("elsewhere").exists());
    let r = json(
        &with_cache(&sb, &cache)
            .env("PYRO_TEMPLATE_CACHE_DIR", t)
            .args(["env", "prune", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(r["count"], 0, "{r}");
}

/// Builds an environment and boots it as a regular user. Opt in with
/// `PYRO_TEST_UNPRIVILEGED_USER=<user>` (CI creates the user; it needs
/// /etc/subuid and /etc/subgid entries, which `useradd` adds).
#[test]
fn an_unprivileged_user_builds_and_runs_environments() {
    let Ok(user) = std::env::var("PYRO_TEST_UNPRIVILEGED_USER") else {
        eprintln!("skipped: set PYRO_TEST_UNPRIVILEGED_USER to run it");
        return;
    };
    if !crate::common::running_as_root("an_unprivileged_user_builds_and_runs_environments") {
        return;
    }
    let scratch = tempfile::Builder::new()
        .prefix("pyro-user-")
        .tempdir()
        .unwrap();
    let bin = scratch.path().join("pyro");
    std::fs::copy(env!("CARGO_BIN_EXE_pyro"), &bin).unwrap();
    let status = std::process::Command::new("chown")
        .args(["-R", &format!("{user}:"), &scratch.path().to_string_lossy()])
        .status()
        .unwrap();
    assert!(status.success());
    let home = scratch.path().join("home");
    let out = std::process::Command::new("runuser")
        .args(["-u", &user, "--", "env"])
        .arg(format!("HOME={}", home.display()))
        .arg(&bin)
        .args([
            "run",
            "--json",
            "debian:12-base",
            "--",
            "id -u; stat -c '%U:%G %a' /etc/shadow /usr/bin/passwd",
        ])
        .current_dir(scratch.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let r = json(&out);
    assert_eq!(r["exit_code"], 0, "{r}");
    assert_eq!(r["stdout"], "0\nroot:shadow 640\nroot:root 4755\n", "{r}");
    // Everything it wrote is the user's, in the user's own directories.
    let owner = std::process::Command::new("find")
        .arg(&home)
        .args(["!", "-user", &user])
        .output()
        .unwrap();
    assert_eq!(stdout(&owner), "", "files not owned by {user}");
}
