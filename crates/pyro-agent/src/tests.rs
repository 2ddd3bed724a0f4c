//! The agent's request handling, driven over a socket pair on the host: a
//! scratch directory stands for `/workspace`, commands run as host
//! processes. Milliseconds each, no VM.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use pyro_protocol::{
    Command, ExecRequest, ExitStatus, Frame, Kind, Message, PutArchive, CONTROL_STREAM,
    WORKSPACE_ROOT,
};

use crate::files::Jail;
use crate::serve::{self, Agent, Config, OnEof};

/// The host's end of a conversation with an agent serving a scratch
/// workspace.
struct Host {
    sock: UnixStream,
    next: u32,
    dir: tempfile::TempDir,
    _agent: Arc<Agent>,
}

/// What came back on one stream.
#[derive(Debug, Default)]
struct Reply {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    messages: Vec<Message>,
}

impl Reply {
    fn last(&self) -> &Message {
        self.messages.last().expect("a terminal message")
    }
    fn exited(&self) -> &ExitStatus {
        match self.last() {
            Message::Exited(s) => s,
            other => panic!("not an exit: {other:?} (stderr {:?})", self.stderr_text()),
        }
    }
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    fn error(&self) -> String {
        match self.last() {
            Message::Error { message } => message.clone(),
            other => panic!("not an error: {other:?}"),
        }
    }
}

fn host() -> Host {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("workspace")).unwrap();
    let config = Config {
        image_config: None,
        workspace: dir.path().join("workspace"),
        service_logs: dir.path().join("logs"),
        secrets: dir.path().join("secrets"),
        cgroups: None,
        system: false,
    };
    let (sock, theirs) = UnixStream::pair().unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let agent = Agent::new(config, Box::new(theirs.try_clone().unwrap()));
    let serving = agent.clone();
    std::thread::spawn(move || serve::serve(&serving, theirs, OnEof::Stop));
    Host {
        sock,
        next: 1,
        dir,
        _agent: agent,
    }
}

impl Host {
    fn workspace(&self) -> PathBuf {
        self.dir.path().join("workspace")
    }

    fn open(&mut self, m: &Message) -> u32 {
        let stream = self.next;
        self.next += 1;
        self.send(stream, m);
        stream
    }

    fn send(&mut self, stream: u32, m: &Message) {
        self.sock
            .write_all(&Frame::message(stream, m).encode())
            .unwrap();
    }

    fn input(&mut self, stream: u32, bytes: &[u8]) {
        self.sock
            .write_all(&Frame::data(stream, Kind::Input, bytes.to_vec()).encode())
            .unwrap();
    }

    /// Frames of `stream` until its terminal message.
    fn collect(&mut self, stream: u32) -> Reply {
        let mut r = Reply::default();
        loop {
            let f = Frame::read_from(&mut self.sock)
                .unwrap()
                .expect("agent went away");
            if f.stream != stream {
                continue;
            }
            match f.kind {
                Kind::Stdout => r.stdout.extend_from_slice(&f.body),
                Kind::Stderr => r.stderr.extend_from_slice(&f.body),
                Kind::Input => {}
                Kind::Message => {
                    let m = f.decode_message().unwrap();
                    let done = m.is_terminal();
                    r.messages.push(m);
                    if done {
                        return r;
                    }
                }
            }
        }
    }

    fn call(&mut self, m: &Message) -> Reply {
        let s = self.open(m);
        self.collect(s)
    }

    fn exec(&mut self, command: Command, timeout_ms: Option<u64>) -> Reply {
        self.call(&exec_request(command, timeout_ms))
    }

    fn sh(&mut self, script: &str) -> Reply {
        self.exec(Command::Shell(script.into()), Some(10_000))
    }

    /// A tar of `files` (name, content) written into `dest`.
    fn put(&mut self, dest: &str, files: &[(&str, &[u8])], atomic: bool) -> Reply {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // Written raw, so hostile names (`..`) reach the agent as they are.
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let s = self.open(&Message::PutArchive(PutArchive {
            dest: dest.into(),
            remove: Vec::new(),
            atomic,
        }));
        for chunk in tar.chunks(1000) {
            self.input(s, chunk);
        }
        self.send(s, &Message::InputEnd);
        self.collect(s)
    }

