//! Guest networking, tested without touching any address outside this
//! machine: pyro itself runs inside a network namespace the test creates
//! ("the host"), whose only way out is a veth to a second namespace (a test
//! host serving HTTP on every address it has: a public-looking one,
//! 198.18.7.2, a private one, 10.203.7.2, and the link-local address of a
//! cloud's metadata service, 169.254.169.254). A server on all of the inner
//! host's addresses stands for the host's own services, which guests must
//! not reach. The test host also answers DNS (dnsmasq, on its private
//! address) for `web.pyro.test`, and the inner host's resolv.conf
//! (`/etc/netns/<ns>/resolv.conf`) points there.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::common::{hermetic, running_as_root, stderr, stdout, Sandbox};

pub(crate) struct Netns {
    host: String,
    web: String,
    servers: Vec<Child>,
    _files: tempfile::TempDir,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", stderr(&out));
}

impl Netns {
    pub(crate) fn new() -> Netns {
        // Tests run in parallel: each gets its own pair of namespaces.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{:x}{}",
            std::process::id() & 0xffff,
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let (host, web) = (format!("pyh{tag}"), format!("pyw{tag}"));
        let (va, vb) = (format!("pva{tag}"), format!("pvb{tag}"));
        ip(&["netns", "add", &host]);
        ip(&["netns", "add", &web]);
        let files = tempfile::tempdir().unwrap();
        let mut n = Netns {
            host: host.clone(),
            web: web.clone(),
            servers: Vec::new(),
            _files: files,
        };
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", &host]);
        ip(&["link", "set", &vb, "netns", &web]);
        for (a, b) in [
            ("198.18.7.1/24", "198.18.7.2/24"),
            ("10.203.7.1/24", "10.203.7.2/24"),
            ("169.254.0.1/16", "169.254.169.254/16"),
        ] {
            ip(&["-n", &host, "addr", "add", a, "dev", &va]);
            ip(&["-n", &web, "addr", "add", b, "dev", &vb]);
        }
        for (ns, dev) in [(&host, &va), (&web, &vb)] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        // Everything else leaves through the test host too, so nothing can
        // reach a real network.
        ip(&["-n", &host, "route", "add", "default", "via", "198.18.7.2"]);
        let dir = n._files.path().to_path_buf();
        std::fs::write(dir.join("hello.txt"), "hello-from-test-host\n").unwrap();
        std::fs::write(dir.join("secret.txt"), "HOST-LOOPBACK-ONLY\n").unwrap();
        // Both namespaces are the test's own: their servers may listen on
        // every address.
        for (ns, bind, port) in [(&web, "0.0.0.0", "8000"), (&host, "0.0.0.0", "18999")] {
            let child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    "python3",
                    "-m",
                    "http.server",
                    port,
                    "--bind",
                    bind,
                ])
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            n.servers.push(child);
        }
        // `ip netns exec` mounts this over /etc/resolv.conf for pyro (and
        // so for passt, which forwards the guest's DNS queries to it).
        let etc = std::path::Path::new("/etc/netns").join(&host);
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("resolv.conf"), "nameserver 10.203.7.2\n").unwrap();
        let dns = Command::new("ip")
            .args(["netns", "exec", &web, "dnsmasq", "--keep-in-foreground"])
            .args([
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--pid-file",
            ])
            .args(["--bind-interfaces", "--listen-address=10.203.7.2"])
            .arg("--address=/web.pyro.test/198.18.7.2")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        n.servers.push(dns);
        std::thread::sleep(Duration::from_millis(800));
        n
    }

    pub(crate) fn pyro(&self, sb: &Sandbox, args: &[&str]) -> std::process::Output {
        self.pyro_with(sb, &[], args)
    }

    fn pyro_with(&self, sb: &Sandbox, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
        hermetic(&mut Command::new("ip"))
            .envs(env.iter().copied())
            .args(["netns", "exec", &self.host, env!("CARGO_BIN_EXE_pyro")])
            .args(args)
            .env("PYRO_HOME", sb.home.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// A TCP port nothing listens on in the inner host.
    fn free_port(&self) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.host, "python3", "-c"])
            .arg("import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
            .output()
            .unwrap();
        stdout(&out).trim().parse().unwrap()
    }

    /// GETs `url` from the inner host (where pyro runs): the body, or
    /// `refused` when nothing listens.
    pub(crate) fn fetch(&self, url: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.host, "python3", "-c"])
            .arg(
                "import sys, urllib.request\n\
                 try:\n    print(urllib.request.urlopen(sys.argv[1], timeout=20).read().decode().strip())\n\
                 except OSError as e:\n    print('refused', e)",
            )
            .arg(url)
            .output()
            .unwrap();
        stdout(&out).trim().to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.host])
            .status();
        let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(&self.host));
        let _ = Command::new("ip")
            .args(["netns", "del", &self.web])
            .status();
    }
}

