//! Answers too large to hold: a guest with 50,000 files, a service that
//! logs 10 MiB, absurd shell sizes, 2 GiB of output, an export full of
//! traps. Each is paged, cut (and says so) or refused, the host's
//! processes stay small, and the VM keeps working.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{exec, hermetic, json, stderr, ws, Sandbox};

fn id_of(v: &serde_json::Value) -> String {
    v["workspace_id"].as_str().unwrap().to_string()
}

fn alive(sb: &Sandbox, id: &str) {
    let r = exec(sb, id, "echo alive");
    assert_eq!(r["stdout"], "alive\n", "the VM did not survive: {r}");
}

#[test]
fn huge_listings_logs_and_shell_reads_are_cut_and_the_vm_lives() {
    let sb = Sandbox::new();
    let id = id_of(&ws(&sb, &["create", "debian:12"]));

    // 50,000 files, listed recursively: one bounded answer, flagged.
    let made = exec(
        &sb,
        &id,
        "mkdir -p big/a big/b && cd big/a && seq 1 25000 | xargs touch && cd ../b && seq 25001 50000 | xargs touch && find /workspace/big -type f | wc -l",
    );
    assert_eq!(made["stdout"], "50000\n", "{made}");
    let list = ws(&sb, &["file", "list", &id, "big", "--recursive"]);
    assert_eq!(list["truncated"], true, "a partial listing must say so");
    let n = list["entries"].as_array().unwrap().len();
    assert!(n > 1000 && n < 50_000, "{n} entries");
    alive(&sb, &id);

    // A service that writes 10 MiB: its logs answer, cut and flagged.
    ws(
        &sb,
        &[
            "service",
            "start",
            &id,
            "chatty",
            "--ready-file",
            "/workspace/logged",
            "--ready-timeout-seconds",
            "300",
            "--",
            "sh",
            "-c",
            "head -c 10485760 /dev/zero | tr '\\0' x; touch /workspace/logged; sleep 600",
        ],
    );
    let logs = ws(&sb, &["service", "logs", &id, "chatty", "--all"]);
    assert_eq!(logs["truncated"], true, "{}", logs["truncated"]);
    let kept = logs["stdout"].as_str().unwrap().len();
    assert!(kept > 0 && kept <= 1 << 20, "{kept} bytes of log");
    // The log itself, in guest memory, stays within its cap (8 MiB).
    let size = exec(&sb, &id, "stat -c %s /run/pyro-services/chatty.stdout");
    let size: u64 = size["stdout"].as_str().unwrap().trim().parse().unwrap();
    assert!(size <= 9 << 20, "the service log holds {size} bytes");
    alive(&sb, &id);

    // Shells: absurd grids are refused clearly, absurd reads are bounded.
    let out = sb.run(&[
        "workspace",
        "shell",
        "open",
        &id,
        "--cols",
        "65535",
        "--rows",
        "65535",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cols must be 1 to 1000"),
        "{}",
        stderr(&out)
    );
    let shell = ws(&sb, &["shell", "open", &id]);
    let sid = shell["shell_id"].as_str().unwrap().to_string();
    ws(
        &sb,
        &[
            "shell",
            "write",
            &id,
            &sid,
            "--input",
            "head -c 3000000 /dev/zero | tr '\\0' y; echo; echo done-writing\n",
        ],
    );
    std::thread::sleep(Duration::from_secs(5));
    for plain in [false, true] {
        let mut args = vec![
            "shell",
            "read",
            &id,
            &sid,
            "--max-chars",
            "18446744073709551615",
        ];
        if plain {
            args.push("--plain");
        }
        let read = ws(&sb, &args);
        let got = read["output"].as_str().unwrap().len();
        assert!(got <= 1 << 20, "a shell read of {got} chars");
    }
    ws(&sb, &["shell", "close", &id, &sid]);
    alive(&sb, &id);
    ws(&sb, &["delete", &id]);
}

#[test]
fn exports_plant_no_traps_on_the_host() {
    let sb = Sandbox::new();
    let id = id_of(&ws(&sb, &["create", "debian:12"]));
    let made = exec(
        &sb,
        &id,
        "mkdir -p trap/sub && cp /bin/true trap/suid && chmod 4755 trap/suid && \
         echo w > trap/open && chmod 0666 trap/open && chmod 0777 trap/sub && \
         ln -s /etc/passwd trap/passwd && ln -s ../../../outside trap/up && \
         ln -s suid trap/near && echo ok",
    );
    assert_eq!(made["stdout"], "ok\n", "{made}");
    let out_dir = sb.home.path().join("exported");
    let result = ws(
        &sb,
        &["export", &id, "trap", "--output", out_dir.to_str().unwrap()],
    );
    let mode = |name: &str| {
        std::fs::symlink_metadata(out_dir.join(name))
            .unwrap()
            .permissions()
            .mode()
    };
    assert_eq!(mode("suid") & 0o7777, 0o755, "the setuid bit survived");
    assert_eq!(mode("open") & 0o777, 0o644, "world-writable survived");
    assert_eq!(mode("sub") & 0o777, 0o755);
    for escaping in ["passwd", "up"] {
        assert!(
            std::fs::symlink_metadata(out_dir.join(escaping)).is_err(),
            "{escaping} was created"
        );
    }
    // A link that stays inside the export is kept.
    assert_eq!(
        std::fs::read_link(out_dir.join("near")).unwrap(),
        std::path::Path::new("suid")
    );
    let skipped = result["skipped"].to_string();
    assert!(
        skipped.contains("passwd") && skipped.contains("up"),
        "{result}"
    );
    ws(&sb, &["delete", &id]);
}

/// The highest resident set size `/proc/PID/status` reported while the
/// child ran (kB), with the child's stdout.
fn peak_rss_of(mut child: Child) -> (u64, Vec<u8>, bool) {
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).unwrap();
        out
    });
    let mut peak = 0;
    loop {
        if let Some(hwm) = vm_hwm(pid) {
            peak = peak.max(hwm);
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (peak, reader.join().unwrap(), status.success());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn vm_hwm(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .ok()
}

const TWO_GIB: &str = "head -c 2147483648 /dev/zero";
/// How far a host process may grow over its idle size on 2 GiB of output.
const BOUND_KB: u64 = 64 * 1024;

#[test]
fn two_gib_of_output_leave_the_cli_and_the_mcp_server_small() {
    let sb = Sandbox::new();
    let id = id_of(&ws(&sb, &["create", "debian:12"]));

    // The CLI, idle and under 2 GiB from a workspace command and a run.
    let cli = |args: &[&str]| {
        let child = sb
            .cmd()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        peak_rss_of(child)
    };
    let (idle, _, ok) = cli(&["workspace", "exec", &id, "--json", "--", "echo hi"]);
    assert!(ok);
    let (peak, out, _) = cli(&[
        "workspace",
        "exec",
        &id,
        "--json",
        "--timeout-seconds",
        "900",
        "--",
        TWO_GIB,
    ]);
    let r: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(r["exit_code"], 0, "{}", r["stderr"]);
    assert_eq!(r["stdout_truncated"], true, "{}", r["stdout_truncated"]);
    eprintln!("workspace exec of 2 GiB: CLI peak {peak} kB, idle {idle} kB");
    assert!(
        peak < idle + BOUND_KB,
        "workspace exec: {peak} kB at peak, {idle} kB idle"
    );
    let logs = ws(&sb, &["logs", &id]);
    let last = logs["entries"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        last["stdout_truncated"], true,
        "the history says so: {last}"
    );
    assert!(last["stdout"].as_str().unwrap().len() <= 1 << 20);
    alive(&sb, &id);
    ws(&sb, &["delete", &id]);

    let (peak, out, _) = cli(&[
        "run",
        "--json",
        "--timeout-seconds",
        "900",
        "debian:12",
        "--",
        TWO_GIB,
    ]);
    let r: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(r["stdout_truncated"], true, "{r}");
    assert!(
        peak < idle + BOUND_KB,
        "run: {peak} kB at peak, {idle} kB idle"
    );

    // The MCP server, over stdio: idle after initialize, then vm_run.
    let mut server = hermetic(&mut Command::new(env!("CARGO_BIN_EXE_pyro")))
        .args(["mcp", "serve"])
        .env("PYRO_HOME", sb.home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = server.id();
    let mut input = server.stdin.take().unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let mut send = |v: serde_json::Value| {
        writeln!(input, "{v}").unwrap();
        input.flush().unwrap();
    };
    send(
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-03-26", "capabilities": {},
        "clientInfo": {"name": "bounds-test", "version": "0"}}}),
    );
    lines.next().unwrap().unwrap();
    send(serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    std::thread::sleep(Duration::from_millis(500));
    let idle = vm_hwm(pid).unwrap();
    send(
        serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "vm_run", "arguments": {"environment": "debian:12", "command": TWO_GIB,
        "timeout_seconds": 900}}}),
    );
    let started = Instant::now();
    let mut peak = idle;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(lines.next().unwrap().unwrap());
    });
    let reply = loop {
        peak = peak.max(vm_hwm(pid).unwrap_or(0));
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(20)) {
            break line;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1200),
            "vm_run never answered"
        );
    };
    peak = peak.max(vm_hwm(pid).unwrap_or(0));
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    let result = &reply["result"]["structuredContent"];
    assert_eq!(result["stdout_truncated"], true, "{reply}");
    assert!(
        peak < idle + BOUND_KB,
        "MCP server: {peak} kB at peak, {idle} kB idle"
    );
    drop(input);
    let _ = server.wait();
    let _ = json;
    sb.assert_clean_within(Duration::from_secs(10));
}