    fn read(&mut self, path: &str) -> Reply {
        self.call(&Message::ReadFile {
            path: path.into(),
            max_bytes: 1 << 20,
        })
    }
}

fn exec_request(command: Command, timeout_ms: Option<u64>) -> Message {
    Message::Exec(ExecRequest {
        command,
        env: [("GREETING".to_string(), "hello".to_string())].into(),
        cwd: None,
        timeout_ms,
        sync_after: false,
    })
}

#[test]
fn the_handshake_agrees_a_generation() {
    let mut h = host();
    h.send(
        CONTROL_STREAM,
        &Message::Hello {
            generations: vec![1, 99],
            host_version: "test".into(),
        },
    );
    match h.collect(CONTROL_STREAM).last() {
        Message::Welcome { generation, .. } => assert_eq!(*generation, 1),
        other => panic!("{other:?}"),
    }
    h.send(
        CONTROL_STREAM,
        &Message::Hello {
            generations: vec![99],
            host_version: "test".into(),
        },
    );
    assert!(h
        .collect(CONTROL_STREAM)
        .error()
        .contains("no common protocol generation"));
}

#[test]
fn exit_codes_output_and_environment_come_back_exactly() {
    let mut h = host();
    let r = h.sh("echo out; echo err >&2; echo $GREETING; exit 3");
    assert_eq!(r.exited().exit_code, 3);
    assert_eq!(r.exited().signal, None);
    assert_eq!(r.stdout_text(), "out\nhello\n");
    assert_eq!(r.stderr_text(), "err\n");
    assert!(
        matches!(r.messages[0], Message::Started { .. }),
        "{:?}",
        r.messages
    );
}

#[test]
fn an_argv_is_never_given_to_a_shell() {
    let mut h = host();
    let r = h.exec(Command::Argv(vec!["echo".into(), "a  b".into()]), None);
    assert_eq!(r.stdout_text(), "a  b\n");
    // One word that a shell would split is a program name.
    let r = h.exec(Command::Argv(vec!["echo $HOME".into()]), None);
    assert_eq!(r.exited().exit_code, 127);
    assert!(
        r.stderr_text().contains("echo $HOME"),
        "{}",
        r.stderr_text()
    );
    let r = h.exec(Command::Argv(vec![]), None);
    assert!(r.error().contains("empty command"));
}

#[test]
fn a_missing_program_or_directory_reads_like_a_shell_would_say() {
    let mut h = host();
    let r = h.exec(Command::Argv(vec!["/no/such/program".into()]), None);
    assert_eq!(r.exited().exit_code, 127);
    let s = h.open(&Message::Exec(ExecRequest {
        command: Command::Argv(vec!["true".into()]),
        env: Default::default(),
        cwd: Some("/no/such/dir".into()),
        timeout_ms: None,
        sync_after: false,
    }));
    let r = h.collect(s);
    assert_eq!(r.exited().exit_code, 127);
    assert!(r.stderr_text().contains("cannot enter /no/such/dir"));
}

#[test]
fn a_signal_is_reported_as_the_signal() {
    let mut h = host();
    let r = h.sh("kill -TERM $$");
    assert_eq!(r.exited().signal, Some(libc::SIGTERM));
    assert_eq!(r.exited().exit_code, 128 + libc::SIGTERM);
}

#[test]
fn a_timeout_kills_the_command_and_its_process_group() {
    let mut h = host();
    let marker = h.workspace().join("alive");
    let started = Instant::now();
    let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
    let r = h.exec(Command::Shell(script), Some(300));
    assert!(started.elapsed() < Duration::from_secs(10));
    let s = r.exited();
    assert!(s.timed_out);
    assert_eq!(s.exit_code, 124);
    assert!(r.stderr_text().contains("timed out after 0.3s"));
    // The background job was in the group and died with it.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!marker.exists(), "a background job outlived the timeout");
}

