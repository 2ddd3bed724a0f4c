//! Guest networking, tested without touching any address outside this
//! machine: pyro itself runs inside a network namespace the test creates
//! ("the host"), whose only way out is a veth to a second namespace (a test
//! host serving HTTP). A server bound to the inner host's 127.0.0.1 stands
//! for the host's loopback, which guests must not reach.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{stderr, stdout, Sandbox};

struct Netns {
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
    fn new() -> Netns {
        let tag = format!("{:x}", std::process::id() & 0xffff);
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
        ip(&["-n", &host, "addr", "add", "10.203.7.1/24", "dev", &va]);
        ip(&["-n", &web, "addr", "add", "10.203.7.2/24", "dev", &vb]);
        for (ns, dev) in [(&host, &va), (&web, &vb)] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        // Everything else leaves through the test host too, so nothing can
        // reach a real network.
        ip(&["-n", &host, "route", "add", "default", "via", "10.203.7.2"]);
        let dir = n._files.path().to_path_buf();
        std::fs::write(dir.join("hello.txt"), "hello-from-test-host\n").unwrap();
        std::fs::write(dir.join("secret.txt"), "HOST-LOOPBACK-ONLY\n").unwrap();
        for (ns, bind, port) in [(&web, "10.203.7.2", "8000"), (&host, "127.0.0.1", "18999")] {
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
        std::thread::sleep(Duration::from_millis(800));
        n
    }

    fn pyro(&self, sb: &Sandbox, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.host, env!("CARGO_BIN_EXE_pyro")])
            .args(args)
            .env("PYRO_HOME", sb.home.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
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
        let _ = Command::new("ip")
            .args(["netns", "del", &self.web])
            .status();
    }
}

/// Fetches a URL from inside the guest with bash's /dev/tcp (no curl in
/// the image), printing the body's last line or `unreachable`.
const FETCH: &str = r#"fetch() { (timeout 5 bash -c "exec 3<>/dev/tcp/$1/$2 && printf 'GET /$3 HTTP/1.0\r\n\r\n' >&3 && cat <&3" || echo unreachable) 2>/dev/null | tail -1; }"#;

#[test]
fn egress_reaches_a_test_host_but_never_the_host_loopback() {
    let net = Netns::new();
    let sb = Sandbox::new();
    let script = format!(
        "{FETCH}; fetch 10.203.7.2 8000 hello.txt; fetch 10.0.2.2 18999 secret.txt; fetch 10.203.7.1 18999 secret.txt; ls /sys/class/net | tr '\\n' ' '"
    );
    let out = net.pyro(
        &sb,
        &["run", "--network", "debian:12", "--", "bash", "-c", &script],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "hello-from-test-host\nunreachable\nunreachable\neth0 lo ",
        "{}",
        stderr(&out)
    );

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
        "hello-from-test-host\nunreachable\nunreachable\neth0 lo ",
        "{}",
        stderr(&out)
    );
    let st = net.pyro(&sb, &["workspace", "status", &id, "--json"]);
    assert!(stdout(&st).contains("\"network_policy\": \"egress\""));
    net.pyro(&sb, &["workspace", "delete", &id]);

    let out = net.pyro(&sb, &["run", "debian:12", "--", "bash", "-c", &script]);
    assert_eq!(
        stdout(&out),
        "unreachable\nunreachable\nunreachable\nlo ",
        "{}",
        stderr(&out)
    );
    sb.assert_clean_within(Duration::from_secs(10));
}
