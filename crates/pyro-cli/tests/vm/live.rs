//! Pause, resume and fork on real guests: what a guest had running (a
//! process, a service behind a published port, a shell with its history,
//! files) is there after every cycle, an idle timeout pauses, forks are
//! independent copies of one instant, and killing QEMU or the supervisor
//! mid-pause or mid-resume loses nothing that was acknowledged.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::{exec, json, processes_mentioning, stderr, stdout, ws, Sandbox};
use crate::network::{host_ports, Netns};

/// Starts a process that outlives the command: every 0.1 s it writes its
/// pid and a count it keeps in memory to /workspace/counter.
const COUNTER: &str = "setsid sh -c 'i=0; while :; do i=$((i+1)); echo \"$$ $i\" > /workspace/.c && mv /workspace/.c /workspace/counter; sleep 0.1; done' >/dev/null 2>&1 < /dev/null & sleep 0.5";

/// The counter's pid and count.
fn counter(read: impl Fn(&str) -> serde_json::Value) -> (u64, u64) {
    let r = read("cat /workspace/counter");
    let text = r["stdout"].as_str().unwrap_or_default().to_string();
    let mut words = text.split_whitespace().map(|w| w.parse::<u64>().unwrap());
    match (words.next(), words.next()) {
        (Some(pid), Some(count)) => (pid, count),
        _ => panic!("no counter: {r}"),
    }
}

fn workspace_dir(sb: &Sandbox, id: &str) -> PathBuf {
    sb.home.path().join("workspaces").join(id)
}

/// No supervisor and no QEMU of this workspace runs.
fn nothing_runs(dir: &Path) -> bool {
    processes_mentioning(dir).is_empty()
}

fn succeeded(out: &Output, what: &str) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        stdout(out),
        stderr(out)
    );
    json(out)
}

