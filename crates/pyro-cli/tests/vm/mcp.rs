//! The MCP server driven by a client nobody here wrote: the official MCP
//! Python SDK, over stdio and HTTP, on real guests (see `mcp_client.py`).
//! `scripts/test.sh` installs the SDK into `target/mcp-venv`;
//! `PYRO_TEST_PYTHON` points at another interpreter that has it.

use std::path::PathBuf;

#[test]
fn a_real_mcp_client_drives_every_profile_over_stdio_and_http() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = std::env::var_os("PYRO_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/mcp-venv/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run scripts/test.sh, which installs the MCP Python SDK",
        python.display()
    );
    let sb = crate::common::Sandbox::new();
    let out = crate::common::hermetic(&mut std::process::Command::new(&python))
        .arg(root.join("crates/pyro-cli/tests/vm/mcp_client.py"))
        .env("PYRO_BIN", env!("CARGO_BIN_EXE_pyro"))
        .env("PYRO_HOME", sb.home.path())
        .env("PYRO_MCP_GOLDEN", root.join("crates/pyro-mcp/tests/golden"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("all MCP checks passed"), "{text}");
    eprintln!("{text}");
    sb.assert_clean_within(std::time::Duration::from_secs(10));
}
