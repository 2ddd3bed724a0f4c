//! Golden examples of every message of the current generation. A change to
//! the encoding fails this test; if the change is intended (and compatible,
//! see the crate docs), regenerate with `PYRO_BLESS=1 cargo test -p pyro-protocol`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pyro_protocol::*;

fn examples() -> Vec<Message> {
    vec![
        Message::Hello {
            generations: vec![1],
            host_version: "0.1.0".into(),
        },
        Message::Welcome {
            generation: 1,
            agent_version: "0.1.0".into(),
            kernel_release: "6.1.0-56-cloud-amd64".into(),
            boot_ms: 1234,
            cgroups: true,
        },
        Message::Activate(Activation {
            hostname: "pyro-0123".into(),
            unix_time_ms: 1_700_000_000_000,
            network: None,
            entropy: None,
        }),
        Message::Activate(Activation {
            hostname: "pyro-0123".into(),
            unix_time_ms: 1_700_000_000_000,
            network: Some(NetworkConfig {
                interface: "eth0".into(),
                address: "10.0.2.15".into(),
                prefix: 24,
                gateway: "10.0.2.2".into(),
                dns: vec!["10.0.2.3".into()],
            }),
            entropy: Some("00ff10ab".into()),
        }),
        Message::Exec(ExecRequest {
            command: Command::Argv(vec![
                "sh".into(),
                "-c".into(),
                "echo \"$0\"".into(),
                "hi".into(),
            ]),
            env: BTreeMap::from([("A".to_string(), "1".to_string())]),
            cwd: Some("/workspace".into()),
            timeout_ms: Some(30_000),
            sync_after: true,
        }),
        Message::Exec(ExecRequest {
            command: Command::Shell("git --version".into()),
            env: BTreeMap::new(),
            cwd: None,
            timeout_ms: None,
            sync_after: false,
        }),
        Message::Cancel,
        Message::Shutdown,
        Message::Ping,
        Message::Done,
        Message::Started { pid: 42 },
        Message::Exited(ExitStatus {
            exit_code: 137,
            signal: Some(9),
            timed_out: false,
            duration_ms: 5,
        }),
        Message::Exited(ExitStatus {
            exit_code: 124,
            signal: None,
            timed_out: true,
            duration_ms: 2000,
        }),
        Message::Pong,
        Message::TunnelOpen { port: 8080 },
        Message::Error {
            message: "no such file".into(),
        },
    ]
}

#[test]
fn generation_schema_is_unchanged() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/golden/generation-{GENERATION}.jsonl"));
    let mut actual = String::new();
    for m in examples() {
        actual.push_str(&serde_json::to_string(&m).unwrap());
        actual.push('\n');
        // Every example decodes back to itself.
        let frame = Frame::message(3, &m);
        assert_eq!(frame.decode_message().unwrap(), m);
    }
    if std::env::var_os("PYRO_BLESS").is_some() {
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).expect("golden file exists");
    assert_eq!(
        actual, expected,
        "protocol encoding changed; see crate docs on evolution"
    );
}
