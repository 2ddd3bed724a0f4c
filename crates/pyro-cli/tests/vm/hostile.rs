//! A guest that misbehaves, and state that lies: pyro stays safe, bounded
//! and responsive.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{exec, stderr, ws, Sandbox};

/// The pid of the QEMU of workspace `id`.
fn qemu_of(sb: &Sandbox, id: &str) -> i32 {
    let needle = sb
        .home
        .path()
        .join("workspaces")
        .join(id)
        .join("disk.qcow2");
    sb.processes()
        .iter()
        .find(|p| p.contains("qemu-system") && p.contains(&*needle.to_string_lossy()))
        .and_then(|p| p.split(':').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no QEMU for {id}: {:?}", sb.processes()))
}

fn signal(pid: i32, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

#[test]
fn a_frozen_guest_cannot_hang_calls_or_its_own_end() {
    let sb = Sandbox::new();
    let id = ws(&sb, &["create", "debian:12"])["workspace_id"]
        .as_str()
        .unwrap()
        .to_string();
    signal(qemu_of(&sb, &id), "-STOP");

    // A command gets a clear error within its timeout and the grace.
    let start = Instant::now();
    let out = sb.run(&[
        "workspace",
        "exec",
        &id,
        "--timeout-seconds",
        "3",
        "--",
        "true",
    ]);
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no answer from the VM within 33s"),
        "{}",
        stderr(&out)
    );
    assert!(took < Duration::from_secs(45), "took {took:?}");

    // Stopping it takes seconds, not forever.
    let start = Instant::now();
    let st = ws(&sb, &["stop", &id]);
    assert_eq!(st["state"], "stopped", "{st}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );

    // The idle timeout still ends a frozen guest.
    ws(&sb, &["start", &id]);
    let id2 = ws(&sb, &["create", "debian:12", "--ttl-seconds", "5"])["workspace_id"]
        .as_str()
        .unwrap()
        .to_string();
    signal(qemu_of(&sb, &id2), "-STOP");
    let start = Instant::now();
    loop {
        let st = ws(&sb, &["status", &id2]);
        if st["state"] == "stopped" {
            assert_eq!(st["stop_reason"], "ttl_expired", "{st}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never expired: {st}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // And delete always finishes quickly.
    signal(qemu_of(&sb, &id), "-STOP");
    let start = Instant::now();
    ws(&sb, &["delete", &id]);
    ws(&sb, &["delete", &id2]);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    sb.assert_clean_within(Duration::from_secs(10));
}

#[test]
fn a_stale_supervisor_pid_never_gets_a_process_killed() {
    let sb = Sandbox::new();
    let id = ws(&sb, &["create", "debian:12"])["workspace_id"]
        .as_str()
        .unwrap()
        .to_string();
    ws(&sb, &["stop", &id]);
    // An unrelated process, whose pid a stale record names.
    let mut bystander = Command::new("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid_file = sb
        .home
        .path()
        .join("workspaces")
        .join(&id)
        .join("vm/supervisor.pid");
    let bystander_pid = bystander.id();
    let plant = || std::fs::write(&pid_file, bystander_pid.to_string()).unwrap();
    let alive = |b: &mut std::process::Child| b.try_wait().unwrap().is_none();

    plant();
    let st = ws(&sb, &["status", &id]);
    assert_eq!(st["state"], "stopped", "a stale pid is no VM: {st}");
    // `start` boots (it does not believe the bystander is the VM) ...
    ws(&sb, &["start", &id]);
    assert_eq!(exec(&sb, &id, "echo up")["stdout"], "up\n");
    ws(&sb, &["stop", &id]);
    assert!(alive(&mut bystander));
    // ... and stop and delete leave the bystander be.
    plant();
    ws(&sb, &["stop", &id]);
    assert!(alive(&mut bystander));
    plant();
    ws(&sb, &["delete", &id]);
    assert!(alive(&mut bystander), "delete killed an unrelated process");
    bystander.kill().unwrap();
    let _ = bystander.wait();
    sb.assert_clean_within(Duration::from_secs(10));
}

#[test]
fn state_on_disk_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    let id = ws(&sb, &["create", "debian:12", "--secret", "TOKEN=s3cr3t"])["workspace_id"]
        .as_str()
        .unwrap()
        .to_string();
    let home = sb.home.path();
    let dir = home.join("workspaces").join(&id);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for d in [
        home.to_path_buf(),
        dir.clone(),
        dir.join("vm"),
        dir.join("secrets"),
        crate::common::sockets_dir(&dir.join("vm")),
    ] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    for f in [
        dir.join("workspace.json"),
        dir.join("disk.qcow2"),
        dir.join("vm/vm.json"),
    ] {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    if crate::common::running_as_root("state_on_disk_is_private (as another user)") {
        let control = crate::common::sockets_dir(&dir.join("vm")).join("control.sock");
        assert!(control.exists(), "{}", control.display());
        for path in [dir.join("workspace.json"), control] {
            let out = Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .args(["sh", "-c", "cat \"$0\" >/dev/null 2>&1 || test -S \"$0\""])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                !out.status.success(),
                "another user reached {}",
                path.display()
            );
        }
    }
    ws(&sb, &["delete", &id]);
    let sockets = crate::common::sockets_dir(&dir.join("vm"));
    assert!(!sockets.exists(), "delete left {}", sockets.display());
}

#[test]
fn a_deep_home_is_no_problem_for_sockets() {
    // A UNIX socket's path may not exceed 107 bytes; VM directories under
    // this home are longer than that, their sockets are not.
    let sb = Sandbox::new();
    let deep = sb.home.path().join("d".repeat(60)).join("e".repeat(60));
    std::fs::create_dir_all(&deep).unwrap();
    let pyro = |args: &[&str]| {
        let mut c = sb.cmd();
        c.env("PYRO_HOME", &deep).args(args);
        c.output().unwrap()
    };
    let out = pyro(&["run", "debian:12", "--", "echo", "deep"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "deep\n");
    let out = pyro(&["workspace", "create", "debian:12", "--id-only"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let vm = deep.join("workspaces").join(&id).join("vm");
    assert!(
        vm.join("run/agent.sock").as_os_str().len() > 107,
        "the home is deep enough"
    );
    for args in [
        vec!["workspace", "exec", &id, "--", "true"],
        vec!["workspace", "stop", &id],
        vec!["workspace", "start", &id],
        vec!["workspace", "delete", &id],
    ] {
        let out = pyro(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(!crate::common::sockets_dir(&vm).exists());
}

#[test]
fn a_chatty_guest_console_fills_no_disk() {
    let sb = Sandbox::new();
    let id = ws(&sb, &["create", "debian:12"])["workspace_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = exec(
        &sb,
        &id,
        "head -c 4000000 /dev/zero | tr '\\0' x > /dev/console; echo written",
    );
    assert_eq!(r["stdout"], "written\n", "{r}");
    std::thread::sleep(Duration::from_secs(3));
    let vm = sb.home.path().join("workspaces").join(&id).join("vm");
    let run = crate::common::sockets_dir(&vm).join("run");
    assert!(run.join("console.log").exists(), "{}", run.display());
    let size = |name: &str| std::fs::metadata(run.join(name)).map_or(0, |m| m.len());
    let total = size("console.log") + size("console.log.1");
    assert!(total < 2 << 20, "the console log holds {total} bytes");
    assert!(size("console.log.1") > 0, "the latest output is kept");
    ws(&sb, &["delete", &id]);
}

/// Every command line on the host, NUL-separated arguments joined.
fn host_command_lines() -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            all.push_str(&String::from_utf8_lossy(&cmdline).replace('\0', " "));
            all.push('\n');
        }
    }
    all
}

#[test]
fn secrets_stay_off_command_lines_and_out_of_split_shell_reads() {
    let sb = Sandbox::new();
    let token = "tok-51c0e7d2a9-secret";
    let file_value = "file-77ab3c19e4-secret";
    let file = sb.home.path().join("db.secret");
    std::fs::write(&file, file_value).unwrap();
    // Given by name (the value comes from the environment) and from a
    // file: neither value is on any command line.
    let out = sb
        .cmd()
        .env("API_TOKEN", token)
        .args([
            "workspace",
            "create",
            "debian:12",
            "--json",
            "--secret",
            "API_TOKEN",
        ])
        .arg("--secret")
        .arg(format!("DB_PASS=@{}", file.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let id = crate::common::json(&out)["workspace_id"]
        .as_str()
        .unwrap()
        .to_string();
    ws(
        &sb,
        &[
            "service",
            "start",
            &id,
            "holder",
            "--secret-env",
            "API_TOKEN",
            "--secret-env",
            "DB_PASS",
            "--",
            "sleep",
            "120",
        ],
    );
    let shell = ws(&sb, &["shell", "open", &id, "--secret-env", "API_TOKEN"]);
    let sid = shell["shell_id"].as_str().unwrap().to_string();
    let lines = host_command_lines();
    for value in [token, file_value] {
        assert!(!lines.contains(value), "a command line shows {value}");
    }
    assert!(lines.contains(&id), "the scan sees pyro's processes");

    // The secret is printed in two halves two seconds apart, and read in
    // between: no read, and no two reads together, show it.
    let cut = token.len() / 2;
    ws(
        &sb,
        &[
            "shell", "write", &id, &sid, "--input",
            &format!("printf '%s' \"${{API_TOKEN:0:{cut}}}\"; sleep 3; printf '%s\\n' \"${{API_TOKEN:{cut}}}\"\n"),
        ],
    );
    let mut seen = String::new();
    let mut cursor = 0u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let read = ws(
            &sb,
            &["shell", "read", &id, &sid, "--cursor", &cursor.to_string()],
        );
        cursor = read["next_cursor"].as_u64().unwrap();
        seen.push_str(read["output"].as_str().unwrap());
        if seen.contains("[REDACTED]") {
            break;
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    assert!(seen.contains("[REDACTED]"), "{seen:?}");
    assert!(!seen.contains(token), "{seen:?}");
    assert!(
        !seen.contains(&token[..cut]),
        "the first half leaked: {seen:?}"
    );
    ws(&sb, &["delete", &id]);
}
