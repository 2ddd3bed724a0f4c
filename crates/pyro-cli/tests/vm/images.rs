//! Container images as environments, against a real registry (Debian's
//! `docker-registry`, started here on a loopback port) with images the
//! tests build with `umoci` from layers they write, pushed with `skopeo`.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{json, stderr, stdout, Sandbox};

/// The reasons an `env prune --json` report gives.
fn prune_reasons(r: &serde_json::Value) -> Vec<&str> {
    r["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect()
}

fn tool(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `docker-registry` on a loopback port, optionally with TLS and basic
/// auth; killed when dropped.
pub struct Registry {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

pub struct Secure {
    /// A directory with `ca.crt` (as skopeo's `--cert-dir` wants it).
    pub ca_dir: PathBuf,
    pub user: &'static str,
    pub password: &'static str,
}

impl Registry {
    pub fn start() -> Registry {
        Registry::with(None)
    }

    fn with(secure: Option<&Path>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("pyro-registry-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some(s) = secure {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: pyro-test\n    path: {}\n",
                s.join("server.crt").display(),
                s.join("server.key").display(),
                s.join("htpasswd").display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry (scripts/setup.sh installs it)");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "registry did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { dir, port, child }
    }

    /// A registry with TLS from a CA made here and basic auth.
    pub fn secure() -> (Registry, Secure) {
        let keys = tempfile::Builder::new()
            .prefix("pyro-ca-")
            .tempdir()
            .unwrap()
            .keep();
        let k = |n: &str| keys.join(n);
        tool(
            Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=pyro test CA",
                    "-keyout",
                ])
                .arg(k("ca.key"))
                .arg("-out")
                .arg(k("ca.crt")),
        );
        tool(
            Command::new("openssl")
                .args([
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    "/CN=127.0.0.1",
                    "-keyout",
                ])
                .arg(k("server.key"))
                .arg("-out")
                .arg(k("server.csr")),
        );
        std::fs::write(k("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        tool(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-in"])
                .arg(k("server.csr"))
                .arg("-CA")
                .arg(k("ca.crt"))
                .arg("-CAkey")
                .arg(k("ca.key"))
                .args(["-CAcreateserial", "-extfile"])
                .arg(k("ext"))
                .arg("-out")
                .arg(k("server.crt")),
        );
        let hash = tool(Command::new("htpasswd").args(["-Bbn", "tester", "s3cret"]));
        std::fs::write(k("htpasswd"), hash).unwrap();
        let reg = Registry::with(Some(&keys));
        let ca_dir = keys.join("certs");
        std::fs::create_dir_all(&ca_dir).unwrap();
        std::fs::copy(k("ca.crt"), ca_dir.join("ca.crt")).unwrap();
        (
            reg,
            Secure {
                ca_dir,
                user: "tester",
                password: "s3cret",
            },
        )
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The file the registry stores blob `digest` in.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One entry of a test layer.
pub enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Owned(&'a str, &'a [u8], u64),
    Hard(&'a str, &'a str),
    Sym(&'a str, &'a str),
}

/// Writes an uncompressed layer tarball.
pub fn layer(path: &Path, entries: &[E]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mode(0o755);
        match e {
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            E::File(p, data, mode) => {
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Owned(p, data, uid) => {
                h.set_mode(0o644);
                h.set_uid(*uid);
                h.set_gid(*uid);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Hard(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Sym(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
        }
    }
    b.finish().unwrap();
}

/// An OCI layout the tests add images to with umoci.
pub struct Layout {
    pub dir: tempfile::TempDir,
}

impl Layout {
    pub fn new() -> Layout {
        let dir = tempfile::Builder::new()
            .prefix("pyro-oci-")
            .tempdir()
            .unwrap();
        tool(
            Command::new("umoci")
                .args(["init", "--layout"])
                .arg(dir.path().join("L")),
        );
        Layout { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("L")
    }

    fn image(&self, tag: &str) -> String {
        format!("{}:{tag}", self.path().display())
    }

    /// A new image `tag` from `layers` (bottom first), then `umoci config`
    /// with `config` arguments.
    pub fn build(&self, tag: &str, layers: &[Vec<E>], config: &[&str]) {
        tool(Command::new("umoci").args(["new", "--image", &self.image(tag)]));
        for (i, entries) in layers.iter().enumerate() {
            let file = self.dir.path().join(format!("{tag}-{i}.tar"));
            layer(&file, entries);
            tool(
                Command::new("umoci")
                    .args(["raw", "add-layer", "--image", &self.image(tag)])
                    .arg(&file),
            );
        }
        if !config.is_empty() {
            tool(
                Command::new("umoci")
                    .args(["config", "--image", &self.image(tag)])
                    .args(config),
            );
        }
    }

    /// `skopeo copy` of image `tag` to `dest` (a transport:reference).
    pub fn copy(&self, tag: &str, dest: &str, extra: &[&str]) {
        tool(
            Command::new("skopeo")
                .args(["copy", "--quiet"])
                .args(extra)
                .arg(format!("oci:{}", self.image(tag)))
                .arg(dest),
        );
    }

    pub fn push(&self, tag: &str, registry: &Registry, name: &str) {
        self.copy(
            tag,
            &format!("docker://{}/{name}", registry.host()),
            &["--dest-tls-verify=false"],
        );
    }

    /// The digest of the manifest `tag` names in the layout.
    pub fn manifest_digest(&self, tag: &str) -> String {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.path().join("index.json")).unwrap())
                .unwrap();
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn blob(&self, digest: &str) -> PathBuf {
        self.path()
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap())
    }

    /// Writes a blob into the layout; returns its digest.
    pub fn put_blob(&self, bytes: &[u8]) -> String {
        use sha2::{Digest, Sha256};
        let hex: String = Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::write(self.path().join("blobs/sha256").join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    }
}

fn busybox() -> Vec<u8> {
    std::fs::read("/bin/busybox")
        .expect("/bin/busybox (busybox-static; scripts/setup.sh installs it)")
}

/// A minimal root: busybox, a shell, and an unprivileged user `app`.
fn base_layer(bb: &[u8]) -> Vec<E<'_>> {
    let mut l = vec![
        E::Dir("bin/"),
        E::Dir("etc/"),
        E::File("bin/busybox", bb, 0o755),
        E::File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
            0o644,
        ),
        E::File("etc/group", b"root:x:0:\napp:x:1000:\n", 0o644),
    ];
    for a in [
        "sh", "ls", "cat", "id", "stat", "env", "readlink", "test", "echo", "sort",
    ] {
        l.push(E::Sym(
            Box::leak(format!("bin/{a}").into_boxed_str()),
            "busybox",
        ));
    }
    l
}

/// `pyro ARGS` with an image store and templates of the sandbox's own
/// (the kernel stays the test run's), then `env` on top.
fn run(sb: &Sandbox, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = sb.cmd();
    let own = sb.home.path().join("cache");
    c.env("PYRO_ENVIRONMENT_CACHE_DIR", own.join("environments"));
    c.env("PYRO_TEMPLATE_CACHE_DIR", own.join("templates"));
    c.envs(env.iter().copied());
    c.args(args).output().unwrap()
}

/// Lines of `key=value` from a guest script's output.
fn facts(out: &str) -> std::collections::BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn an_image_from_a_registry_boots_with_every_property_of_its_layers() {
    let reg = Registry::start();
    let oci = Layout::new();
    let bb = busybox();
    let mut lower = base_layer(&bb);
    lower.extend([
        E::Dir("old/"),
        E::File("old/gone", b"x", 0o644),
        E::Dir("old/keep/"),
        E::File("old/keep/lower", b"lower", 0o644),
        E::Dir("data/"),
        E::File("data/a", b"linked", 0o644),
        E::Dir("srv/"),
        E::Dir("srv/work/"),
    ]);
    let upper = vec![
        E::File("old/.wh.gone", b"", 0o644),
        E::Dir("old/keep/"),
        E::File("old/keep/.wh..wh..opq", b"", 0o644),
        E::File("old/keep/upper", b"upper", 0o644),
        E::Hard("data/b", "data/a"),
        E::Sym("data/sym", "/data/a"),
        E::File("bin/suid", b"#!/bin/sh\n", 0o4755),
        E::Owned("srv/work/owned", b"mine", 1000),
    ];
    oci.build(
        "img",
        &[lower, upper],
        &[
            "--config.user=app",
            "--config.env=GREETING=hello from the image",
            "--config.env=PATH=/bin",
            "--config.workingdir=/srv/work",
        ],
    );
    oci.push("img", &reg, "test/img:1");
    let reference = format!("{}/test/img:1", reg.host());

    let sb = Sandbox::new();
    // Progress in bytes and layers.
    let out = run(&sb, &[], &["env", "pull", &reference]);
    assert!(out.status.success(), "{}", stderr(&out));
    for want in ["layers=2", "phase=download", "bytes=", "phase=ready"] {
        assert!(stderr(&out).contains(want), "no {want} in {}", stderr(&out));
    }
    let script = "echo uid=$(id -u); echo gid=$(id -g); echo user=$USER; echo home=$HOME; \
        echo pwd=$(pwd); echo greeting=$GREETING; \
        echo gone=$(test -e /old/gone && echo present || echo absent); \
        echo opaque=$(ls /old/keep); \
        echo links=$(stat -c %h /data/a)-$(test /data/a -ef /data/b && echo same); \
        echo sym=$(readlink /data/sym)-$(cat /data/sym); \
        echo suid=$(stat -c %a-%u /bin/suid); \
        echo owned=$(stat -c %u /srv/work/owned)";
    let out = run(
        &sb,
        &[],
        &["run", "--json", &reference, "--", "sh", "-c", script],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let r = json(&out);
    assert_eq!(r["exit_code"], 0, "{r}");
    let f = facts(r["stdout"].as_str().unwrap());
    let want = [
        ("uid", "1000"),
        ("gid", "1000"),
        ("user", "app"),
        ("home", "/home/app"),
        ("pwd", "/srv/work"),
        ("greeting", "hello from the image"),
        ("gone", "absent"),
        ("opaque", "upper"),
        ("links", "2-same"),
        ("sym", "/data/a-linked"),
        ("suid", "4755-0"),
        ("owned", "1000"),
    ];
    for (k, v) in want {
        assert_eq!(f.get(k).map(String::as_str), Some(v), "{k} in {r}");
    }
    assert_eq!(r["environment"], reference.as_str());

    // The defaults can be overridden per command: a workspace's commands
    // run in /workspace, as the image's user, who owns what was seeded.
    let seed = tempfile::tempdir().unwrap();
    std::fs::write(seed.path().join("notes.txt"), "seeded\n").unwrap();
    let out = run(
        &sb,
        &[],
        &[
            "workspace",
            "create",
            "--json",
            &reference,
            "--seed-path",
            seed.path().to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let id = json(&out)["workspace_id"].as_str().unwrap().to_string();
    let out = run(&sb, &[], &["workspace", "exec", "--json", &id, "--", "sh", "-c", "echo pwd=$(pwd); echo uid=$(id -u); echo notes=$(stat -c %u notes.txt); echo more > notes.txt && echo wrote=yes"]);
    let r = json(&out);
    let f = facts(r["stdout"].as_str().unwrap());
    assert_eq!(f["pwd"], "/workspace", "{r}");
    assert_eq!(f["uid"], "1000", "{r}");
    assert_eq!(f["notes"], "1000", "{r}");
    assert_eq!(f["wrote"], "yes", "{r}");
    assert!(run(&sb, &[], &["workspace", "delete", &id])
        .status
        .success());

    // Listed with its digest, size and last use; a second run uses the
    // installed image without pulling.
    let list = json(&run(&sb, &[], &["env", "list", "--json"]));
    let e = list["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == reference.as_str())
        .unwrap_or_else(|| panic!("{reference} not listed: {list}"));
    assert_eq!(e["installed"], true);
    assert_eq!(e["image"]["digest"], oci.manifest_digest("img").as_str());
    assert!(e["image"]["disk_bytes"].as_u64().unwrap() > 1 << 20, "{e}");
    assert!(e["image"]["last_used_unix_ms"].as_u64().unwrap() > 0, "{e}");
    assert_eq!(e["image"]["record"]["defaults"]["user"], "app");
    drop(reg);
    let out = run(&sb, &[], &["run", &reference, "--", "id", "-un"]);
    assert_eq!(stdout(&out).trim(), "app", "{}", stderr(&out));
}

#[test]
fn images_without_a_shell_run_argv_commands_and_a_multi_arch_index_picks_amd64() {
    let reg = Registry::start();
    let oci = Layout::new();
    let bb = busybox();
    // Only the binary: no /bin/sh, no /etc.
    oci.build(
        "bare",
        &[vec![
            E::Dir("bin/"),
            E::File("bin/busybox", &bb, 0o755),
            E::File("arch", b"amd64\n", 0o644),
        ]],
        &[],
    );
    oci.push("bare", &reg, "test/bare:1");
    let sb = Sandbox::new();
    let reference = format!("{}/test/bare:1", reg.host());
    let r = json(&run(
        &sb,
        &[],
        &[
            "run",
            "--json",
            &reference,
            "--",
            "/bin/busybox",
            "cat",
            "/arch",
        ],
    ));
    assert_eq!(r["exit_code"], 0, "{r}");
    assert_eq!(r["stdout"], "amd64\n");
    // A shell command has no shell to run in: 127, as a shell says.
    let r = json(&run(
        &sb,
        &[],
        &["run", "--json", &reference, "--", "echo hi | cat"],
    ));
    assert_eq!(r["exit_code"], 127, "{r}");

    // An index listing arm64 first, then amd64.
    oci.build(
        "arm",
        &[vec![
            E::Dir("bin/"),
            E::File("bin/busybox", &bb, 0o755),
            E::File("arch", b"arm64\n", 0o644),
        ]],
        &["--architecture=arm64"],
    );
    let entry = |tag: &str, arch: &str| {
        let d = oci.manifest_digest(tag);
        let size = std::fs::metadata(oci.blob(&d)).unwrap().len();
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": d, "size": size,
            "platform": {"architecture": arch, "os": "linux"}
        })
    };
    let index = |entries: Vec<serde_json::Value>| {
        let bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": entries,
        }))
        .unwrap();
        let digest = oci.put_blob(&bytes);
        (digest, bytes.len())
    };
    let mut layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(oci.path().join("index.json")).unwrap()).unwrap();
    for (tag, entries) in [
        ("multi", vec![entry("arm", "arm64"), entry("bare", "amd64")]),
        ("armonly", vec![entry("arm", "arm64")]),
    ] {
        let (digest, size) = index(entries);
        layout["manifests"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": digest, "size": size,
                "annotations": {"org.opencontainers.image.ref.name": tag}
            }));
    }
    std::fs::write(
        oci.path().join("index.json"),
        serde_json::to_vec(&layout).unwrap(),
    )
    .unwrap();
    oci.copy(
        "multi",
        &format!("docker://{}/test/multi:1", reg.host()),
        &["--all", "--dest-tls-verify=false"],
    );
    oci.copy(
        "armonly",
        &format!("docker://{}/test/armonly:1", reg.host()),
        &["--all", "--dest-tls-verify=false"],
    );
    let r = json(&run(
        &sb,
        &[],
        &[
            "run",
            "--json",
            &format!("{}/test/multi:1", reg.host()),
            "--",
            "/bin/busybox",
            "cat",
            "/arch",
        ],
    ));
    assert_eq!(r["stdout"], "amd64\n", "{r}");
    let out = run(
        &sb,
        &[],
        &["env", "pull", &format!("{}/test/armonly:1", reg.host())],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("wrong architecture"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("linux/arm64"), "{}", stderr(&out));
    let out = run(
        &sb,
        &[],
        &["env", "pull", &format!("{}/test/missing:1", reg.host())],
    );
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
}

