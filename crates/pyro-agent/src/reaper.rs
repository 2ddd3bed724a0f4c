//! As PID 1 the agent inherits every orphan and must reap it, while the
//! commands it runs itself need their own exit statuses. One thread waits
//! for any child with `WNOWAIT`, hands a watched child's status to its
//! watcher and reaps everything else. Outside a guest (tests), each child
//! is waited for on its own, and nobody else's child is touched.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::mpsc::Sender;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::sys;

pub struct Reaper {
    /// PID 1: one thread reaps every exited child (orphans included). Any
    /// other process waits for each of its own children on a thread.
    orphans: bool,
    state: Mutex<State>,
    children_appeared: Condvar,
}

#[derive(Default)]
struct State {
    watchers: HashMap<i32, Box<dyn FnOnce(i32) + Send>>,
    /// Spawns in progress: a child that exits before `spawn` returns is not
    /// ours to reap yet (std reaps a child whose `exec` failed itself).
    spawning: usize,
    /// Counts spawns, so the waiting loop never sleeps through one.
    spawned: u64,
}

impl Reaper {
    pub fn new(orphans: bool) -> Reaper {
        Reaper {
            orphans,
            state: Mutex::new(State::default()),
            children_appeared: Condvar::new(),
        }
    }

    /// Spawns `cmd`; `tx` receives `wrap(raw wait status)` when it exits.
    pub fn spawn<T: Send + 'static>(
        &self,
        cmd: &mut Command,
        tx: Sender<T>,
        wrap: fn(i32) -> T,
    ) -> io::Result<Child> {
        if !self.orphans {
            let child = cmd.spawn()?;
            let pid = child.id() as i32;
            std::thread::spawn(move || {
                if let Some(status) = sys::reap(pid) {
                    let _ = tx.send(wrap(status));
                }
            });
            return Ok(child);
        }
        self.state.lock().unwrap().spawning += 1;
        let result = cmd.spawn();
        let mut state = self.state.lock().unwrap();
        state.spawning -= 1;
        state.spawned += 1;
        if let Ok(child) = &result {
            state.watchers.insert(
                child.id() as i32,
                Box::new(move |status| {
                    let _ = tx.send(wrap(status));
                }),
            );
        }
        self.children_appeared.notify_all();
        result
    }

    pub fn run(&self) -> ! {
        loop {
            let spawned = self.state.lock().unwrap().spawned;
            match sys::wait_any_exited() {
                Ok(Some(exited)) => {
                    let mut state = self.state.lock().unwrap();
                    if let Some(watcher) = state.watchers.remove(&exited.pid) {
                        drop(state);
                        if let Some(status) = sys::reap(exited.pid) {
                            watcher(status);
                        }
                    } else if state.spawning > 0 {
                        drop(state);
                        std::thread::sleep(Duration::from_millis(1));
                    } else {
                        drop(state);
                        sys::reap(exited.pid);
                    }
                }
                Ok(None) => {
                    let state = self.state.lock().unwrap();
                    if state.spawned == spawned && state.spawning == 0 {
                        let _ = self
                            .children_appeared
                            .wait_timeout(state, Duration::from_secs(1));
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}