/// Fetches a URL from inside the guest with bash's /dev/tcp (no curl in
/// the image), printing the body's last line or `unreachable`.
const FETCH: &str = r#"fetch() { (timeout 5 bash -c "exec 3<>/dev/tcp/$1/$2 && printf 'GET /$3 HTTP/1.0\r\n\r\n' >&3 && cat <&3" || echo unreachable) 2>/dev/null | tail -1; }"#;

/// What the guest fetches: the test host (allowed), its metadata-service
/// address (link-local), its private address, the inner host's own
/// address and the gateway (which passt does not map to the host).
const PROBES: &str = "fetch 198.18.7.2 8000 hello.txt; fetch 169.254.169.254 8000 hello.txt; \
    fetch 10.203.7.2 8000 hello.txt; fetch 198.18.7.1 18999 secret.txt; \
    fetch 10.0.2.2 18999 secret.txt";

#[test]
fn egress_reaches_a_test_host_but_never_the_host_or_its_neighbours() {
    if !running_as_root("egress_reaches_a_test_host_but_never_the_host_or_its_neighbours") {
        return;
    }
    let net = Netns::new();
    let sb = Sandbox::new();
    // The inner host itself reaches every server: what stops the guest is
    // pyro.
    for url in [
        "http://198.18.7.2:8000/hello.txt",
        "http://169.254.169.254:8000/hello.txt",
        "http://10.203.7.2:8000/hello.txt",
    ] {
        assert_eq!(net.fetch(url), "hello-from-test-host", "{url}");
    }
    assert_eq!(
        net.fetch("http://198.18.7.1:18999/secret.txt"),
        "HOST-LOOPBACK-ONLY"
    );

    let script = format!("{FETCH}; {PROBES}; ls /sys/class/net | tr '\\n' ' '");
    let out = net.pyro(
        &sb,
        &["run", "--network", "debian:12", "--", "bash", "-c", &script],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "hello-from-test-host\nunreachable\nunreachable\nunreachable\nunreachable\neth0 lo ",
        "{}",
        stderr(&out)
    );

    // Private networks are an operator's explicit choice; the host and
    // link-local addresses stay out of reach even then.
    let out = net.pyro_with(
        &sb,
        &[("PYRO_EGRESS_ALLOW_PRIVATE", "1")],
        &["run", "--network", "debian:12", "--", "bash", "-c", &script],
    );
    assert_eq!(
        stdout(&out),
        "hello-from-test-host\nunreachable\nhello-from-test-host\nunreachable\nunreachable\neth0 lo ",
        "{}",
        stderr(&out)
    );

    // Names resolve through the host's resolver (passt forwards 10.0.2.3).
    let out = net.pyro(
        &sb,
        &[
            "run",
            "--network",
            "debian:12",
            "--",
            "bash",
            "-c",
            &format!("{FETCH}; cat /etc/resolv.conf; getent hosts web.pyro.test; fetch web.pyro.test 8000 hello.txt"),
        ],
    );
    assert_eq!(
        stdout(&out),
        "nameserver 10.0.2.3\n198.18.7.2      web.pyro.test\nhello-from-test-host\n",
        "{}",
        stderr(&out)
    );

    // Networked runs restore a template that has a NIC, and the restored
    // guest's network works.
    if std::env::var("PYRO_FAST_START").map_or(true, |v| v != "0") {
        let out = net.pyro(
            &sb,
            &[
                "run",
                "--json",
                "--network",
                "debian:12",
                "--",
                "bash",
                "-c",
                &format!("{FETCH}; fetch 198.18.7.2 8000 hello.txt"),
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["timings"]["restored"], true, "{v}");
        assert_eq!(v["stdout"], "hello-from-test-host\n", "{v}");
    }

    // A workspace with the egress policy; `off` has no interface at all.
    let out = net.pyro(
        &sb,
        &[
            "workspace",
            "create",
            "debian:12",
            "--network-policy",
            "egress",
            "--id-only",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let out = net.pyro(
        &sb,
        &["workspace", "exec", &id, "--", "bash", "-c", &script],
    );
    assert_eq!(
        stdout(&out),
        "hello-from-test-host\nunreachable\nunreachable\nunreachable\nunreachable\neth0 lo ",
        "{}",
        stderr(&out)
    );
    let st = net.pyro(&sb, &["workspace", "status", &id, "--json"]);
    assert!(stdout(&st).contains("\"network_policy\": \"egress\""));
    net.pyro(&sb, &["workspace", "delete", &id]);

    let out = net.pyro(&sb, &["run", "debian:12", "--", "bash", "-c", &script]);
    assert_eq!(
        stdout(&out),
        "unreachable\nunreachable\nunreachable\nunreachable\nunreachable\nlo ",
        "{}",
        stderr(&out)
    );
    sb.assert_clean_within(Duration::from_secs(10));
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}\n{}", stdout(out), stderr(out));
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

pub(crate) fn host_ports(service: &serde_json::Value) -> Vec<u64> {
    service["published_ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["host"], "127.0.0.1");
            assert_eq!(p["protocol"], "tcp");
            p["host_port"].as_u64().unwrap()
        })
        .collect()
}

#[test]
fn published_ports_serve_on_host_loopback_while_the_service_runs() {
    if !running_as_root("published_ports_serve_on_host_loopback_while_the_service_runs") {
        return;
    }
    let net = Netns::new();
    let sb = Sandbox::new();
    let ws = |args: &[&str]| net.pyro(&sb, &[&["workspace"], args].concat());

    // Publishing needs the policy that allows it.
    let out = ws(&[
        "create",
        "debian:12",
        "--network-policy",
        "egress",
        "--id-only",
    ]);
    let plain = stdout(&out).trim().to_string();
    let out = ws(&[
        "service",
        "start",
        &plain,
        "web",
        "--publish",
        "8080",
        "--",
        "sleep",
        "60",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--network-policy egress+published-ports"),
        "{}",
        stderr(&out)
    );
    ws(&["delete", &plain]);

    let out = ws(&[
        "create",
        "debian:12-build",
        "--network-policy",
        "egress+published-ports",
        "--id-only",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let out = ws(&[
        "exec", &id, "--", "sh", "-c",
        "mkdir -p one two && echo served-from-guest > one/index.txt && echo second-service > two/index.txt",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    // An automatic host port for a server bound to the guest's loopback.
    let web = json(&ws(&[
        "service",
        "start",
        &id,
        "web",
        "--cwd",
        "/workspace/one",
        "--ready-http",
        "http://127.0.0.1:8080/index.txt",
        "--publish",
        "8080",
        "--json",
        "--",
        "python3",
        "-m",
        "http.server",
        "8080",
        "--bind",
        "127.0.0.1",
    ]));
    assert_eq!(web["state"], "running");
    let web_port = host_ports(&web)[0];
    let web_url = format!("http://127.0.0.1:{web_port}/index.txt");
    assert_eq!(net.fetch(&web_url), "served-from-guest");

    // Status and logs show it and leave it up.
    let status = json(&ws(&["service", "status", &id, "web", "--json"]));
    assert_eq!(host_ports(&status), vec![web_port]);
    let out = ws(&["service", "status", &id, "web"]);
    assert!(
        stderr(&out).contains(&format!("published_ports=127.0.0.1:{web_port}->8080/tcp")),
        "{}",
        stderr(&out)
    );
    let logs = json(&ws(&["service", "logs", &id, "web", "--json"]));
    assert!(
        logs["stderr"].as_str().unwrap().contains("GET /index.txt"),
        "{logs}"
    );
    // Traffic on a published port is nobody's activity: it does not hold
    // off the idle timeout.
    let expires = |net: &Netns| {
        json(&net.pyro(&sb, &["workspace", "status", &id, "--json"]))["expires_at"].clone()
    };
    let before = expires(&net);
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..3 {
        assert_eq!(net.fetch(&web_url), "served-from-guest");
    }
    assert_eq!(expires(&net), before, "port traffic moved the idle timeout");

    // A second service with a chosen host port; the first keeps serving.
    let fixed = net.free_port();
    let second_args = [
        "service",
        "start",
        &id,
        "second",
        "--cwd",
        "/workspace/two",
        "--ready-tcp",
        "127.0.0.1:8081",
        "--publish",
        &format!("{fixed}:8081"),
        "--",
        "python3",
        "-m",
        "http.server",
        "8081",
    ];
    let start_second = || {
        json(&ws(
            &[&second_args[..4], &["--json"], &second_args[4..]].concat()
        ))
    };
    let second = start_second();
    assert_eq!(host_ports(&second), vec![fixed]);
    assert_eq!(net.fetch(&web_url), "served-from-guest");
    let second_url = format!("http://127.0.0.1:{fixed}/index.txt");
    assert_eq!(net.fetch(&second_url), "second-service");
    let list = json(&ws(&["service", "list", &id, "--json"]));
    assert_eq!(list["running_count"], 2);
    // Starting it again (here with another port) is refused and leaves its
    // ports as they were.
    let mut again_args = second_args.to_vec();
    again_args[9] = "8081";
    let out = ws(&again_args);
    assert!(stderr(&out).contains("already running"), "{}", stderr(&out));
    assert_eq!(net.fetch(&second_url), "second-service");
    let status = json(&ws(&["service", "status", &id, "second", "--json"]));
    assert_eq!(host_ports(&status), vec![fixed]);
    let status = json(&ws(&["status", &id, "--json"]));
    assert_eq!(status["running_service_count"], 2, "{status}");
    let out = ws(&["status", &id]);
    assert!(
        stdout(&out).contains("Services: 2/2 running"),
        "{}",
        stdout(&out)
    );

    // A host port in use fails the start with nothing started.
    let out = ws(&[
        "service",
        "start",
        &id,
        "third",
        "--publish",
        &format!("{web_port}:8082"),
        "--",
        "sleep",
        "60",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("cannot publish on 127.0.0.1:{web_port}")),
        "{}",
        stderr(&out)
    );
    let list = json(&ws(&["service", "list", &id, "--json"]));
    assert_eq!(list["count"], 2, "{list}");

    // Stop closes the port; the other service's stays.
    let stopped = json(&ws(&["service", "stop", &id, "web", "--json"]));
    assert_eq!(stopped["state"], "stopped");
    assert!(host_ports(&stopped).is_empty());
    assert!(net.fetch(&web_url).starts_with("refused"));
    assert_eq!(net.fetch(&second_url), "second-service");

    // A service that ends on its own has its ports released when seen.
    ws(&["exec", &id, "--", "pkill", "-f", "http.server 8081"]);
    let ended = json(&ws(&["service", "status", &id, "second", "--json"]));
    assert_ne!(ended["state"], "running", "{ended}");
    assert!(host_ports(&ended).is_empty(), "{ended}");
    assert!(net.fetch(&second_url).starts_with("refused"));

    // A peer that stops reading loses its connection; the VM's other
    // clients never wait on it.
    let flood = json(&ws(&[
        "service", "start", &id, "flood",
        "--ready-tcp", "127.0.0.1:9000",
        "--publish", "9000",
        "--json",
        "--", "python3", "-c",
        "import socket\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', 9000)); s.listen()\n\
         while True:\n    c, _ = s.accept()\n    try:\n        c.sendall(b'x' * (256 << 20))\n    except OSError:\n        pass\n    c.close()",
    ]));
    let flood_port = host_ports(&flood)[0].to_string();
    let stalled = Command::new("ip")
        .args(["netns", "exec", &net.host, "python3", "-c"])
        .arg(
            "import socket, sys, time\n\
             c = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n\
             total = len(c.recv(1))\n\
             time.sleep(30)\n\
             while True:\n    b = c.recv(1 << 20)\n    if not b:\n        break\n    total += len(b)\n\
             print(total)",
        )
        .arg(&flood_port)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(8));
    let alive = hermetic(&mut Command::new("ip"))
        .args(["netns", "exec", &net.host, "timeout", "10"])
        .arg(env!("CARGO_BIN_EXE_pyro"))
        .args(["workspace", "exec", &id, "--", "echo", "alive"])
        .env("PYRO_HOME", sb.home.path())
        .output()
        .unwrap();
    assert_eq!(stdout(&alive), "alive\n", "{}", stderr(&alive));
    let got: u64 = stdout(&stalled.wait_with_output().unwrap())
        .trim()
        .parse()
        .unwrap();
    eprintln!("stalled peer received {got} of {} bytes", 256u64 << 20);
    assert!(got < 256 << 20, "the stalled connection was dropped");
    json(&ws(&["service", "stop", &id, "flood", "--json"]));

    // Reset and delete end every port with the VM.
    let again = start_second();
    assert_eq!(host_ports(&again), vec![fixed]);
    assert_eq!(net.fetch(&second_url), "second-service");
    let out = ws(&["reset", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(net.fetch(&second_url).starts_with("refused"));
    let again = json(&ws(&[
        "service",
        "start",
        &id,
        "web",
        "--publish",
        "8080",
        "--ready-tcp",
        "127.0.0.1:8080",
        "--json",
        "--",
        "python3",
        "-m",
        "http.server",
        "8080",
    ]));
    let url = format!("http://127.0.0.1:{}/", host_ports(&again)[0]);
    assert!(!net.fetch(&url).starts_with("refused"));
    // The network's scratch directory (passt's socket) goes with the
    // workspace, though delete kills the supervisor that would remove it.
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            sb.home
                .path()
                .join("workspaces")
                .join(&id)
                .join("vm/vm.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let scratch = std::path::PathBuf::from(record["spec"]["network_socket"].as_str().unwrap());
    let scratch = scratch.parent().unwrap().to_path_buf();
    assert!(scratch.is_dir(), "{}", scratch.display());
    ws(&["delete", &id]);
    assert!(net.fetch(&url).starts_with("refused"));
    assert!(!scratch.exists(), "delete left {}", scratch.display());
    sb.assert_clean_within(Duration::from_secs(10));
}