/// Every partial the image store holds (downloads and builds).
fn partials(cache: &Path) -> Vec<PathBuf> {
    let oci = cache.join("environments/oci");
    ["blobs/sha256", "images", ""]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(oci.join(d))
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".partial-")
        })
        .collect()
}

#[test]
fn a_tampered_blob_is_refused_and_a_killed_pull_is_cleaned_up() {
    let reg = Registry::start();
    let oci = Layout::new();
    let bb = busybox();
    // 48 MiB of incompressible data, so the pull takes long enough to be
    // killed in the middle.
    let mut noise = vec![0u8; 48 << 20];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut noise)
        .unwrap();
    let mut l = base_layer(&bb);
    l.push(E::File("noise", &noise, 0o644));
    oci.build("big", &[l], &[]);
    oci.push("big", &reg, "test/big:1");
    oci.push("big", &reg, "test/tampered:1");
    drop(noise);

    let cache = tempfile::Builder::new()
        .prefix("pyro-cache-")
        .tempdir()
        .unwrap();
    let test_cache = crate::common::test_cache();
    // Its own image store; the kernel is the test run's.
    let env = [
        (
            "PYRO_ENVIRONMENT_CACHE_DIR",
            cache
                .path()
                .join("environments")
                .to_str()
                .unwrap()
                .to_string(),
        ),
        (
            "PYRO_TEMPLATE_CACHE_DIR",
            test_cache
                .join("runtime/templates")
                .to_str()
                .unwrap()
                .to_string(),
        ),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let sb = Sandbox::new();

    // The layer as the registry serves it, one byte changed.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(oci.blob(&oci.manifest_digest("big"))).unwrap())
            .unwrap();
    let layer_digest = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let stored = reg.blob_file(&layer_digest);
    let mut bytes = std::fs::read(&stored).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    let tampered = format!("{}/test/tampered:1", reg.host());
    let out = run(&sb, &env, &["env", "pull", &tampered]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("digest"), "{}", stderr(&out));
    let list = json(&run(&sb, &env, &["env", "list", "--json"]));
    assert!(
        !list["environments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == tampered.as_str()),
        "{list}"
    );
    let blobs = cache.path().join("environments/oci/blobs/sha256");
    let hex = layer_digest.strip_prefix("sha256:").unwrap();
    assert!(!blobs.join(hex).exists(), "the tampered layer was stored");
    assert_eq!(partials(cache.path()), Vec::<PathBuf>::new());
    let images = std::fs::read_dir(cache.path().join("environments/oci/images"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(images, 0, "an image was installed");
    bytes[mid] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();

    // Killed while it downloads or builds: the next pull, or a prune,
    // cleans what it left.
    let reference = format!("{}/test/big:1", reg.host());
    for then in ["pull", "prune"] {
        let mut child = sb
            .cmd()
            .envs(env.iter().copied())
            .args(["env", "pull", &reference])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while partials(cache.path()).is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no partial appeared"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "the pull ended before it could be killed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!partials(cache.path()).is_empty());
        if then == "prune" {
            let r = json(&run(&sb, &env, &["env", "prune", "--json"]));
            assert!(r["count"].as_u64().unwrap() >= 1, "{r}");
            assert_eq!(partials(cache.path()), Vec::<PathBuf>::new(), "{r}");
        }
        let out = run(&sb, &env, &["env", "pull", "--json", &reference]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(json(&out)["installed"], true);
        assert_eq!(partials(cache.path()), Vec::<PathBuf>::new());
        let r = json(&run(
            &sb,
            &env,
            &[
                "run",
                "--json",
                &reference,
                "--",
                "sh",
                "-c",
                "stat -c %s /noise",
            ],
        ));
        assert_eq!(r["stdout"], format!("{}\n", 48 << 20), "{r}");
        // Start over for the next round.
        std::fs::remove_dir_all(cache.path().join("environments/oci")).unwrap();
    }

    // An image larger than the host allows is refused, and says why.
    let mut capped = env.clone();
    capped.push(("PYRO_IMAGE_MAX_BYTES", "1000000"));
    let out = run(&sb, &capped, &["env", "pull", &reference]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("PYRO_IMAGE_MAX_BYTES"),
        "{}",
        stderr(&out)
    );
    assert_eq!(partials(cache.path()), Vec::<PathBuf>::new());

    // Pruning by age removes the image and then its layers.
    let out = run(&sb, &env, &["env", "pull", &reference]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::thread::sleep(Duration::from_millis(1100));
    let r = json(&run(
        &sb,
        &env,
        &["env", "prune", "--json", "--unused-for", "1s"],
    ));
    let reasons = prune_reasons(&r);
    assert!(reasons.iter().any(|r| r.ends_with("unused")), "{r}");
    assert!(reasons.contains(&"image nothing refers to"), "{r}");
    assert!(reasons.contains(&"blob no image uses"), "{r}");
    assert!(!blobs.join(hex).exists());

    // And by size: the least recently used go first.
    let out = run(&sb, &env, &["env", "pull", &reference]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = json(&run(
        &sb,
        &env,
        &["env", "prune", "--json", "--max-size", "1M"],
    ));
    let reasons = prune_reasons(&r);
    assert!(
        reasons.iter().any(|r| r.ends_with("over the size limit")),
        "{r}"
    );
    assert!(!blobs.join(hex).exists());
}

#[test]
fn a_registry_with_tls_and_basic_auth_takes_credentials_from_an_auth_file() {
    let (reg, secure) = Registry::secure();
    let oci = Layout::new();
    let bb = busybox();
    oci.build("img", &[base_layer(&bb)], &[]);
    oci.copy(
        "img",
        &format!("docker://{}/test/private:1", reg.host()),
        &[
            "--dest-cert-dir",
            secure.ca_dir.to_str().unwrap(),
            "--dest-creds",
            &format!("{}:{}", secure.user, secure.password),
        ],
    );
    let reference = format!("{}/test/private:1", reg.host());
    let ca = secure.ca_dir.join("ca.crt");
    let sb = Sandbox::new();

    // The CA is not trusted: refused, and not by falling back to HTTP.
    let out = run(&sb, &[], &["env", "pull", &reference]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).to_lowercase().contains("certificate"),
        "{}",
        stderr(&out)
    );
    // Trusted, but no credentials.
    let out = run(
        &sb,
        &[("PYRO_REGISTRY_CA", ca.to_str().unwrap())],
        &["env", "pull", &reference],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));
    // Credentials as `podman login` writes them.
    let auth = sb.home.path().join("auth.json");
    let token = {
        let raw = format!("{}:{}", secure.user, secure.password);
        // base64, by hand: the tests need no encoder for one line.
        let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for chunk in raw.as_bytes().chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
            for i in 0..4 {
                if i <= chunk.len() {
                    s.push(table[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    };
    std::fs::write(
        &auth,
        format!(
            "{{\"auths\": {{\"{}\": {{\"auth\": \"{token}\"}}}}}}",
            reg.host()
        ),
    )
    .unwrap();
    let env = [
        ("PYRO_REGISTRY_CA", ca.to_str().unwrap()),
        ("REGISTRY_AUTH_FILE", auth.to_str().unwrap()),
    ];
    let r = json(&run(
        &sb,
        &env,
        &["run", "--json", &reference, "--", "cat", "/etc/group"],
    ));
    assert_eq!(r["exit_code"], 0, "{r}");
    assert!(r["stdout"].as_str().unwrap().contains("app:x:1000"), "{r}");
}

#[test]
fn a_published_environment_boots_on_a_host_without_mmdebstrap_or_apt() {
    let reg = Registry::start();
    let sb = Sandbox::new();
    let out = run(&sb, &[], &["env", "pull", "debian:12"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let destination = format!("{}/pyro/debian:12", reg.host());
    let out = run(
        &sb,
        &[],
        &["env", "publish", "--json", "debian:12", &destination],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let p = json(&out);
    assert_eq!(p["includes_kernel"], true, "{p}");
    assert!(p["manifest_digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));

    // An empty cache, and a PATH where mmdebstrap and apt fail.
    let empty = tempfile::Builder::new()
        .prefix("pyro-empty-")
        .tempdir()
        .unwrap();
    let fake = tempfile::tempdir().unwrap();
    for t in ["mmdebstrap", "apt-get", "apt-cache", "dpkg-deb"] {
        std::os::unix::fs::symlink("/bin/false", fake.path().join(t)).unwrap();
    }
    let path = format!(
        "{}:{}",
        fake.path().display(),
        std::env::var("PATH").unwrap()
    );
    let registry_prefix = format!("{}/pyro", reg.host());
    let env = [
        ("PYRO_CACHE_DIR", empty.path().to_str().unwrap()),
        ("PATH", path.as_str()),
        ("PYRO_ENVIRONMENT_REGISTRY", registry_prefix.as_str()),
    ];
    let fresh = Sandbox::new();
    let out = run(
        &fresh,
        &env,
        &["run", "--json", "debian:12", "--", "git", "--version"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // The kernel came from the registry too.
    assert!(empty.path().join("runtime/kernel/kernel.json").is_file());
    let r = json(&out);
    assert_eq!(r["exit_code"], 0, "{r}");
    assert!(
        r["stdout"].as_str().unwrap().starts_with("git version"),
        "{r}"
    );
    // Without the registry, this host could not have built it.
    let out = run(
        &Sandbox::new(),
        &[
            (
                "PYRO_CACHE_DIR",
                tempfile::tempdir().unwrap().path().to_str().unwrap(),
            ),
            ("PATH", path.as_str()),
        ],
        &["env", "pull", "debian:12"],
    );
    assert!(!out.status.success(), "built without mmdebstrap and apt?");
}

#[test]
fn a_docker_archive_and_an_oci_layout_import_and_run_without_a_registry() {
    let oci = Layout::new();
    let bb = busybox();
    let mut l = base_layer(&bb);
    l.push(E::File("marker", b"from an archive\n", 0o644));
    oci.build("img", &[l], &["--config.env=FROM=archive"]);
    let archive = oci.dir.path().join("image.tar");
    oci.copy(
        "img",
        &format!("docker-archive:{}:local/thing:1", archive.display()),
        &[],
    );
    let sb = Sandbox::new();
    let out = run(
        &sb,
        &[],
        &["env", "import", "--json", archive.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let e = json(&out);
    assert_eq!(e["name"], "docker.io/local/thing:1", "{e}");
    assert_eq!(e["image"]["record"]["source"], "docker-archive");
    let r = json(&run(
        &sb,
        &[],
        &[
            "run",
            "--json",
            "local/thing:1",
            "--",
            "sh",
            "-c",
            "cat /marker; echo $FROM",
        ],
    ));
    assert_eq!(r["stdout"], "from an archive\narchive\n", "{r}");

    let out = run(
        &sb,
        &[],
        &[
            "env",
            "import",
            "--json",
            "--name",
            "example.org/layout:2",
            oci.path().to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["image"]["record"]["source"], "oci-layout");
    let r = json(&run(
        &sb,
        &[],
        &[
            "run",
            "--json",
            "example.org/layout:2",
            "--",
            "cat",
            "/marker",
        ],
    ));
    assert_eq!(r["stdout"], "from an archive\n", "{r}");
}
