//! The human form of every result: one renderer per result type. Results
//! go to stdout; the one-line `[tag] key=value` summaries of commands whose
//! stdout carries content (exec, file read, shell read, service logs) go to
//! stderr.

use pyro::{
    CommandEntry, Deleted, DiffResult, DiskExport, DiskList, DiskRead, DoctorReport,
    EnvironmentInfo, ExportReport, ExportResult, FileEntry, FileListResult, FileReadResult,
    FileWriteResult, ForkResult, PatchResult, PauseResult, PruneReport, PublishReport, ResetResult,
    ResumeResult, ServiceInfo, ServiceList, ServiceLogs, ShellInfo, SnapshotInfo, SnapshotList,
    SyncResult, WorkspaceInfo, WorkspaceList, WorkspaceLogs,
};

use crate::render::{bytes, safe, yes, Human};

impl Human for WorkspaceInfo {
    fn human(&self) {
        let w = self;
        println!("Workspace ID: {}", w.workspace_id);
        println!("Name: {}", w.name.as_deref().unwrap_or("-"));
        let labels: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "Labels: {}",
            if labels.is_empty() {
                "-".into()
            } else {
                labels.join(", ")
            }
        );
        println!("Environment: {}", w.environment);
        match &w.stop_reason {
            Some(reason) => println!("State: {} ({reason})", w.state),
            None => println!("State: {}", w.state),
        }
        if let Some(e) = &w.last_error {
            println!("Last error: {}", safe(e, true));
        }
        println!("Workspace: {}", w.workspace_path);
        println!("Last activity at: {}", w.last_activity_at);
        if let Some(t) = w.expires_at {
            println!(
                "Expires at: {t} (idle timeout {}s, then {})",
                w.ttl_seconds, w.on_idle
            );
        }
        println!("Network policy: {}", w.network_policy);
        let seed = &w.workspace_seed;
        println!(
            "Workspace seed: {}{}",
            seed.mode.as_str(),
            seed.seed_path
                .as_ref()
                .map(|p| format!(" from {p}"))
                .unwrap_or_default()
        );
        println!("Execution mode: {}", w.execution_mode);
        println!("Resources: {} vCPU / {} MiB", w.vcpu_count, w.mem_mib);
        println!("Command count: {}", w.command_count);
        println!("Reset count: {}", w.reset_count);
        println!("Snapshots: {}", w.snapshot_count);
        if !w.secrets.is_empty() {
            let names: Vec<String> = w
                .secrets
                .iter()
                .map(|s| format!("{} ({})", s.name, s.source_kind.as_str()))
                .collect();
            println!("Secrets: {}", names.join(", "));
        }
        if w.service_count.is_some() {
            println!("Services: {} running", services(w));
        }
        if let Some(c) = &w.last_command {
            println!("Last command: {} (exit_code={})", c.command, c.exit_code);
        }
    }
}

/// `R/T`: running and total services, `-` when not counted.
fn services(w: &WorkspaceInfo) -> String {
    match (w.running_service_count, w.service_count) {
        (Some(r), Some(t)) => format!("{r}/{t}"),
        _ => "-".into(),
    }
}

impl Human for WorkspaceList {
    fn human(&self) {
        for w in &self.workspaces {
            let labels: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "[workspace] workspace_id={} name={:?} state={} environment={} labels={} last_activity_at={} expires_at={} commands={} services={}",
                w.workspace_id,
                w.name.clone().unwrap_or_default(),
                w.state,
                w.environment,
                labels.join(","),
                w.last_activity_at,
                w.expires_at.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                w.command_count,
                services(w)
            );
        }
    }
}

impl Human for WorkspaceLogs {
    fn human(&self) {
        for e in &self.entries {
            println!(
                "[{}] exit_code={} duration_ms={} $ {}",
                e.sequence, e.exit_code, e.duration_ms, e.command
            );
            print!("{}", e.stdout);
            eprint!("{}", e.stderr);
        }
    }
}

impl Human for Deleted {
    fn human(&self) {
        println!("Deleted workspace: {}", self.workspace_id);
    }
}

