//! As root, every QEMU is jailed: a uid of its own, namespaces that show it
//! only its own VM's files and no network, and a cgroup that caps its
//! memory. Checked from the outside (`/proc`) and from the inside, with
//! QEMU's own namespaces and credentials (`nsenter`, `setpriv`).

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{exec, running_as_root, stderr, ws, Sandbox};

/// The pid of the QEMU of workspace `id`.
fn qemu_of(sb: &Sandbox, id: &str) -> String {
    let needle = sb
        .home
        .path()
        .join("workspaces")
        .join(id)
        .join("disk.qcow2");
    sb.processes()
        .iter()
        .find(|p| p.contains("qemu-system") && p.contains(&*needle.to_string_lossy()))
        .and_then(|p| p.split(':').next().map(str::to_owned))
        .unwrap_or_else(|| panic!("no QEMU for {id}: {:?}", sb.processes()))
}

/// A line of `/proc/PID/status`, its first value.
fn status_field(pid: &str, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {field} for {pid}"))
        .to_string()
}

/// Reads the first bytes of `path` as QEMU could: in its namespaces (if
/// `enter`), with its uid and gid and no other groups.
fn read_as_qemu(pid: &str, enter: bool, path: &Path) -> Output {
    let uid = status_field(pid, "Uid");
    let gid = status_field(pid, "Gid");
    let mut cmd = Command::new("nsenter");
    if enter {
        cmd.args(["-t", pid, "-m", "-n", "-i", "-u", "--"]);
    } else {
        cmd.arg("--");
    }
    cmd.args([
        "setpriv",
        "--reuid",
        &uid,
        "--regid",
        &gid,
        "--clear-groups",
        "head",
        "-c",
        "4",
    ])
    .arg(path)
    .output()
    .unwrap()
}

fn id_of(v: &serde_json::Value) -> String {
    v["workspace_id"].as_str().unwrap().to_string()
}

#[test]
fn qemu_runs_as_its_own_user_and_sees_only_its_own_vm() {
    if !running_as_root("qemu_runs_as_its_own_user_and_sees_only_its_own_vm") {
        return;
    }
    let sb = Sandbox::new();
    let a = id_of(&ws(
        &sb,
        &["create", "debian:12", "--secret", "API_TOKEN=hunter2-jail"],
    ));
    let b = id_of(&ws(
        &sb,
        &["create", "debian:12", "--network-policy", "egress"],
    ));
    let (qa, qb) = (qemu_of(&sb, &a), qemu_of(&sb, &b));

    // Unprivileged, each its own, with nothing to regain.
    let (ua, ub) = (status_field(&qa, "Uid"), status_field(&qb, "Uid"));
    assert_ne!(ua, "0");
    assert_ne!(ua, ub, "two VMs share a uid");
    assert_eq!(status_field(&qa, "CapEff"), "0000000000000000");
    assert_eq!(status_field(&qa, "NoNewPrivs"), "1");
    assert_eq!(
        std::fs::read(format!("/proc/{qa}/environ")).unwrap(),
        b"",
        "QEMU's environment is not empty"
    );
    for ns in ["mnt", "net", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{qa}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "QEMU shares our {ns} namespace");
    }

    let ws_dir = |id: &str| sb.home.path().join("workspaces").join(id);
    // The check can succeed: QEMU reads its own disk.
    let own = read_as_qemu(&qa, true, &ws_dir(&a).join("disk.qcow2"));
    assert!(own.status.success(), "{}", stderr(&own));
    assert_eq!(own.stdout, b"QFI\xfb");

    // Another VM's disk, this workspace's secrets, the state around it:
    // nothing there inside the jail, and not readable with its uid outside.
    let secrets: Vec<_> = std::fs::read_dir(ws_dir(&a).join("secrets"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(!secrets.is_empty());
    let forbidden = [
        vec![
            ws_dir(&b).join("disk.qcow2"),
            ws_dir(&a).join("workspace.json"),
        ],
        secrets,
    ]
    .concat();
    for path in &forbidden {
        for enter in [true, false] {
            let out = read_as_qemu(&qa, enter, path);
            assert!(
                !out.status.success() && out.stdout.is_empty(),
                "QEMU could read {} (in its namespaces: {enter})",
                path.display()
            );
        }
        let inside = stderr(&read_as_qemu(&qa, true, path));
        assert!(inside.contains("No such file"), "{inside}");
    }

    // The VM itself works, its network too (passt serves it across the
    // jail), and nothing in the guest sees the jail.
    assert_eq!(exec(&sb, &a, "echo ok")["stdout"], "ok\n");
    let route = exec(&sb, &b, "cat /proc/net/route | wc -l");
    assert_ne!(route["stdout"], "1\n", "no route in the guest: {route}");

    for id in [&a, &b] {
        ws(&sb, &["delete", id]);
    }
    sb.assert_clean_within(std::time::Duration::from_secs(10));
}

/// The memory cgroup file of `pid` named `v1` under cgroup v1, `v2` under v2.
fn memory_file(pid: &str, v1: &str, v2: &str) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        if controllers.split(',').any(|c| c == "memory") {
            let file = Path::new("/sys/fs/cgroup/memory")
                .join(path.trim_start_matches('/'))
                .join(v1);
            return std::fs::read_to_string(file).unwrap().trim().to_string();
        }
    }
    let path = cgroups.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    let file = Path::new("/sys/fs/cgroup")
        .join(path.trim_start_matches('/'))
        .join(v2);
    std::fs::read_to_string(file).unwrap().trim().to_string()
}

#[test]
fn a_guest_that_fills_its_memory_meets_qemu_s_cgroup_not_the_host() {
    if !running_as_root("a_guest_that_fills_its_memory_meets_qemu_s_cgroup_not_the_host") {
        return;
    }
    let sb = Sandbox::new();
    // The cap is the guest's memory and QEMU's allowance (TCG here).
    let id = id_of(&ws(&sb, &["create", "debian:12", "--mem-mib", "512"]));
    let q = qemu_of(&sb, &id);
    let limit: u64 = memory_file(&q, "memory.limit_in_bytes", "memory.max")
        .parse()
        .unwrap();
    assert_eq!(limit, (512 + 512) << 20);
    ws(&sb, &["delete", &id]);

    // With no allowance at all, a guest that fills its memory takes QEMU
    // past its cap: the cgroup kills QEMU, and pyro says why.
    let mut create = sb.cmd();
    create.env("PYRO_QEMU_MEMORY_OVERHEAD_MIB", "0").args([
        "workspace",
        "create",
        "debian:12",
        "--mem-mib",
        "512",
        "--json",
    ]);
    let created = create.output().unwrap();
    assert!(created.status.success(), "{}", stderr(&created));
    let id = id_of(&serde_json::from_slice(&created.stdout).unwrap());
    let q = qemu_of(&sb, &id);
    assert_eq!(
        memory_file(&q, "memory.limit_in_bytes", "memory.max"),
        (512u64 << 20).to_string()
    );
    let out = sb.run(&[
        "workspace",
        "exec",
        &id,
        "--timeout-seconds",
        "300",
        "--",
        "sh",
        "-c",
        "head -c 450M /dev/zero | tail -c 450M > /dev/null",
    ]);
    assert!(!out.status.success());
    let why = stderr(&out);
    assert!(why.contains("memory limit of 512 MiB"), "{why}");
    let st = ws(&sb, &["status", &id]);
    assert_eq!(st["state"], "stopped", "{st}");
    ws(&sb, &["delete", &id]);
    sb.assert_clean_within(std::time::Duration::from_secs(10));
}
