//! Human and JSON rendering. JSON goes to stdout; progress and errors to
//! stderr.

use std::io::Write;

use pyro::{DoctorReport, EnvironmentInfo, ExecutionMode, OutputSink, Progress};

/// Progress as `[area] detail` lines on stderr.
pub struct Stderr;

impl Progress for Stderr {
    fn phase(&self, area: &str, detail: &str) {
        eprintln!("[{area}] {detail}");
    }
}

/// Progress for long work: a spinner with the current phase on a terminal,
/// plain `[area] detail` lines otherwise (logs, CI, pipes).
pub struct Phases {
    bar: Option<indicatif::ProgressBar>,
}

impl Phases {
    pub fn new() -> Phases {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
                    .expect("valid template"),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        Phases { bar }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Phases {
    fn phase(&self, area: &str, detail: &str) {
        match &self.bar {
            Some(bar) => {
                bar.println(format!("[{area}] {detail}"));
                bar.set_message(format!("{area}: {detail}"));
            }
            None => eprintln!("[{area}] {detail}"),
        }
    }
}

impl Drop for Phases {
    fn drop(&mut self) {
        self.finish();
    }
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Guest output straight to ours, as it arrives.
pub struct Stream;

impl OutputSink for Stream {
    fn stdout(&mut self, bytes: &[u8]) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(bytes);
        let _ = out.flush();
    }
    fn stderr(&mut self, bytes: &[u8]) {
        let _ = std::io::stderr().lock().write_all(bytes);
    }
}

/// Output is only wanted in the result.
pub struct Discard;

impl OutputSink for Discard {
    fn stdout(&mut self, _: &[u8]) {}
    fn stderr(&mut self, _: &[u8]) {}
}

pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

pub fn error(e: &anyhow::Error, json: bool) {
    let message = format!("{e:#}");
    if json {
        let _ = self::json(&serde_json::json!({ "ok": false, "error": message }));
    } else {
        eprintln!("[error] {message}");
    }
}

/// One line per path: kind, path, then size or link target.
pub fn entries(entries: &[pyro::FileEntry]) {
    for e in entries {
        let kind = serde_json::to_value(e.artifact_type).unwrap();
        let kind = kind.as_str().unwrap_or("");
        match &e.link_target {
            Some(t) => println!("{kind} {} -> {t}", e.path),
            None => println!("{kind} {} {}", e.path, e.size_bytes),
        }
    }
}

/// File content as `file read` and `disk read` print it: the content on
/// stdout (ending in a newline), a summary line on stderr.
pub fn file_content(
    tag: &str,
    id: &str,
    path: &str,
    content: &str,
    size: u64,
    truncated: bool,
    content_only: bool,
) {
    print!("{content}");
    if !content_only {
        if !content.ends_with('\n') {
            println!();
        }
        eprintln!(
            "[{tag}] workspace_id={id} path={path} size_bytes={size} truncated={}",
            yes(truncated)
        );
    }
}

pub fn mode(m: ExecutionMode) -> &'static str {
    match m {
        ExecutionMode::GuestVirtioSerial => "guest_virtio_serial",
        ExecutionMode::HostCompat => "host_compat",
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

pub fn doctor(r: &DoctorReport) {
    let caps = &r.runtime.capabilities;
    println!("Platform: {}", r.platform);
    println!("Runtime: {}", if r.runtime_ok { "PASS" } else { "FAIL" });
    println!(
        "Accelerator: {} ({})",
        serde_json::to_value(r.accelerator.accel)
            .unwrap()
            .as_str()
            .unwrap_or(""),
        r.accelerator.reason
    );
    println!(
        "KVM: exists={} readable={} writable={}",
        yes(r.kvm.exists),
        yes(r.kvm.readable),
        yes(r.kvm.writable)
    );
    println!(
        "QEMU: {}",
        r.qemu.version.as_deref().unwrap_or("not installed")
    );
    println!(
        "Guest kernel: {}",
        r.runtime
            .kernel_source
            .as_deref()
            .unwrap_or("not installed")
    );
    println!("Environment cache: {}", r.runtime.cache_dir);
    println!(
        "Fast start: {} ({} templates in {})",
        if r.runtime.fast_start {
            "on"
        } else {
            "off (PYRO_FAST_START=0)"
        },
        r.runtime.templates,
        r.runtime.template_dir
    );
    for e in &r.runtime.environments {
        println!(
            "  {} {}",
            e.name,
            if e.installed {
                "installed"
            } else {
                "not installed"
            }
        );
    }
    println!(
        "Capabilities: vm_boot={} guest_exec={} guest_network={}",
        yes(caps.supports_vm_boot),
        yes(caps.supports_guest_exec),
        yes(caps.supports_guest_network)
    );
    println!(
        "Networking: passt={}",
        r.networking
            .passt_binary
            .as_deref()
            .unwrap_or("not installed")
    );
    if r.issues.is_empty() {
        println!("Issues: none");
    } else {
        println!("Issues:");
        for i in &r.issues {
            println!("  - {}\n    fix: {}", i.problem, i.remedy);
        }
    }
}

pub fn environment_list(list: &[EnvironmentInfo]) {
    println!("Catalog version: {}", pyro::CATALOG_VERSION);
    for e in list {
        let state = if e.installed {
            "installed"
        } else {
            "not installed"
        };
        println!("{} [{state}] {}", e.name, e.description);
    }
}

pub fn environment(e: &EnvironmentInfo, heading: &str) {
    println!("{heading}: {}", e.name);
    println!("Version: {}", e.version);
    println!("Distribution: {}", e.distribution);
    println!("Installed: {}", yes(e.installed));
    println!("Default packages: {}", e.default_packages.join(", "));
    println!("Description: {}", e.description);
    println!("Install dir: {}", e.install_dir);
    if let Some(m) = &e.manifest {
        println!("Image size: {} bytes", m.image_size_bytes);
        println!("Image sha256: {}", m.image_sha256);
        println!("Installed packages: {}", m.installed_packages.len());
    }
}