/// An exec's summary line (its output was streamed already).
impl Human for CommandEntry {
    fn human(&self) {
        let e = self;
        eprintln!(
            "[workspace-exec] workspace_id={} sequence={} cwd={} execution_mode={} exit_code={} duration_ms={}",
            e.workspace_id, e.sequence, e.cwd, e.execution_mode, e.exit_code, e.duration_ms
        );
    }
}

impl Human for SyncResult {
    fn human(&self) {
        let s = &self.workspace_sync;
        println!(
            "[workspace-sync] workspace_id={} mode={} source={} destination={} entry_count={} bytes_written={}",
            self.workspace_id,
            s.mode.as_str(),
            s.source_path,
            s.destination,
            s.entry_count,
            s.bytes_written
        );
    }
}

impl Human for ExportResult {
    fn human(&self) {
        let r = self;
        println!(
            "[workspace-export] workspace_id={} workspace_path={} output_path={} artifact_type={} entry_count={} bytes_written={}",
            r.workspace_id,
            r.workspace_path,
            r.output_path,
            r.artifact_type.as_str(),
            r.entry_count,
            r.bytes_written
        );
    }
}

/// One line per path: kind, path, then size or link target.
fn entries(entries: &[FileEntry]) {
    for e in entries {
        let kind = e.artifact_type.as_str();
        match &e.link_target {
            Some(t) => println!("{kind} {} -> {}", safe(&e.path, false), safe(t, false)),
            None => println!("{kind} {} {}", safe(&e.path, false), e.size_bytes),
        }
    }
}

impl Human for FileListResult {
    fn human(&self) {
        entries(&self.entries);
    }
}

impl Human for DiskList {
    fn human(&self) {
        entries(&self.entries);
    }
}

/// File content as `file read` and `disk read` print it: the content on
/// stdout (ending in a newline), a summary line on stderr; or the content
/// alone.
pub struct Content<'a> {
    pub tag: &'static str,
    pub workspace_id: &'a str,
    pub path: &'a str,
    pub content: &'a str,
    pub size_bytes: u64,
    pub truncated: bool,
    pub content_only: bool,
}

impl Content<'_> {
    pub fn print(&self) {
        print!("{}", self.content);
        if !self.content_only {
            if !self.content.ends_with('\n') {
                println!();
            }
            eprintln!(
                "[{}] workspace_id={} path={} size_bytes={} truncated={}",
                self.tag,
                self.workspace_id,
                self.path,
                self.size_bytes,
                yes(self.truncated)
            );
        }
    }
}

/// A result that carries a file's content.
pub trait HasContent: serde::Serialize {
    fn content(&self, content_only: bool) -> Content<'_>;
}

impl HasContent for FileReadResult {
    fn content(&self, content_only: bool) -> Content<'_> {
        Content {
            tag: "workspace-file-read",
            workspace_id: &self.workspace_id,
            path: &self.path,
            content: &self.content,
            size_bytes: self.size_bytes,
            truncated: self.truncated,
            content_only,
        }
    }
}

impl HasContent for DiskRead {
    fn content(&self, content_only: bool) -> Content<'_> {
        Content {
            tag: "workspace-disk-read",
            workspace_id: &self.workspace_id,
            path: &self.path,
            content: &self.content,
            size_bytes: self.size_bytes,
            truncated: self.truncated,
            content_only,
        }
    }
}

/// A read as JSON, or its content (alone, with `content_only`).
pub fn show_content(
    json: bool,
    content_only: bool,
    r: &impl HasContent,
) -> anyhow::Result<std::process::ExitCode> {
    if json {
        crate::render::json(r)?;
    } else {
        r.content(content_only).print();
    }
    Ok(std::process::ExitCode::SUCCESS)
}

impl Human for FileWriteResult {
    fn human(&self) {
        println!(
            "[workspace-file-write] workspace_id={} path={} bytes_written={}",
            self.workspace_id, self.path, self.bytes_written
        );
    }
}

impl Human for SnapshotInfo {
    fn human(&self) {
        println!("Created snapshot: {}", self.snapshot_name);
    }
}

impl Human for SnapshotList {
    fn human(&self) {
        for s in &self.snapshots {
            println!(
                "{} ({}) created_at={}",
                s.snapshot_name, s.kind, s.created_at
            );
        }
    }
}