#[test]
fn a_cancel_ends_the_command() {
    let mut h = host();
    let s = h.open(&exec_request(Command::Shell("sleep 30".into()), None));
    let started = Instant::now();
    // Wait for it to run, then cancel.
    loop {
        let f = Frame::read_from(&mut h.sock).unwrap().unwrap();
        if f.stream == s && matches!(f.decode_message(), Ok(Message::Started { .. })) {
            break;
        }
    }
    h.send(s, &Message::Cancel);
    let r = h.collect(s);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(r.exited().signal, Some(libc::SIGKILL));
}

#[test]
fn large_output_arrives_whole_and_in_order() {
    let mut h = host();
    let r = h.sh("head -c 3000000 /dev/zero | tr '\\0' x; echo; seq 1 20000 >&2");
    assert_eq!(r.exited().exit_code, 0);
    assert_eq!(r.stdout.len(), 3_000_001);
    assert!(r.stdout[..3_000_000].iter().all(|b| *b == b'x'));
    let lines: Vec<String> = r.stderr_text().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 20000);
    assert_eq!(lines[19999], "20000");
}

#[test]
fn files_stay_inside_the_workspace() {
    let mut h = host();
    let ws = h.workspace();
    // Writes land where they are named, and listings name guest paths.
    let r = h.put(
        WORKSPACE_ROOT,
        &[("a/b.txt", b"hi"), ("workspacefoo.txt", b"x")],
        true,
    );
    assert!(
        matches!(r.last(), Message::ArchivePut { .. }),
        "{:?}",
        r.last()
    );
    assert_eq!(std::fs::read(ws.join("a/b.txt")).unwrap(), b"hi");
    assert!(ws.join("workspacefoo.txt").exists());
    let r = h.read("/workspace/a/b.txt");
    assert_eq!(r.stdout, b"hi");
    match h
        .call(&Message::ListFiles {
            path: WORKSPACE_ROOT.into(),
            recursive: true,
        })
        .last()
    {
        Message::FileList { path, entries, .. } => {
            assert_eq!(path, WORKSPACE_ROOT);
            let names: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
            assert_eq!(
                names,
                [
                    "/workspace/a",
                    "/workspace/a/b.txt",
                    "/workspace/workspacefoo.txt"
                ]
            );
        }
        other => panic!("{other:?}"),
    }

    // Paths outside, lexically or through a symlink, are refused.
    let outside = h.dir.path().join("secret.txt");
    std::fs::write(&outside, "do not read").unwrap();
    std::os::unix::fs::symlink(&outside, ws.join("link")).unwrap();
    std::os::unix::fs::symlink(h.dir.path(), ws.join("up")).unwrap();
    for path in [
        "/workspace/../secret.txt",
        "/etc/passwd",
        "/workspacefoo",
        "workspace/a/b.txt",
        "/workspace/link",
        "/workspace/up/secret.txt",
    ] {
        let r = h.read(path);
        assert!(
            matches!(r.last(), Message::Error { .. }) && r.stdout.is_empty(),
            "{path} was read: {:?}",
            r.last()
        );
    }
    let r = h.call(&Message::GetArchive {
        path: "/workspace/up/secret.txt".into(),
    });
    assert!(
        r.error().contains("symlink leads outside"),
        "{:?}",
        r.last()
    );

    // Archive entries that climb out, or write through a symlink, are refused.
    let r = h.put(WORKSPACE_ROOT, &[("../escaped.txt", b"x")], false);
    assert!(matches!(r.last(), Message::Error { .. }), "{:?}", r.last());
    let r = h.put(WORKSPACE_ROOT, &[("../escaped.txt", b"x")], true);
    assert!(matches!(r.last(), Message::Error { .. }), "{:?}", r.last());
    let r = h.put(WORKSPACE_ROOT, &[("up/escaped.txt", b"x")], true);
    assert!(matches!(r.last(), Message::Error { .. }), "{:?}", r.last());
    let r = h.put("/workspace/up", &[("escaped.txt", b"x")], false);
    assert!(matches!(r.last(), Message::Error { .. }), "{:?}", r.last());
    assert!(!h.dir.path().join("escaped.txt").exists());
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "do not read");
}

