//! Times `exec_workspace` from a long-lived process (the library in-process,
//! as the MCP server and the SDK call it): `exec_loop WORKSPACE_ID RUNS
//! [COMMAND]` prints one wall time in milliseconds per exec. Used by
//! `scripts/bench.sh`.

use std::time::Instant;

use pyro::{Command, Discard, Pyro, WorkspaceExec};

fn main() {
    let mut args = std::env::args().skip(1);
    let id = args
        .next()
        .expect("usage: exec_loop WORKSPACE_ID RUNS [COMMAND]");
    let runs: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(20);
    let command = args.next().unwrap_or_else(|| "true".into());
    let pyro = Pyro::new();
    let exec = WorkspaceExec::new(Command::shell(command));
    for _ in 0..runs {
        let t = Instant::now();
        let entry = pyro.exec_workspace(&id, &exec, &mut Discard).expect("exec");
        assert_eq!(entry.exit_code, 0);
        println!("{:.3}", t.elapsed().as_secs_f64() * 1000.0);
    }
}
