//! The real-VM tests: every test here boots QEMU guests (under TCG or KVM)
//! through the `pyro` binary, the Rust SDK or a real MCP client. One test
//! binary, one module per area, shared fixtures in `common`. Run them with
//! `scripts/test.sh` (after `scripts/setup.sh`); they use their own cache
//! of kernels, environments and templates under `target/test-cache`, never
//! the machine's.

mod common;

mod bounds;

mod doctor;
mod environments;
mod hostile;
mod images;
mod jail;
mod live;
mod mcp;
mod network;
mod run;
mod sdk;
mod workspaces;
