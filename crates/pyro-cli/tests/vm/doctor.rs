//! `pyro doctor` and failing closed.

use crate::common::{stderr, Sandbox};

#[test]
fn doctor_reports_the_host() {
    let sb = Sandbox::new();
    let out = sb.run(&["doctor", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["platform"], "linux-x86_64");
    let accel = r["accelerator"]["accel"].as_str().unwrap();
    assert!(accel == "tcg" || accel == "kvm", "{r}");
    assert!(!r["accelerator"]["reason"].as_str().unwrap().is_empty());
    for key in ["exists", "readable", "writable"] {
        assert!(r["kvm"][key].is_boolean(), "{r}");
    }
    assert!(r["qemu"]["version"]
        .as_str()
        .unwrap()
        .starts_with("QEMU emulator version"));
    assert!(r["runtime"]["agent_sha256"].as_str().unwrap().len() == 64);
    assert!(r["runtime"]["environments"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "debian:12"));
    assert!(r["issues"].is_array());
    assert!(r["runtime"]["capabilities"]["supports_vm_boot"].is_boolean());
    assert!(r["runtime"]["fast_start"].is_boolean());
    assert!(r["runtime"]["templates"].is_u64());
    assert!(r["runtime"]["template_dir"].is_string());
    assert!(r["runtime_ok"].is_boolean());

    // Under a forced accelerator, the choice and its reason follow.
    let out = sb
        .cmd()
        .args(["doctor", "--json"])
        .env("PYRO_ACCEL", "tcg")
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["accelerator"]["accel"], "tcg");
    assert_eq!(r["accelerator"]["reason"], "PYRO_ACCEL=tcg");
}

#[test]
fn a_missing_kernel_fails_closed_with_the_fix() {
    let sb = Sandbox::new();
    let missing = sb.home.path().join("no-such-vmlinuz");
    let out = sb
        .cmd()
        .args(["run", "debian:12", "--", "true"])
        .env("PYRO_KERNEL_IMAGE", &missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("guest boot is unavailable"), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    assert!(err.contains("fix: "), "{err}");
    assert!(err.contains("--allow-host-compat"), "{err}");

    let out = sb
        .cmd()
        .args(["doctor", "--json"])
        .env("PYRO_KERNEL_IMAGE", &missing)
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["runtime_ok"], false);
    assert_eq!(r["runtime"]["capabilities"]["supports_vm_boot"], false);
    assert!(
        r["issues"][0]["problem"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{r}"
    );

    // Only an explicit opt-in runs the command on the host.
    let out = sb
        .cmd()
        .args([
            "run",
            "--json",
            "--allow-host-compat",
            "debian:12",
            "--",
            "echo compat",
        ])
        .env("PYRO_KERNEL_IMAGE", &missing)
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["execution_mode"], "host_compat", "{r}");
    assert_eq!(r["stdout"], "compat\n");
}
