//! The VM machinery, in layers that import only downward:
//!
//! | layer | modules |
//! |---|---|
//! | wire | `qmp` (QEMU's machine protocol), `channel` (one request on a framed connection, the reserved stream ids), `control` (what clients and a supervisor say on stream 0) |
//! | machine | `qemu` (the command line as a pure function of a [`VmSpec`](qemu::VmSpec), the accelerator rule, the guest's network), `dir` (a VM's directory and its records), `jail` (QEMU's uid, namespaces, root and cgroup when pyro is root) |
//! | bring-up | `boot` (passt, QEMU, restore, the agent's welcome under a watchdog) |
//! | running | `supervisor` (routes many clients to one agent, owns teardown), `client` (a connection to a supervisor), `templates` (saved guests for fast start), `saved` (a guest's state in a file: templates, pauses, forks) |
//! | outside | `launch` (start a supervisor, halt, destroy, garbage), `admission` (how many VMs may run) |
//!
//! One-shot runs, lifecycle VMs and workspaces are built on `launch`,
//! `client` and `admission`; nothing here knows about them.

pub mod admission;
pub mod boot;
pub mod channel;
pub mod client;
pub mod control;
pub mod dir;
pub mod jail;
pub mod launch;
pub mod qemu;
pub mod qmp;
pub mod saved;
pub mod supervisor;
pub mod templates;