#[test]
fn an_atomic_write_is_all_or_nothing() {
    let mut h = host();
    let ws = h.workspace();
    std::fs::write(ws.join("keep.txt"), "old").unwrap();
    std::fs::create_dir(ws.join("dir")).unwrap();
    // The second entry cannot be written (a directory is in the way).
    let r = h.put(WORKSPACE_ROOT, &[("keep.txt", b"new"), ("dir", b"x")], true);
    assert!(r.error().contains("not a regular file"), "{:?}", r.last());
    assert_eq!(std::fs::read_to_string(ws.join("keep.txt")).unwrap(), "old");
    let leftovers: Vec<_> = std::fs::read_dir(&ws)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".pyro-tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn a_tunnel_relays_both_ways() {
    let mut h = host();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let echo = std::thread::spawn(move || {
        let (mut c, _) = server.accept().unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        c.write_all(&got.to_ascii_uppercase()).unwrap();
    });
    let s = h.open(&Message::TunnelOpen { port });
    h.input(s, b"ping ");
    h.input(s, b"pong");
    h.send(s, &Message::InputEnd);
    let r = h.collect(s);
    assert_eq!(r.stdout, b"PING PONG");
    assert_eq!(r.last(), &Message::Done);
    echo.join().unwrap();
    // Nobody listening: a clear error.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = h.call(&Message::TunnelOpen { port: closed });
    assert!(
        r.error().contains(&format!("guest port {closed}")),
        "{:?}",
        r.last()
    );
}

#[test]
fn only_a_guest_agent_touches_the_machine() {
    let mut h = host();
    for m in [Message::Freeze, Message::Thaw, Message::Shutdown] {
        assert!(h.call(&m).error().contains("only done by a guest"), "{m:?}");
    }
    assert_eq!(h.call(&Message::Ping).last(), &Message::Pong);
}

fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_string()),
        Just(".".to_string()),
        Just("workspace".to_string()),
        Just("etc".to_string()),
        "workspace[a-z]{1,3}",
        "[a-z]{1,6}",
    ]
}

proptest! {
    /// Whatever path a request names, what the agent touches is inside the
    /// workspace directory; and anything below `/workspace` is accepted.
    #[test]
    fn confinement_never_leaves_the_workspace(
        parts in prop::collection::vec(component(), 0..6),
    ) {
        let root = PathBuf::from("/srv/jail/workspace");
        let jail = Jail::new(root.clone(), None);
        let path = format!("/{}", parts.join("/"));
        let normal: Vec<&String> = parts.iter().filter(|p| *p != ".").collect();
        let inside = !parts.iter().any(|p| p == "..")
            && normal.first().map(|p| p.as_str()) == Some("workspace");
        match jail.lexical(&path) {
            Ok(real) => {
                prop_assert!(inside, "{} was accepted as {}", path, real.display());
                prop_assert!(real.starts_with(&root));
                let rel: PathBuf = normal[1..].iter().map(|p| p.as_str()).collect();
                prop_assert_eq!(&real, &root.join(&rel));
                let shown = PathBuf::from(jail.shown(&real));
                prop_assert_eq!(shown, Path::new(WORKSPACE_ROOT).join(&rel));
            }
            Err(_) => prop_assert!(!inside, "{} was refused", path),
        }
    }
}

#[test]
fn a_huge_listing_is_cut_with_a_flag_not_fatal() {
    let mut h = host();
    let ws = h.workspace();
    for d in 0..50 {
        let dir = ws.join(format!("dir-with-a-long-name-{d:04}-{}", "x".repeat(60)));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..200 {
            std::fs::write(dir.join(format!("file-{f:05}-{}", "y".repeat(80))), "").unwrap();
        }
    }
    let r = h.call(&Message::ListFiles {
        path: WORKSPACE_ROOT.into(),
        recursive: true,
    });
    match r.last() {
        Message::FileList {
            entries, truncated, ..
        } => {
            assert!(*truncated);
            assert!(
                entries.len() > 1000 && entries.len() < 10_050,
                "{}",
                entries.len()
            );
        }
        other => panic!("{other:?}"),
    }
    // The agent still answers.
    assert_eq!(h.call(&Message::Ping).last(), &Message::Pong);
}