impl Human for PauseResult {
    fn human(&self) {
        self.workspace.human();
        let p = &self.workspace_pause;
        println!(
            "Paused: {} of guest state saved in {} ms",
            bytes(p.state_bytes),
            p.duration_ms
        );
    }
}

impl Human for ResumeResult {
    fn human(&self) {
        self.workspace.human();
        let r = &self.workspace_resume;
        match (r.resumed, r.restored) {
            (false, _) => println!("Resumed: it was not paused"),
            (true, true) => println!("Resumed in {} ms", r.duration_ms),
            (true, false) => println!(
                "Resumed in {} ms by booting its disk: the saved guest could not be restored",
                r.duration_ms
            ),
        }
    }
}

impl Human for ForkResult {
    fn human(&self) {
        println!(
            "Forked {} into {} workspace(s) in {} ms (parent paused {} ms):",
            self.parent_workspace_id, self.count, self.duration_ms, self.parent_pause_ms
        );
        for w in &self.workspaces {
            println!(
                "  {}  {}  {}",
                w.workspace_id,
                w.state,
                w.name.as_deref().unwrap_or("-")
            );
        }
    }
}

impl Human for ResetResult {
    fn human(&self) {
        self.workspace.human();
        println!(
            "Reset source: {} ({})",
            self.workspace_reset.snapshot_name, self.workspace_reset.kind
        );
    }
}

impl Human for DiffResult {
    fn human(&self) {
        let d = self;
        let s = &d.summary;
        if !d.changed {
            println!("No workspace changes.");
            return;
        }
        println!(
            "[workspace-diff] workspace_id={} total={} added={} modified={} deleted={} type_changed={} text_patched={} non_text={}",
            d.workspace_id, s.total, s.added, s.modified, s.deleted, s.type_changed, s.text_patched, s.non_text
        );
        for e in d.entries.iter().filter(|e| e.text_patch.is_none()) {
            println!("{} {}", e.status.as_str(), safe(&e.path, false));
        }
        print!("{}", d.patch);
    }
}

impl Human for PatchResult {
    fn human(&self) {
        let s = &self.summary;
        println!(
            "[workspace-patch] workspace_id={} total={} added={} modified={} deleted={}",
            self.workspace_id, s.total, s.added, s.modified, s.deleted
        );
    }
}

impl Human for DiskExport {
    fn human(&self) {
        println!(
            "[workspace-disk-export] workspace_id={} output_path={} disk_format={} bytes_written={}",
            self.workspace_id, self.output_path, self.disk_format, self.bytes_written
        );
    }
}

/// A shell's summary line, tagged with the verb that produced it.
pub fn shell_line(verb: &str, s: &ShellInfo) {
    eprintln!(
        "[workspace-shell-{verb}] workspace_id={} shell_id={} state={} cwd={} cols={} rows={} next_cursor={}",
        s.workspace_id, s.shell_id, s.state, s.cwd, s.cols, s.rows, s.next_cursor
    );
}

