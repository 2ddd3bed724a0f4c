//! `pyro run` on real guests.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{stderr, stdout, Sandbox};
use sha2::{Digest, Sha256};

#[test]
fn git_version_comes_from_inside_the_guest() {
    let sb = Sandbox::new();
    let out = sb.run(&["run", "debian:12", "--", "git", "--version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("git version 2.39."),
        "{}",
        stdout(&out)
    );
    let err = stderr(&out);
    for line in [
        "[run] phase=create environment=debian:12",
        "[run] phase=start vm_id=",
        "[run] phase=execute vm_id=",
        "[run] environment=debian:12 execution_mode=guest_virtio_serial exit_code=0 duration_ms=",
    ] {
        assert!(err.contains(line), "missing {line:?} in {err}");
    }

    // The kernel is the guest's, not the host's.
    let r = sb.run_json("debian:12", &["uname -r; hostname"]);
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let lines: Vec<&str> = r["stdout"].as_str().unwrap().lines().collect();
    assert_eq!(lines.len(), 2, "{r}");
    assert_ne!(lines[0], host_release.trim());
    assert!(lines[0].ends_with("-cloud-amd64"), "{r}");
    assert!(lines[1].starts_with("pyro-"), "{r}");
    assert_eq!(r["execution_mode"], "guest_virtio_serial");
    assert_eq!(r["environment"], "debian:12");
    assert_eq!(r["cleanup"]["deleted"], true);
    assert_eq!(r["cleanup"]["reason"], "post_exec_cleanup");
    assert!(r["vm_id"].as_str().unwrap().len() == 12);
    assert!(r["duration_ms"].as_u64().unwrap() > 0);
    sb.assert_clean_within(Duration::from_secs(5));
}

#[test]
fn exit_codes_signals_and_timeouts_come_back_exactly() {
    let sb = Sandbox::new();
    for (command, code) in [
        ("true", 0),
        ("false", 1),
        ("exit 7", 7),
        ("no-such-command", 127),
    ] {
        let out = sb.run(&["run", "debian:12", "--", command]);
        assert_eq!(out.status.code(), Some(code), "{command}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("exit_code={code} ")),
            "{}",
            stderr(&out)
        );
    }
    // An argv whose program does not exist also reads 127.
    let r = sb.run_json("debian:12", &["/no/such/program", "arg"]);
    assert_eq!(r["exit_code"], 127, "{r}");

    let r = sb.run_json("debian:12", &["kill -KILL $$"]);
    assert_eq!(r["exit_code"], 137, "{r}");
    assert_eq!(r["signal"], 9, "{r}");
    let out = sb.run(&["run", "debian:12", "--", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(143));
    assert!(stderr(&out).contains("signal=15"), "{}", stderr(&out));

    // The timeout ends the command even while a process that left its
    // process group holds stdout open: the run answers promptly. (That the
    // escapee itself dies is shown in a workspace, whose VM outlives the
    // command: `timeouts_service_stops_and_shell_closes_end_everything_they_started`.)
    let start = Instant::now();
    let out = sb.run(&[
        "run",
        "--json",
        "--timeout-seconds",
        "2",
        "debian:12",
        "--",
        "setsid sh -c 'while :; do echo tick; sleep 0.5; done' & echo started; sleep 60",
    ]);
    let elapsed = start.elapsed();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(124), "{r}");
    assert_eq!(r["exit_code"], 124);
    assert_eq!(r["timed_out"], true);
    assert!(
        r["stderr"].as_str().unwrap().contains("timed out after 2s"),
        "{r}"
    );
    assert!(
        r["stdout"].as_str().unwrap().starts_with("started\n"),
        "{r}"
    );
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    sb.assert_clean_within(Duration::from_secs(5));
}

#[test]
fn ten_mib_of_stdout_arrives_intact_and_streams_stay_separate() {
    let sb = Sandbox::new();
    // The guest checksums what it sends, on stderr; stdout carries the bytes.
    let out = sb.run(&[
        "run",
        "debian:12",
        "--",
        "head -c 10485760 /dev/urandom > /tmp/blob && sha256sum /tmp/blob | cut -d' ' -f1 >&2 && cat /tmp/blob",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout.len(), 10 * 1024 * 1024);
    let ours: String = Sha256::digest(&out.stdout)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let theirs = stderr(&out)
        .lines()
        .find(|l| l.len() == 64 && l.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or_default()
        .to_string();
    assert_eq!(ours, theirs);

    let r = sb.run_json(
        "debian:12",
        &["echo to-out; echo to-err >&2; read line; echo \"read=$?\""],
    );
    assert_eq!(r["stdout"], "to-out\nread=1\n", "stdin is closed: {r}");
    assert_eq!(r["stderr"], "to-err\n");
    sb.assert_clean_within(Duration::from_secs(5));
}

#[test]
fn commands_are_quoted_by_the_one_rule() {
    let sb = Sandbox::new();
    // Several words: an argv, passed through untouched.
    let r = sb.run_json("debian:12", &["sh", "-c", "echo \"$0\"", "hi"]);
    assert_eq!(r["stdout"], "hi\n", "{r}");
    let r = sb.run_json(
        "debian:12",
        &["printf", "%s|", "a b", "'c'", "\"d\"", "$HOME"],
    );
    assert_eq!(r["stdout"], "a b|'c'|\"d\"|$HOME|", "{r}");
    // One word: a shell command string.
    let r = sb.run_json("debian:12-build", &["python3 -c \"print(1)\""]);
    assert_eq!(r["stdout"], "1\n", "{r}");
    assert_eq!(r["exit_code"], 0);
}

#[test]
fn concurrent_runs_are_isolated_and_all_clean_up() {
    let sb = Sandbox::new();
    let children: Vec<_> = (0..4)
        .map(|i| {
            sb.cmd()
                .args(["run", "--json", "debian:12", "--"])
                .arg(format!(
                    "echo {i} > /root/mark-{i}; echo {i} > /workspace/mark-{i}; sleep 1; ls /root /workspace | grep mark | sort -u"
                ))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let r: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("run {i}: {}", stderr(&out)));
        assert_eq!(r["exit_code"], 0, "{r}");
        assert_eq!(
            r["stdout"],
            format!("mark-{i}\n"),
            "run {i} saw others' files: {r}"
        );
    }
    sb.assert_clean_within(Duration::from_secs(5));
}

#[test]
fn a_killed_client_leaves_nothing_behind() {
    let sb = Sandbox::new();
    let mut child = sb
        .cmd()
        .args(["run", "debian:12", "--", "echo running; sleep 120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the command runs in the guest.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "running\n");
    assert!(!sb.vm_dirs().is_empty());
    assert!(!sb.processes().is_empty());
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    sb.assert_clean_within(Duration::from_secs(10));
}

#[test]
fn bad_input_gets_a_clear_error() {
    let sb = Sandbox::new();
    let out = sb.run(&["run", "debian:99", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown environment \"debian:99\""),
        "{}",
        stderr(&out)
    );

    let out = sb.run(&[
        "run",
        "--json",
        "--vcpu-count",
        "0",
        "debian:12",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["ok"], false);
    assert!(r["error"].as_str().unwrap().contains("vcpu_count"), "{r}");

    let out = sb.run(&["run", "debian:12", "--", ""]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("command is required"),
        "{}",
        stderr(&out)
    );
    assert!(sb.vm_dirs().is_empty());
}

/// `pyro run --json` with the given extra environment, parsed; asserts
/// the command succeeded.
fn run_with(sb: &Sandbox, env: &[(&str, &std::ffi::OsStr)], command: &str) -> serde_json::Value {
    let out = sb
        .cmd()
        .envs(env.iter().copied())
        .args(["run", "--json", "debian:12", "--", command])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["exit_code"], 0, "{v}");
    v
}

#[test]
fn runs_restore_a_template_and_every_guest_is_its_own() {
    let sb = Sandbox::new();
    let cache = tempfile::tempdir().unwrap();
    let templates = [("PYRO_TEMPLATE_CACHE_DIR", cache.path().as_os_str())];
    let probe = "cat /proc/sys/kernel/random/uuid; hostname; date +%s";
    let lines = |v: &serde_json::Value| -> Vec<String> {
        v["stdout"]
            .as_str()
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    };
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };

    // The first run builds the template, then restores it like the next.
    let a = run_with(&sb, &templates, probe);
    let b = run_with(&sb, &templates, probe);
    assert_eq!(a["timings"]["restored"], true, "{a}");
    assert_eq!(b["timings"]["restored"], true, "{b}");
    let (la, lb) = (lines(&a), lines(&b));
    assert_ne!(
        la[0], lb[0],
        "each restored guest gets its own random state"
    );
    assert_ne!(la[1], lb[1], "and its own hostname");
    let guest_time: i64 = lb[2].parse().unwrap();
    assert!(
        (guest_time - now()).abs() <= 5,
        "and the current time: {guest_time}"
    );

    // Off on request.
    let off = [
        ("PYRO_TEMPLATE_CACHE_DIR", cache.path().as_os_str()),
        ("PYRO_FAST_START", std::ffi::OsStr::new("0")),
    ];
    assert_eq!(run_with(&sb, &off, "true")["timings"]["restored"], false);

    // A template that cannot restore: the run boots instead, and the
    // template is rebuilt for the next one.
    let dirs: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("template.json").exists())
        .collect();
    assert_eq!(dirs.len(), 1, "one template");
    let state = dirs[0].path().join("state.bin");
    let len = std::fs::metadata(&state).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let c = run_with(&sb, &templates, "echo booted");
    assert_eq!(c["stdout"], "booted\n");
    assert_eq!(c["timings"]["restored"], false, "{c}");
    assert_eq!(
        run_with(&sb, &templates, "true")["timings"]["restored"],
        true
    );
    sb.assert_clean_within(Duration::from_secs(10));
}

/// Warm guests waiting in the sandbox's run pool.
fn pooled(sb: &Sandbox) -> Vec<String> {
    let mut ids = Vec::new();
    for key in std::fs::read_dir(sb.home.path().join("pool"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for e in std::fs::read_dir(key.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = e.file_name().to_string_lossy().into_owned();
            if !id.starts_with('.') {
                ids.push(id);
            }
        }
    }
    ids
}

fn wait_for_pool(sb: &Sandbox, what: &str, ready: impl Fn(&[String]) -> bool) -> Vec<String> {
    let start = Instant::now();
    loop {
        let ids = pooled(sb);
        if ready(&ids) {
            return ids;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "{what}: pool is {ids:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_warm_pool_serves_each_run_a_fresh_guest_once() {
    let sb = Sandbox::new();
    let run = |extra: &[(&str, &str)], command: &str| {
        let out = sb
            .cmd()
            .env("PYRO_POOL_SIZE", "1")
            .env("PYRO_POOL_TTL", "120")
            .envs(extra.iter().copied())
            .args(["run", "--json", "debian:12", "--", "sh", "-c", command])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let probe = "test -e /tmp/used && echo reused || echo fresh; touch /tmp/used; hostname";
    let first = run(&[], probe);
    assert_ne!(first["timings"]["start"], "pooled", "{first}");
    // The run's filler leaves one warm guest waiting.
    let waiting = wait_for_pool(&sb, "after the first run", |ids| ids.len() == 1);
    let second = run(&[], probe);
    assert_eq!(second["timings"]["start"], "pooled", "{second}");
    assert_eq!(second["vm_id"], waiting[0].as_str());
    let (a, b) = (
        first["stdout"].as_str().unwrap(),
        second["stdout"].as_str().unwrap(),
    );
    assert!(b.starts_with("fresh\n"), "{b}");
    assert_ne!(a.lines().nth(1), b.lines().nth(1), "the same hostname");
    // Used once, then gone: the next guest is another one.
    assert!(!sb.home.path().join("vms").join(&waiting[0]).exists());
    let next = wait_for_pool(&sb, "after the pooled run", |ids| {
        ids.len() == 1 && ids[0] != waiting[0]
    });
    let third = run(&[], probe);
    assert_eq!(third["timings"]["start"], "pooled", "{third}");
    assert_eq!(third["vm_id"], next[0].as_str());
    assert!(third["stdout"].as_str().unwrap().starts_with("fresh\n"));

    // A waiting guest makes room for a VM someone asks for.
    wait_for_pool(&sb, "before the workspace", |ids| ids.len() == 1);
    let out = sb
        .cmd()
        .env("PYRO_MAX_RUNNING_VMS", "1")
        .args(["workspace", "create", "debian:12", "--id-only"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(pooled(&sb).is_empty(), "{:?}", pooled(&sb));
    let id = stdout(&out).trim().to_string();
    assert!(sb.run(&["workspace", "delete", &id]).status.success());

    // An unclaimed guest ends after its idle time.
    run(&[("PYRO_POOL_TTL", "2")], "true");
    wait_for_pool(&sb, "short-lived", |ids| ids.len() == 1);
    sb.assert_clean_within(Duration::from_secs(30));
}