#[test]
fn service_logs_and_shell_reads_fit_one_frame_whatever_they_hold() {
    let mut h = host();
    let ws = h.workspace().display().to_string();
    // Output of control bytes costs six times its size once encoded.
    let s = h.open(&Message::ServiceStart(pyro_protocol::ServiceSpec {
        name: "noise".into(),
        command: Command::Shell("head -c 3000000 /dev/zero; touch done; sleep 30".into()),
        cwd: ws.clone(),
        env: Default::default(),
        readiness: Some(pyro_protocol::Readiness::File {
            path: "done".into(),
        }),
        ready_timeout_ms: 20_000,
        ready_interval_ms: 50,
    }));
    assert!(matches!(h.collect(s).last(), Message::Service(_)));
    let r = h.call(&Message::ServiceLogs {
        name: "noise".into(),
        tail_lines: None,
    });
    match r.last() {
        Message::ServiceLog {
            stdout, truncated, ..
        } => {
            assert!(*truncated);
            assert!(!stdout.is_empty() && stdout.chars().all(|c| c == '\0'));
        }
        other => panic!("{other:?}"),
    }
    let r = h.call(&Message::ServiceStop {
        name: "noise".into(),
    });
    assert!(matches!(r.last(), Message::Service(_)), "{:?}", r.last());

    let s = h.open(&Message::ShellOpen(pyro_protocol::ShellOpen {
        shell_id: "sh1".into(),
        cwd: ws,
        cols: 80,
        rows: 24,
        env: Default::default(),
    }));
    assert!(matches!(h.collect(s).last(), Message::Shell(_)));
    h.call(&Message::ShellWrite {
        shell_id: "sh1".into(),
        data: "head -c 600000 /dev/zero | tr '\\\\0' '\\\\1'\n".into(),
    });
    std::thread::sleep(Duration::from_secs(2));
    let r = h.call(&Message::ShellRead {
        shell_id: "sh1".into(),
        cursor: 0,
        max_bytes: u64::MAX,
    });
    match r.last() {
        Message::Shell(s) => {
            assert!(s.truncated, "more is left to read");
            assert!(s.next_cursor > 0 && s.next_cursor - s.cursor <= 256 * 1024);
        }
        other => panic!("{other:?}"),
    }
    h.call(&Message::ShellClose {
        shell_id: "sh1".into(),
    });
}

#[test]
fn a_secret_split_across_shell_reads_never_shows() {
    let mut h = host();
    let ws = h.workspace().display().to_string();
    let r = h.call(&Message::InstallSecrets {
        secrets: [("TOKEN".to_string(), "s3cr3t-value".to_string())].into(),
    });
    assert_eq!(r.last(), &Message::Done);
    let s = h.open(&Message::ShellOpen(pyro_protocol::ShellOpen {
        shell_id: "sh".into(),
        cwd: ws,
        cols: 80,
        rows: 24,
        env: Default::default(),
    }));
    h.collect(s);
    h.call(&Message::ShellWrite {
        shell_id: "sh".into(),
        // The typed command (echoed back) must not hold the secret itself.
        data: "x=s3; printf \"before ${x}cr\"; sleep 1; printf '3t-va'; printf 'lue E%sD\\n' N\n"
            .into(),
    });
    let mut seen = String::new();
    let mut cursor = 0;
    let start = Instant::now();
    while !seen.contains("END") && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        if let Message::Shell(st) = h
            .call(&Message::ShellRead {
                shell_id: "sh".into(),
                cursor,
                max_bytes: 65536,
            })
            .last()
        {
            // Each read on its own, and all of them together, hide it.
            assert!(!st.output.contains("s3cr"), "{:?}", st.output);
            seen.push_str(&st.output);
            cursor = st.next_cursor;
        }
    }
    assert!(seen.contains("before [REDACTED] END"), "{seen:?}");
    assert!(!seen.contains("s3cr3t"));
}