/// `127.0.0.1:H->G/tcp`, comma-separated.
pub fn ports(s: &ServiceInfo) -> String {
    s.published_ports
        .iter()
        .map(|p| {
            format!(
                "{}:{}->{}/{}",
                p.host, p.host_port, p.guest_port, p.protocol
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A service's summary line, tagged with the verb that produced it.
pub fn service_line(verb: &str, s: &ServiceInfo) {
    let mut line = format!(
        "[workspace-service-{verb}] workspace_id={} service_name={} state={} cwd={} execution_mode={}",
        s.workspace_id, s.service_name, s.state, s.cwd, s.execution_mode
    );
    if let Some(r) = &s.stop_reason {
        line.push_str(&format!(" stop_reason={r}"));
    }
    if let Some(c) = s.exit_code {
        line.push_str(&format!(" exit_code={c}"));
    }
    if !s.published_ports.is_empty() {
        line.push_str(&format!(" published_ports={}", ports(s)));
    }
    eprintln!("{line}");
}

impl Human for ServiceList {
    fn human(&self) {
        for s in &self.services {
            if s.published_ports.is_empty() {
                println!("{} {} {}", s.service_name, s.state, s.command);
            } else {
                println!("{} {} {} {}", s.service_name, s.state, ports(s), s.command);
            }
        }
    }
}

impl Human for ServiceLogs {
    fn human(&self) {
        print!("{}", self.stdout);
        eprint!("{}", self.stderr);
    }
}

impl Human for DoctorReport {
    fn human(&self) {
        let r = self;
        let caps = &r.runtime.capabilities;
        println!("Platform: {}", r.platform);
        println!("Runtime: {}", if r.runtime_ok { "PASS" } else { "FAIL" });
        println!(
            "Accelerator: {} ({})",
            r.accelerator.accel.as_str(),
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
        let d = &r.density;
        println!(
            "Memory: {} running VMs hold {} MiB (PSS {} MiB); run pool {} waiting of {} per shape",
            d.running_vms, d.qemu_rss_mib, d.qemu_pss_mib, d.pooled_vms, d.pool_size
        );
        println!(
            "KSM: {}",
            match (d.ksm_available, d.ksm_running) {
                (false, _) => "not available".to_string(),
                (true, true) => format!("on, saving {} MiB", d.ksm_saved_mib),
                (true, false) => match d.ksm_estimated_saving_mib {
                    Some(mib) => format!("off (turning it on would save about {mib} MiB)"),
                    None => "off".to_string(),
                },
            }
        );
        if let Some(h) = &d.hint {
            println!("  {h}");
        }
        if r.issues.is_empty() {
            println!("Issues: none");
        } else {
            println!("Issues:");
            for i in &r.issues {
                println!("  - {}\n    fix: {}", i.problem, i.remedy);
            }
        }
    }
}

/// The catalog as `env list` shows it.
#[derive(serde::Serialize)]
pub struct EnvironmentList {
    pub catalog_version: &'static str,
    pub environments: Vec<EnvironmentInfo>,
}

impl Human for EnvironmentList {
    fn human(&self) {
        println!("Catalog version: {}", self.catalog_version);
        for e in &self.environments {
            let state = if e.installed {
                "installed"
            } else {
                "not installed"
            };
            match &e.image {
                Some(i) => println!(
                    "{} [{state}] container image {} ({}, last used {})",
                    e.name,
                    short_digest(&i.digest),
                    bytes(i.disk_bytes),
                    i.last_used_unix_ms.map_or("never".into(), ago),
                ),
                None => println!("{} [{state}] {}", e.name, e.description),
            }
        }
    }
}

/// An environment under a heading (`Environment`, `Pulled`, `Imported`).
pub fn environment(heading: &str, e: &EnvironmentInfo) {
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
    if let Some(r) = e.image.as_ref().and_then(|i| i.record.as_ref()) {
        println!("Source: {}", r.source);
        println!("Layers: {}", r.layers.len());
        println!("Image size: {} bytes", r.image_size_bytes);
        println!("Image sha256: {}", r.image_sha256);
        println!("User: {}", r.defaults.user.as_deref().unwrap_or("root"));
        println!(
            "Working dir: {}",
            r.defaults.working_dir.as_deref().unwrap_or("/workspace")
        );
        println!("Env: {}", r.defaults.env.join(" "));
        if !r.skipped_entries.is_empty() {
            println!("Left out: {}", r.skipped_entries.join(", "));
        }
    }
}

fn short_digest(d: &str) -> &str {
    &d[..d.len().min("sha256:".len() + 12)]
}

fn ago(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        7200..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

impl Human for PublishReport {
    fn human(&self) {
        println!("Published {} to {}", self.environment, self.reference);
        println!("Manifest digest: {}", self.manifest_digest);
        println!(
            "Pushed: {} (kernel included: {})",
            bytes(self.bytes),
            yes(self.includes_kernel)
        );
    }
}

impl Human for PruneReport {
    fn human(&self) {
        for d in &self.deleted {
            println!("Deleted {} ({}, {})", d.path, d.reason, bytes(d.bytes));
        }
        println!(
            "Pruned {} entries, freed {}",
            self.count,
            bytes(self.freed_bytes)
        );
    }
}

impl Human for ExportReport {
    fn human(&self) {
        println!(
            "Exported {} to {} ({}{})",
            self.environment,
            self.output_path,
            bytes(self.bytes_written),
            if self.includes_kernel {
                ", with the guest kernel"
            } else {
                ""
            }
        );
    }
}
