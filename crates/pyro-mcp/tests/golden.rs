//! `tools/list` of every profile against the golden files the real-client
//! test also checks (`crates/pyro-cli/tests/vm/mcp_client.py`): names,
//! descriptions, input and output schemas, annotations. In-process, no VM.
//! `PYRO_BLESS=1` rewrites the files.

use std::path::PathBuf;

use pyro_mcp::{Profile, PyroServer};

fn golden(profile: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{profile}.json"))
}

#[test]
fn tools_list_matches_the_golden_files() {
    for (name, count) in [
        ("vm-run", 1),
        ("workspace-core", 16),
        ("workspace-full", 46),
    ] {
        let profile: Profile = name.parse().unwrap();
        let tools = PyroServer::new(pyro::Pyro::new(), profile, Default::default()).tools();
        assert_eq!(tools.len(), count, "{name}");
        let listed = serde_json::to_value(&tools).unwrap();
        let path = golden(name);
        if std::env::var_os("PYRO_BLESS").is_some() {
            let text = serde_json::to_string_pretty(&listed).unwrap() + "\n";
            std::fs::write(&path, text).unwrap();
        }
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        if listed != expected {
            let got = listed.as_array().unwrap();
            let want = expected.as_array().unwrap();
            for (g, w) in got.iter().zip(want) {
                assert_eq!(
                    g,
                    w,
                    "{name}: tool {} differs from {}",
                    g["name"],
                    path.display()
                );
            }
            assert_eq!(got.len(), want.len(), "{name}: tool count");
        }
    }
}

#[test]
fn every_default_comes_from_the_library() {
    let tools = PyroServer::new(
        pyro::Pyro::new(),
        Profile::WorkspaceFull,
        Default::default(),
    )
    .tools();
    let schema = |tool: &str| {
        let t = tools.iter().find(|t| t.name == tool).unwrap();
        serde_json::Value::Object((*t.input_schema).clone())
    };
    let d = pyro::defaults::vcpu_count();
    assert_eq!(schema("vm_run")["properties"]["vcpu_count"]["default"], d);
    assert_eq!(
        schema("workspace_create")["properties"]["network_policy"]["default"],
        pyro::NetworkPolicy::default().as_str()
    );
    assert_eq!(
        schema("workspace_reset")["properties"]["snapshot"]["default"],
        pyro::defaults::snapshot()
    );
}
