"""The synchronous SDK: :class:`Pyro`."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union, cast

from pyro_mcp import _native
from pyro_mcp.cli import binary
from pyro_mcp.errors import InvalidArgumentError

__all__ = ["Pyro", "VmManager", "Command"]

#: A command: one string runs under ``/bin/sh -lc``; a list is an argv, run as it is.
Command = Union[str, Sequence[str]]

#: Long steps (building an environment, fetching the kernel, booting) are
#: logged here at INFO, e.g. ``logging.basicConfig(level=logging.INFO)``.
logger = logging.getLogger("pyro_mcp")

#: The execution mode of everything that runs in a guest.
_GUEST_MODE = "guest_virtio_serial"
#: The guest's address behind passt, when it has a network.
_GUEST_IP = "10.0.2.15"


class VmManager:
    """Where pyro keeps its state and how much it may run at once.

    ``base_dir`` is the home of VMs and workspaces (default ``$PYRO_HOME``,
    else ``~/.local/share/pyro``); ``cache_dir`` holds environments (default
    ``$PYRO_ENVIRONMENT_CACHE_DIR``, else ``~/.cache/pyro/environments``);
    ``max_active_vms`` caps how many VMs run at once (default: as many as
    the host's memory allows, or ``$PYRO_MAX_RUNNING_VMS``).
    """

    def __init__(
        self,
        *,
        base_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        cache_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        max_active_vms: Optional[int] = None,
    ) -> None:
        if max_active_vms is not None and max_active_vms < 1:
            raise InvalidArgumentError(f"max_active_vms must be at least 1, not {max_active_vms}")
        self._native = _native.Native(
            str(binary()),
            None if base_dir is None else os.fspath(base_dir),
            None if cache_dir is None else os.fspath(cache_dir),
            max_active_vms,
        )
        self.max_active_vms = max_active_vms
        paths = self._native.paths()
        self.base_dir = Path(paths["home"])
        self.cache_dir = Path(paths["environment_cache"])

    def call(self, method: str, **args: Any) -> Any:
        """Runs one library operation; the GIL is released while it runs."""
        progress = _log_phase if logger.isEnabledFor(logging.INFO) else None
        return json.loads(self._native.call(method, json.dumps(args), progress))


def _log_phase(area: str, detail: str) -> None:
    logger.info("[%s] %s", area, detail)


class Pyro:
    """Disposable, isolated Linux microVMs: one-shot runs, VMs and workspaces.

    Every method is synchronous, safe to call from several threads at once
    (the GIL is released while a VM works) and returns plain ``dict``
    results with the keys of pyro-mcp's SDK, plus pyro's own. Failures
    raise :class:`pyro_mcp.errors.PyroError` subclasses: bad arguments and
    unknown ids are ``ValueError``, runtime failures ``RuntimeError``.
    """

    def __init__(
        self,
        manager: Optional[VmManager] = None,
        *,
        backend_name: Optional[str] = None,
        base_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        cache_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        max_active_vms: Optional[int] = None,
    ) -> None:
        if backend_name not in (None, "qemu", "firecracker"):
            raise InvalidArgumentError(
                f"backend_name {backend_name!r} is not available: every pyro call runs a real "
                "microVM (QEMU); leave backend_name unset"
            )
        if manager is not None and (base_dir, cache_dir, max_active_vms) != (None, None, None):
            raise InvalidArgumentError("give either a manager or base_dir/cache_dir/max_active_vms")
        self._manager = manager or VmManager(
            base_dir=base_dir, cache_dir=cache_dir, max_active_vms=max_active_vms
        )
        self._environments: Dict[str, str] = {}
        self._workspace_environments: Dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def manager(self) -> VmManager:
        """The configuration this client runs with."""
        return self._manager

    def _call(self, method: str, **args: Any) -> Dict[str, Any]:
        return cast(Dict[str, Any], self._manager.call(method, **args))

    def _catalog(self) -> List[Dict[str, Any]]:
        return cast(List[Dict[str, Any]], self._manager.call("list_environments"))

    def _environment_version(self, environment: str) -> Optional[str]:
        with self._lock:
            if not self._environments:
                for e in self._catalog():
                    self._environments[e["name"]] = e["version"]
            return self._environments.get(environment)

    # -- shaping: pyro-mcp's keys on top of pyro's results --------------------

    def _env(self, e: Dict[str, Any]) -> Dict[str, Any]:
        name = e["name"]
        manifest = e.get("manifest")
        e.setdefault("distribution_version", name.partition(":")[2] or None)
        e.setdefault("platform", "linux-x86_64")
        e.setdefault("catalog_version", _native.CATALOG_VERSION)
        e.setdefault("cache_dir", str(self._manager.cache_dir))
        image = e.get("image")
        if image:
            # registry/repository:tag (or @digest) of a container image.
            registry, _, rest = image["reference"].partition("/")
            repository, sep, ref = rest.partition("@")
            if not sep:
                repository, _, ref = rest.rpartition(":")
            e.setdefault("oci_registry", registry)
            e.setdefault("oci_repository", repository)
            e.setdefault("oci_reference", ref)
            e["distribution_version"] = None
            e.setdefault("source_digest", image["digest"])
        e.setdefault("oci_registry", None)
        e.setdefault("oci_repository", None)
        e.setdefault("oci_reference", None)
        e.setdefault("source_digest", manifest.get("image_sha256") if manifest else None)
        e.setdefault("compatibility", {"platform": "linux-x86_64", "accelerators": ["kvm", "tcg"]})
        if manifest is not None:
            e.setdefault("install_manifest", manifest)
        return e

    def _vm(self, v: Dict[str, Any]) -> Dict[str, Any]:
        v.setdefault("environment_version", self._environment_version(v["environment"]))
        v.setdefault("allow_host_compat", False)
        v.setdefault("guest_ip", _GUEST_IP if v.get("network_enabled") else None)
        v.setdefault("tap_name", None)
        v.setdefault("metadata", {})
        return v

    def _run(self, r: Dict[str, Any], command: Command) -> Dict[str, Any]:
        r.setdefault("command", command if isinstance(command, str) else list(command))
        r.setdefault("environment_version", self._environment_version(r["environment"]))
        cleanup = r.get("cleanup")
        if isinstance(cleanup, dict):
            cleanup.setdefault("vm_id", r["vm_id"])
        return r

    def _ws(self, w: Dict[str, Any]) -> Dict[str, Any]:
        self._workspace_environments[w["workspace_id"]] = w["environment"]
        network = w.get("network_policy", "off") != "off"
        w.setdefault("environment_version", self._environment_version(w["environment"]))
        w.setdefault("network_enabled", network)
        w.setdefault("allow_host_compat", False)
        w.setdefault("guest_ip", _GUEST_IP if network and w.get("state") == "started" else None)
        w.setdefault("tap_name", None)
        w.setdefault("metadata", {})
        last = w.get("last_command")
        if isinstance(last, dict):
            last.setdefault("cwd", "/workspace")
            last.setdefault("duration_ms", None)
            last.setdefault("execution_mode", w.get("execution_mode", _GUEST_MODE))
        return w

    def _shell(self, s: Dict[str, Any]) -> Dict[str, Any]:
        s.setdefault("started_at", None)
        s.setdefault("ended_at", None)
        s.setdefault("execution_mode", _GUEST_MODE)
        return s

    def _snapshot(self, workspace_id: str, s: Dict[str, Any]) -> Dict[str, Any]:
        s.setdefault("workspace_id", workspace_id)
        s.setdefault("entry_count", None)
        s.setdefault("bytes_written", None)
        return s

    # -- environments -------------------------------------------------------

    def list_environments(self) -> List[Dict[str, Any]]:
        """The catalog, with what is installed."""
        return [self._env(e) for e in self._catalog()]

    def pull_environment(self, environment: str) -> Dict[str, Any]:
        """Builds (or repairs) an environment and the guest kernel now."""
        e = self._env(self._call("pull_environment", environment=environment))
        manifest = e.get("manifest") or {}
        install_dir = Path(e["install_dir"])
        e.setdefault("kernel_image", self._call("doctor")["runtime"]["kernel"])
        e.setdefault("rootfs_image", str(install_dir / manifest.get("image", "rootfs.ext4")))
        e.setdefault("source", "mmdebstrap")
        return e

    def inspect_environment(self, environment: str) -> Dict[str, Any]:
        """One environment of the catalog."""
        return self._env(self._call("inspect_environment", environment=environment))

    def prune_environments(self) -> Dict[str, Any]:
        """Removes environment builds and templates nothing uses."""
        r = self._call("prune_environments")
        r.setdefault("deleted_environment_dirs", [p["path"] for p in r["deleted"]])
        return r

    # -- one-shot runs and VMs ------------------------------------------------

    def run_in_vm(
        self,
        *,
        environment: str,
        command: Command,
        vcpu_count: int = 1,
        mem_mib: int = 1024,
        timeout_seconds: int = 30,
        ttl_seconds: int = 600,
        network: bool = False,
        allow_host_compat: bool = False,
    ) -> Dict[str, Any]:
        """Runs one command in a fresh microVM that is deleted afterwards.

        A non-zero exit code is a result (``exit_code``), not an exception.
        """
        r = self._call(
            "run_in_vm",
            environment=environment,
            command=_command(command),
            vcpu_count=vcpu_count,
            mem_mib=mem_mib,
            timeout_seconds=timeout_seconds,
            ttl_seconds=ttl_seconds,
            network=network,
            allow_host_compat=allow_host_compat,
        )
        return self._run(r, command)

    def create_vm(
        self,
        *,
        environment: str,
        vcpu_count: int = 1,
        mem_mib: int = 1024,
        ttl_seconds: int = 600,
        network: bool = False,
        allow_host_compat: bool = False,
    ) -> Dict[str, Any]:
        """Creates a VM without booting it; it is deleted ``ttl_seconds`` after creation."""
        return self._vm(
            self._call(
                "create_vm",
                environment=environment,
                vcpu_count=vcpu_count,
                mem_mib=mem_mib,
                ttl_seconds=ttl_seconds,
                network=network,
                allow_host_compat=allow_host_compat,
            )
        )

    def start_vm(self, vm_id: str) -> Dict[str, Any]:
        """Boots a created or stopped VM."""
        return self._vm(self._call("start_vm", vm_id=vm_id))

    def exec_vm(self, vm_id: str, *, command: Command, timeout_seconds: int = 30) -> Dict[str, Any]:
        """Runs one command in a VM (booting it if needed), then deletes the VM."""
        r = self._call(
            "exec_vm", vm_id=vm_id, command=_command(command), timeout_seconds=timeout_seconds
        )
        return self._run(r, command)

    def stop_vm(self, vm_id: str) -> Dict[str, Any]:
        """Stops a VM, keeping its disk."""
        return self._vm(self._call("stop_vm", vm_id=vm_id))

    def delete_vm(self, vm_id: str) -> Dict[str, Any]:
        """Deletes a VM."""
        r = self._call("delete_vm", vm_id=vm_id)
        r.setdefault("reason", "explicit_delete")
        return r

    def status_vm(self, vm_id: str) -> Dict[str, Any]:
        """A VM's state."""
        return self._vm(self._call("status_vm", vm_id=vm_id))

    def network_info_vm(self, vm_id: str) -> Dict[str, Any]:
        """A VM's network addresses (passt), or why it has none."""
        r = self._call("network_info_vm", vm_id=vm_id)
        if not r.get("network_enabled"):
            r.setdefault("reason", "network is disabled for this VM (create it with network=True)")
        return r

    def reap_expired(self) -> Dict[str, Any]:
        """Deletes every VM whose TTL has passed."""
        return self._call("reap_expired")

    # -- workspaces -----------------------------------------------------------

    def create_workspace(
        self,
        *,
        environment: str,
        vcpu_count: int = 1,
        mem_mib: int = 1024,
        ttl_seconds: int = 600,
        network_policy: str = "off",
        allow_host_compat: bool = False,
        seed_path: Optional[Union[str, "os.PathLike[str]"]] = None,
        secrets: Optional[List[Dict[str, str]]] = None,
        name: Optional[str] = None,
        labels: Optional[Dict[str, str]] = None,
        on_idle: str = "pause",
    ) -> Dict[str, Any]:
        """Creates a persistent workspace, optionally seeded from a host directory or tar archive.

        ``ttl_seconds`` is an idle timeout: the workspace is then paused
        (``on_idle="pause"``: its memory is saved and the next call resumes
        it), stopped (``"stop"``) or left running (``"none"``); never
        deleted. ``secrets`` are ``{"name", "value"}`` or ``{"name",
        "file_path"}`` dicts.
        """
        return self._ws(
            self._call(
                "create_workspace",
                environment=environment,
                vcpu_count=vcpu_count,
                mem_mib=mem_mib,
                ttl_seconds=ttl_seconds,
                network_policy=network_policy,
                allow_host_compat=allow_host_compat,
                seed_path=None if seed_path is None else os.fspath(seed_path),
                secrets=secrets,
                name=name,
                labels=labels,
                on_idle=on_idle,
            )
        )

    def list_workspaces(self) -> Dict[str, Any]:
        """Every workspace, most recently active first."""
        r = self._call("list_workspaces")
        r["workspaces"] = [self._ws(w) for w in r["workspaces"]]
        return r

    def update_workspace(
        self,
        workspace_id: str,
        *,
        name: Optional[str] = None,
        clear_name: bool = False,
        labels: Optional[Dict[str, str]] = None,
        clear_labels: Optional[List[str]] = None,
    ) -> Dict[str, Any]:
        """Changes a workspace's name or labels."""
        return self._ws(
            self._call(
                "update_workspace",
                workspace_id=workspace_id,
                name=name,
                clear_name=clear_name,
                labels=labels,
                clear_labels=clear_labels,
            )
        )

    def status_workspace(self, workspace_id: str) -> Dict[str, Any]:
        """A workspace's state, resources, services and last command."""
        return self._ws(self._call("status_workspace", workspace_id=workspace_id))

    def stop_workspace(self, workspace_id: str) -> Dict[str, Any]:
        """Stops a workspace's VM; its disk and history stay."""
        return self._ws(self._call("stop_workspace", workspace_id=workspace_id))

    def start_workspace(self, workspace_id: str) -> Dict[str, Any]:
        """Boots a stopped workspace again."""
        return self._ws(self._call("start_workspace", workspace_id=workspace_id))

    def pause_workspace(self, workspace_id: str) -> Dict[str, Any]:
        """Saves the guest's memory beside its disk and ends its VM; any later call resumes it."""
        return self._ws(self._call("pause_workspace", workspace_id=workspace_id))

    def resume_workspace(self, workspace_id: str) -> Dict[str, Any]:
        """Resumes a paused workspace with its processes, shells, services and ports."""
        return self._ws(self._call("resume_workspace", workspace_id=workspace_id))

    def fork_workspace(
        self, workspace_id: str, *, count: int = 1, names: Optional[List[str]] = None
    ) -> Dict[str, Any]:
        """New workspaces from a running one's memory and disk at one instant."""
        r = self._call("fork_workspace", workspace_id=workspace_id, count=count, names=names)
        r["workspaces"] = [self._ws(w) for w in r["workspaces"]]
        return r

    def delete_workspace(self, workspace_id: str) -> Dict[str, Any]:
        """Deletes a workspace with its disk, snapshots and history."""
        r = self._call("delete_workspace", workspace_id=workspace_id)
        r.setdefault("reason", "explicit_delete")
        self._workspace_environments.pop(workspace_id, None)
        return r

    def logs_workspace(self, workspace_id: str) -> Dict[str, Any]:
        """The workspace's command history with each command's output."""
        r = self._call("logs_workspace", workspace_id=workspace_id)
        for e in r["entries"]:
            started, duration = e.get("started_at"), e.get("duration_ms")
            recorded = None if started is None or duration is None else started + duration / 1000
            e.setdefault("recorded_at", recorded)
            e.setdefault("stdout_file", None)
            e.setdefault("stderr_file", None)
        return r

    def exec_workspace(
        self,
        workspace_id: str,
        *,
        command: Command,
        timeout_seconds: int = 30,
        secret_env: Optional[Dict[str, str]] = None,
    ) -> Dict[str, Any]:
        """Runs a command in ``/workspace``. A non-zero exit code is a result, not an exception.

        ``secret_env`` maps environment variable names to the workspace's secret names.
        """
        r = self._call(
            "exec_workspace",
            workspace_id=workspace_id,
            command=_command(command),
            timeout_seconds=timeout_seconds,
            secret_env=secret_env,
        )
        environment = self._workspace_environments.get(workspace_id)
        if environment is None:
            environment = self.status_workspace(workspace_id)["environment"]
        r.setdefault("environment", environment)
        r.setdefault("environment_version", self._environment_version(environment))
        return r

    def push_workspace_sync(
        self,
        workspace_id: str,
        source_path: Union[str, "os.PathLike[str]"],
        *,
        dest: str = "/workspace",
    ) -> Dict[str, Any]:
        """Copies a host directory or tar archive into the workspace (overwrites, never deletes)."""
        return self._call(
            "push_workspace_sync",
            workspace_id=workspace_id,
            source_path=os.fspath(source_path),
            dest=dest,
        )

    def export_workspace(
        self,
        workspace_id: str,
        path: str,
        *,
        output_path: Union[str, "os.PathLike[str]"],
        force: bool = False,
    ) -> Dict[str, Any]:
        """Copies a file or directory out of the workspace to a new host path."""
        return self._call(
            "export_workspace",
            workspace_id=workspace_id,
            path=path,
            output_path=os.fspath(output_path),
            force=force,
        )

    def diff_workspace(self, workspace_id: str) -> Dict[str, Any]:
        """What changed under ``/workspace`` since the baseline, with a unified patch."""
        return self._call("diff_workspace", workspace_id=workspace_id)

    def list_workspace_files(
        self, workspace_id: str, *, path: str = "/workspace", recursive: bool = False
    ) -> Dict[str, Any]:
        """Lists a directory of the running workspace."""
        return self._call(
            "list_workspace_files", workspace_id=workspace_id, path=path, recursive=recursive
        )

    def read_workspace_file(
        self, workspace_id: str, path: str, *, max_bytes: int = 65536
    ) -> Dict[str, Any]:
        """Reads a text file of the running workspace (at most ``max_bytes``)."""
        return self._call(
            "read_workspace_file", workspace_id=workspace_id, path=path, max_bytes=max_bytes
        )

    def write_workspace_file(self, workspace_id: str, path: str, *, text: str) -> Dict[str, Any]:
        """Writes a text file, creating its directories."""
        return self._call("write_workspace_file", workspace_id=workspace_id, path=path, text=text)

    def apply_workspace_patch(self, workspace_id: str, *, patch: str) -> Dict[str, Any]:
        """Applies a unified diff under ``/workspace``: all of it, or nothing."""
        r = self._call("apply_workspace_patch", workspace_id=workspace_id, patch=patch)
        r.setdefault("patch", patch)
        return r

    def export_workspace_disk(
        self,
        workspace_id: str,
        *,
        output_path: Union[str, "os.PathLike[str]"],
        force: bool = False,
    ) -> Dict[str, Any]:
        """Writes a stopped workspace's disk as a raw ext4 image."""
        return self._call(
            "export_workspace_disk",
            workspace_id=workspace_id,
            output_path=os.fspath(output_path),
            force=force,
        )

    def list_workspace_disk(
        self, workspace_id: str, *, path: str = "/workspace", recursive: bool = False
    ) -> Dict[str, Any]:
        """Lists a directory of a stopped workspace's disk, without booting it."""
        r = self._call(
            "list_workspace_disk", workspace_id=workspace_id, path=path, recursive=recursive
        )
        r.setdefault("recursive", recursive)
        return r

    def read_workspace_disk(
        self, workspace_id: str, path: str, *, max_bytes: int = 65536
    ) -> Dict[str, Any]:
        """Reads a file of a stopped workspace's disk, without booting it."""
        return self._call(
            "read_workspace_disk", workspace_id=workspace_id, path=path, max_bytes=max_bytes
        )

    # -- snapshots --------------------------------------------------------------

    def create_snapshot(self, workspace_id: str, snapshot_name: str) -> Dict[str, Any]:
        """Checkpoints the workspace's whole disk under a name."""
        s = self._call("create_snapshot", workspace_id=workspace_id, snapshot_name=snapshot_name)
        r: Dict[str, Any] = {
            "workspace_id": workspace_id,
            "snapshot": self._snapshot(workspace_id, dict(s)),
            "execution_mode": _GUEST_MODE,
        }
        for k, v in s.items():
            r.setdefault(k, v)
        return r

    def list_snapshots(self, workspace_id: str) -> Dict[str, Any]:
        """The workspace's checkpoints, baseline first."""
        r = self._call("list_snapshots", workspace_id=workspace_id)
        r["snapshots"] = [self._snapshot(workspace_id, s) for s in r["snapshots"]]
        return r

    def delete_snapshot(self, workspace_id: str, snapshot_name: str) -> Dict[str, Any]:
        """Deletes a named checkpoint (never the baseline)."""
        r = self._call("delete_snapshot", workspace_id=workspace_id, snapshot_name=snapshot_name)
        r.setdefault("snapshot_name", snapshot_name)
        return r

    def reset_workspace(self, workspace_id: str, *, snapshot: str = "baseline") -> Dict[str, Any]:
        """Rolls the whole workspace back to a checkpoint and boots it fresh."""
        r = self._ws(self._call("reset_workspace", workspace_id=workspace_id, snapshot=snapshot))
        reset = r.get("workspace_reset")
        if isinstance(reset, dict):
            reset.setdefault("destination", "/workspace")
            reset.setdefault("entry_count", None)
            reset.setdefault("bytes_written", None)
        return r

    # -- shells -------------------------------------------------------------------

    def open_shell(
        self,
        workspace_id: str,
        *,
        cwd: str = "/workspace",
        cols: int = 120,
        rows: int = 30,
        secret_env: Optional[Dict[str, str]] = None,
    ) -> Dict[str, Any]:
        """Opens an interactive shell on a PTY that keeps its state between calls."""
        return self._shell(
            self._call(
                "open_shell",
                workspace_id=workspace_id,
                cwd=cwd,
                cols=cols,
                rows=rows,
                secret_env=secret_env,
            )
        )

    def read_shell(
        self,
        workspace_id: str,
        shell_id: str,
        *,
        cursor: int = 0,
        max_chars: int = 65536,
        plain: bool = False,
        wait_for_idle_ms: Optional[int] = None,
    ) -> Dict[str, Any]:
        """Reads a shell's output from ``cursor``; pass ``next_cursor`` back to continue."""
        r = self._shell(
            self._call(
                "read_shell",
                workspace_id=workspace_id,
                shell_id=shell_id,
                cursor=cursor,
                max_chars=max_chars,
                plain=plain,
                wait_for_idle_ms=wait_for_idle_ms,
            )
        )
        r.setdefault("plain", plain)
        r.setdefault("wait_for_idle_ms", wait_for_idle_ms)
        return r

    def write_shell(
        self, workspace_id: str, shell_id: str, *, input: str, append_newline: bool = True
    ) -> Dict[str, Any]:
        """Types ``input`` into a shell (and Enter, unless ``append_newline=False``)."""
        r = self._shell(
            self._call(
                "write_shell",
                workspace_id=workspace_id,
                shell_id=shell_id,
                input=input,
                append_newline=append_newline,
            )
        )
        r.setdefault("input_length", len(input))
        r.setdefault("append_newline", append_newline)
        return r

    def signal_shell(
        self, workspace_id: str, shell_id: str, *, signal_name: str = "INT"
    ) -> Dict[str, Any]:
        """Sends HUP, INT, TERM or KILL to the shell's foreground process group."""
        r = self._shell(
            self._call(
                "signal_shell", workspace_id=workspace_id, shell_id=shell_id, signal_name=signal_name
            )
        )
        r.setdefault("signal", signal_name)
        return r

    def close_shell(self, workspace_id: str, shell_id: str) -> Dict[str, Any]:
        """Closes a shell and ends everything it started."""
        return self._shell(self._call("close_shell", workspace_id=workspace_id, shell_id=shell_id))

    # -- services -------------------------------------------------------------------

    def start_service(
        self,
        workspace_id: str,
        service_name: str,
        *,
        command: Command,
        cwd: str = "/workspace",
        readiness: Optional[Dict[str, Any]] = None,
        ready_timeout_seconds: int = 30,
        ready_interval_ms: int = 500,
        secret_env: Optional[Dict[str, str]] = None,
        published_ports: Optional[List[Dict[str, Optional[int]]]] = None,
    ) -> Dict[str, Any]:
        """Starts a long-running service and waits for its readiness check.

        ``readiness`` is ``{"type": "file", "path"}``, ``{"type": "tcp",
        "address"}``, ``{"type": "http", "url"}`` or ``{"type": "command",
        "command"}``; ``published_ports`` are ``{"guest_port", "host_port"?}``
        (the workspace needs ``network_policy="egress+published-ports"``).
        """
        return self._call(
            "start_service",
            workspace_id=workspace_id,
            service_name=service_name,
            command=_command(command),
            cwd=cwd,
            readiness=readiness,
            ready_timeout_seconds=ready_timeout_seconds,
            ready_interval_ms=ready_interval_ms,
            secret_env=secret_env,
            published_ports=published_ports,
        )

    def list_services(self, workspace_id: str) -> Dict[str, Any]:
        """The workspace's services."""
        return self._call("list_services", workspace_id=workspace_id)

    def status_service(self, workspace_id: str, service_name: str) -> Dict[str, Any]:
        """A service's state, readiness and published ports."""
        return self._call("status_service", workspace_id=workspace_id, service_name=service_name)

    def stop_service(self, workspace_id: str, service_name: str) -> Dict[str, Any]:
        """Stops a service and everything it started."""
        return self._call("stop_service", workspace_id=workspace_id, service_name=service_name)

    def logs_service(
        self, workspace_id: str, service_name: str, *, tail_lines: int = 200, all: bool = False
    ) -> Dict[str, Any]:
        """A service's record with the last ``tail_lines`` of its output (or ``all`` of it)."""
        logs = self._call(
            "logs_service",
            workspace_id=workspace_id,
            service_name=service_name,
            tail_lines=None if all else tail_lines,
        )
        r = self.status_service(workspace_id, service_name)
        r.update(logs)
        return r

    # -- host -----------------------------------------------------------------------

    def doctor(self) -> Dict[str, Any]:
        """What this host can do: accelerator, tools, kernel, caches, protections."""
        return self._call("doctor")


def _command(command: Command) -> Union[str, List[str]]:
    if isinstance(command, str):
        return command
    if isinstance(command, (bytes, bytearray)) or not isinstance(command, Sequence):
        raise InvalidArgumentError(
            "command must be a string (run with /bin/sh -lc) or a list of strings (an argv)"
        )
    words = list(command)
    if not all(isinstance(w, str) for w in words):
        raise InvalidArgumentError("every word of an argv command must be a string")
    return words