#[test]
fn a_paused_workspace_comes_back_whole_five_times() {
    if !crate::common::running_as_root("a_paused_workspace_comes_back_whole_five_times") {
        return;
    }
    let net = Netns::new();
    let sb = Sandbox::new();
    let call = |args: &[&str]| {
        let mut full = vec!["workspace"];
        full.extend_from_slice(args);
        match full.iter().position(|a| *a == "--") {
            Some(i) => full.insert(i, "--json"),
            None => full.push("--json"),
        }
        succeeded(&net.pyro(&sb, &full), &format!("{args:?}"))
    };
    let w = call(&[
        "create",
        "debian:12-build",
        "--network-policy",
        "egress+published-ports",
    ]);
    assert_eq!(w["on_idle"], "pause", "{w}");
    let id = w["workspace_id"].as_str().unwrap().to_string();
    let dir = workspace_dir(&sb, &id);
    let run = |command: &str| call(&["exec", &id, "--", command]);
    run("mkdir site && echo served-after-pause > site/index.txt && echo kept > before.txt");
    run(COUNTER);
    let web = call(&[
        "service",
        "start",
        &id,
        "web",
        "--cwd",
        "/workspace/site",
        "--ready-http",
        "http://127.0.0.1:8080/index.txt",
        "--publish",
        "8080",
        "--",
        "python3",
        "-m",
        "http.server",
        "8080",
        "--bind",
        "127.0.0.1",
    ]);
    let port = host_ports(&web)[0];
    let url = format!("http://127.0.0.1:{port}/index.txt");
    assert_eq!(net.fetch(&url), "served-after-pause");
    let shell = call(&["shell", "open", &id])["shell_id"]
        .as_str()
        .unwrap()
        .to_string();
    call(&[
        "shell",
        "write",
        &id,
        &shell,
        "--input",
        "cd /tmp && export MARK=kept-$((6*7)) && echo ready-$MARK",
    ]);
    let (pid, mut last) = counter(run);

    for cycle in 1..=5 {
        let before = counter(run).1;
        assert!(before >= last, "cycle {cycle}: {before} < {last}");
        let p = call(&["pause", &id]);
        assert_eq!(p["state"], "paused", "cycle {cycle}: {p}");
        assert!(p["workspace_pause"]["state_bytes"].as_u64().unwrap() > 1 << 20);
        // QEMU and the supervisor are gone: the memory is freed.
        assert!(
            nothing_runs(&dir),
            "cycle {cycle}: still running: {:?}",
            processes_mentioning(&dir)
        );
        assert_eq!(call(&["status", &id])["state"], "paused");
        assert!(
            net.fetch(&url).starts_with("refused"),
            "a paused workspace's port stays closed"
        );
        // Resumed on request, or by the next call that needs the VM.
        if cycle % 2 == 1 {
            let r = call(&["resume", &id]);
            assert_eq!(r["workspace_resume"]["restored"], true, "{r}");
            assert_eq!(r["state"], "started");
        }
        let (same, after) = counter(run);
        assert_eq!(same, pid, "cycle {cycle}: the counting process is another");
        assert!(after >= before, "cycle {cycle}: {after} < {before}");
        // It goes on counting from where it was.
        std::thread::sleep(Duration::from_millis(600));
        last = counter(run).1;
        assert!(
            last > after,
            "cycle {cycle}: the counter stopped at {after}"
        );
        assert_eq!(run("cat before.txt")["stdout"], "kept\n");
        // The service answers on the same host port.
        assert_eq!(net.fetch(&url), "served-after-pause", "cycle {cycle}");
        let status = call(&["service", "status", &id, "web"]);
        assert_eq!(host_ports(&status), vec![port], "cycle {cycle}");
        // The shell keeps its directory, environment and scrollback.
        let marker = format!("cycle-{cycle}");
        call(&[
            "shell",
            "write",
            &id,
            &shell,
            "--input",
            &format!("echo \"$PWD $MARK {marker}\""),
        ]);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let read = call(&["shell", "read", &id, &shell, "--cursor", "0"]);
            let out = read["output"].as_str().unwrap().to_string();
            if out.contains(&format!("/tmp kept-42 {marker}")) {
                assert!(out.contains("ready-kept-42"), "scrollback lost: {out}");
                break;
            }
            assert!(Instant::now() < deadline, "cycle {cycle}: shell said {out}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    call(&["delete", &id]);
    sb.assert_clean_within(Duration::from_secs(10));
}

#[test]
fn the_idle_timeout_pauses_and_the_next_exec_resumes() {
    let sb = Sandbox::new();
    let w = ws(&sb, &["create", "debian:12", "--ttl-seconds", "4"]);
    let id = w["workspace_id"].as_str().unwrap().to_string();
    let dir = workspace_dir(&sb, &id);
    let run = |c: &str| exec(&sb, &id, c);
    run(COUNTER);
    let (pid, before) = counter(run);
    let start = Instant::now();
    loop {
        let st = ws(&sb, &["status", &id]);
        if st["state"] == "paused" {
            assert!(st["stop_reason"].is_null(), "{st}");
            break;
        }
        assert_eq!(st["state"], "started", "{st}");
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "never paused: {st}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(nothing_runs(&dir), "{:?}", processes_mentioning(&dir));
    // The next exec resumes it, transparently.
    let r = run("cat /workspace/counter");
    assert_eq!(r["exit_code"], 0, "{r}");
    let (same, after) = counter(run);
    assert_eq!(same, pid);
    assert!(after >= before);
    assert_eq!(ws(&sb, &["status", &id])["state"], "started");
    ws(&sb, &["delete", &id]);
    sb.assert_clean_within(Duration::from_secs(10));
}

#[test]
fn forks_are_independent_copies_of_one_instant() {
    let sb = Sandbox::new();
    let w = ws(&sb, &["create", "debian:12", "--name", "parent"]);
    let parent = w["workspace_id"].as_str().unwrap().to_string();
    exec(&sb, &parent, "echo from-parent > shared.txt");
    exec(&sb, &parent, COUNTER);
    let (pid, _) = counter(|c| exec(&sb, &parent, c));
    let f = ws(
        &sb,
        &[
            "fork", &parent, "--count", "3", "--name", "kid-a", "--name", "kid-b",
        ],
    );
    assert_eq!(f["count"], 3, "{f}");
    let kids: Vec<String> = f["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            assert_eq!(k["state"], "started", "{k}");
            k["workspace_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(f["workspaces"][0]["name"], "kid-a");
    assert_eq!(f["workspaces"][2]["name"], serde_json::Value::Null);
    let all: Vec<&String> = std::iter::once(&parent).chain(&kids).collect();
    let mut hostnames = Vec::new();
    let mut uuids = Vec::new();
    for id in &all {
        exec(&sb, id, &format!("echo mine > only-{id}.txt"));
    }
    for id in &all {
        let run = |c: &str| exec(&sb, id, c);
        // The parent's files and its running process, in every one.
        assert_eq!(run("cat shared.txt")["stdout"], "from-parent\n");
        let (same, count) = counter(run);
        assert_eq!(same, pid, "{id}: the counter is not the parent's process");
        std::thread::sleep(Duration::from_millis(500));
        assert!(counter(run).1 > count, "{id}: the counter does not run");
        // Only its own file.
        let listing = run("ls only-*.txt")["stdout"].as_str().unwrap().to_string();
        assert_eq!(listing.trim(), format!("only-{id}.txt"), "{id}");
        hostnames.push(run("hostname")["stdout"].as_str().unwrap().to_string());
        uuids.push(
            run("cat /proc/sys/kernel/random/uuid")["stdout"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for list in [&hostnames, &uuids] {
        let mut unique = list.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 4, "{list:?}");
    }
    // A child's diff is against the parent's baseline.
    let d = ws(&sb, &["diff", &kids[0]]);
    assert_eq!(d["changed"], true, "{d}");
    for id in all {
        ws(&sb, &["delete", id]);
    }
    sb.assert_clean_within(Duration::from_secs(10));
}

/// The pid of the workspace's live supervisor, once a new one (not
/// `old`) has written it.
fn new_supervisor(dir: &Path, old: Option<i32>, limit: Duration) -> i32 {
    let start = Instant::now();
    loop {
        let pid = std::fs::read_to_string(dir.join("vm/supervisor.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid.filter(|p| Some(*p) != old) {
            if Path::new(&format!("/proc/{pid}")).exists() {
                return pid;
            }
        }
        assert!(start.elapsed() < limit, "no supervisor started");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The pid of the workspace's QEMU.
fn qemu_of(dir: &Path) -> i32 {
    let disk = dir.join("disk.qcow2");
    let found = processes_mentioning(&disk);
    let line = found
        .iter()
        .find(|l| l.contains("qemu-system"))
        .unwrap_or_else(|| panic!("no QEMU for {}: {found:?}", disk.display()));
    line.split(':').next().unwrap().parse().unwrap()
}

fn kill9(pid: i32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -9 {pid}");
}

#[test]
fn kill_9_during_pause_or_resume_loses_nothing_acknowledged() {
    let sb = Sandbox::new();
    let w = ws(&sb, &["create", "debian:12"]);
    let id = w["workspace_id"].as_str().unwrap().to_string();
    let dir = workspace_dir(&sb, &id);
    let partial = dir.join("vm/paused/state.bin.partial");
    let mut written = Vec::new();
    // Each round writes (and has acknowledged) one more file; every later
    // round checks all of them.
    let mut acknowledge = |round: &str| {
        let r = exec(&sb, &id, &format!("echo {round} > ack-{round}.txt"));
        assert_eq!(r["exit_code"], 0, "{r}");
        written.push(round.to_string());
        written.clone()
    };
    let all_there = |files: &[String]| {
        for f in files {
            let r = exec(&sb, &id, &format!("cat ack-{f}.txt"));
            assert_eq!(r["stdout"], format!("{f}\n"), "ack-{f}.txt: {r}");
        }
    };

    // The supervisor, then QEMU, killed while the state is being saved.
    for victim in ["supervisor", "qemu"] {
        let files = acknowledge(&format!("pause-{victim}"));
        let pid = match victim {
            "supervisor" => new_supervisor(&dir, None, Duration::from_secs(5)),
            _ => qemu_of(&dir),
        };
        let pause = sb
            .cmd()
            .args(["workspace", "pause", &id])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !partial.exists() {
            assert!(start.elapsed() < Duration::from_secs(30), "no save began");
            std::thread::sleep(Duration::from_micros(200));
        }
        kill9(pid);
        let out = pause.wait_with_output().unwrap();
        assert!(!out.status.success(), "the pause cannot have succeeded");
        let st = ws(&sb, &["status", &id]);
        assert_eq!(st["state"], "stopped", "{st}");
        let reason = st["stop_reason"].as_str().unwrap();
        assert!(
            ["pause_interrupted", "vm_exited"].contains(&reason),
            "{victim}: {st}"
        );
        assert!(
            st["last_error"].as_str().unwrap().contains("paus"),
            "the error says it happened while pausing: {st}"
        );
        ws(&sb, &["start", &id]);
        all_there(&files);
    }

    // The supervisor, then QEMU, killed while the saved state is restored.
    for victim in ["supervisor", "qemu"] {
        let files = acknowledge(&format!("resume-{victim}"));
        let old = new_supervisor(&dir, None, Duration::from_secs(5));
        ws(&sb, &["pause", &id]);
        let resume = sb
            .cmd()
            .args(["workspace", "resume", &id, "--json"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = new_supervisor(&dir, Some(old), Duration::from_secs(30));
        let pid = match victim {
            "supervisor" => pid,
            _ => {
                let start = Instant::now();
                loop {
                    let found = processes_mentioning(&dir.join("disk.qcow2"));
                    if found.iter().any(|l| l.contains("qemu-system")) {
                        break qemu_of(&dir);
                    }
                    assert!(start.elapsed() < Duration::from_secs(30), "no QEMU");
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        };
        kill9(pid);
        let out = resume.wait_with_output().unwrap();
        // Nothing of a killed supervisor's VM lives on (a child it was
        // starting gives up once it sees its parent gone). A supervisor
        // that saw its QEMU die while restoring boots the disk instead.
        let start = Instant::now();
        while victim == "supervisor" && !nothing_runs(&dir) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{victim}: left running: {:?}",
                processes_mentioning(&dir)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Either the state was not consumed yet (still paused), or the
        // guest ran and its disk is what is left (stopped, saying why), or
        // the supervisor saw QEMU die while restoring and booted the disk.
        let st = ws(&sb, &["status", &id]);
        match st["state"].as_str().unwrap() {
            "paused" => {}
            "started" => {
                assert_eq!(
                    victim,
                    "qemu",
                    "killed {pid}: {st}\nresume said: {}{}\nprocesses: {:?}\nsupervisor: {}",
                    stdout(&out),
                    stderr(&out),
                    processes_mentioning(&dir),
                    std::fs::read_to_string(dir.join("vm/supervisor.log")).unwrap_or_default()
                );
                let r = json(&out);
                assert_eq!(r["workspace_resume"]["restored"], false, "{r}");
            }
            "stopped" => assert!(
                ["crashed", "vm_exited"].contains(&st["stop_reason"].as_str().unwrap()),
                "{victim}: {st}"
            ),
            other => panic!("{victim}: state {other}: {st}"),
        }
        // `start` brings it back either way.
        ws(&sb, &["start", &id]);
        assert_eq!(ws(&sb, &["status", &id])["state"], "started");
        all_there(&files);
    }
    ws(&sb, &["delete", &id]);
    sb.assert_clean_within(Duration::from_secs(10));
}

/// QEMU's resident memory, MiB.
fn rss_mib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib / 1024
}

#[test]
fn memory_a_guest_frees_goes_back_to_the_host() {
    let sb = Sandbox::new();
    let w = ws(&sb, &["create", "debian:12"]);
    let id = w["workspace_id"].as_str().unwrap().to_string();
    let qemu = qemu_of(&workspace_dir(&sb, &id));
    let idle = rss_mib(qemu);
    // 400 MiB written by a process that then exits.
    let r = exec(&sb, &id, "dd if=/dev/zero of=/dev/null bs=400M count=1");
    assert_eq!(r["exit_code"], 0, "{r}");
    let peak = rss_mib(qemu);
    assert!(
        peak > idle + 300,
        "the guest never held it: {idle} -> {peak} MiB"
    );
    // The guest reports the freed pages; QEMU lets them go.
    let start = Instant::now();
    loop {
        let now = rss_mib(qemu);
        if now < idle + 100 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still {now} MiB (idle {idle}, peak {peak})"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    ws(&sb, &["delete", &id]);
    sb.assert_clean_within(Duration::from_secs(10));
}
