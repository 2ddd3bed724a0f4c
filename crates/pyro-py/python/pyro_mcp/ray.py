"""pyro on a Ray cluster: workspaces as actors, one-shot runs as tasks.

Ray places them; pyro does not schedule. Every node that may run guests
advertises the custom resource ``pyro_slots`` (``ray start --resources
"$(python -m pyro_mcp.ray resources)"``); a workspace's actor holds its
slots for as long as it lives and a one-shot run holds them while it runs,
so no node ever runs more than it advertised and a request waits while the
cluster is full.

>>> import ray
>>> from pyro_mcp.ray import RayWorkspace, run_in_vm
>>> ray.init()
>>> ws = RayWorkspace.create(environment="debian:12", seed=b"...tar...")
>>> ws.exec_workspace(command="make test")["exit_code"]
>>> run_in_vm(environment="debian:12", command="git --version")["stdout"]

A :class:`RayWorkspace` is a plain picklable handle: pass it to any task or
actor and call it there. Its methods are :class:`~pyro_mcp.Pyro`'s, named
the same and returning the same dicts, with the workspace id implied. What
would be a host path on another machine is bytes here: seeds and pushes
take a tar archive (or a path on the caller's side, packed there), exports
come back as a tar archive and are written on the caller's side.

Failures: a call whose actor died (its node was lost, its process was
killed) raises :class:`~pyro_mcp.errors.WorkspaceLostError`; a call with no
answer within its bound raises :class:`~pyro_mcp.errors.UnavailableError`;
pyro's own errors arrive as the same exception classes as from ``Pyro``.
:meth:`RayWorkspace.checkpoint` writes the workspace's files and settings
to storage every node can read, and :meth:`RayWorkspace.restore` makes a
new workspace from it on whichever node Ray picks.
"""

from __future__ import annotations

import inspect
import io
import json
import math
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

try:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError("pyro_mcp.ray needs Ray: pip install 'pyro-mcp[ray]'") from e

from pyro_mcp._ray_node import Actor, run, write_tar
from pyro_mcp._sdk import Command, Pyro
from pyro_mcp.errors import (
    ConflictError,
    InternalError,
    InvalidArgumentError,
    PyroError,
    UnavailableError,
    WorkspaceLostError,
)

__all__ = [
    "RESOURCE",
    "RayWorkspace",
    "node_resources",
    "run_in_vm",
    "submit_run_in_vm",
]

#: The custom resource a node advertises: how many default-sized guests it may run.
RESOURCE = "pyro_slots"
#: Extra time a call is given beyond its own timeout before it counts as unanswered.
_GRACE_SECONDS = 60
#: How long a cut connection may take to turn out as a dead actor or a live one.
_SETTLE_SECONDS = 45
#: What a default guest takes (guest memory and QEMU's share): one slot.
_DEFAULT_MEM_MIB: int = inspect.signature(Pyro.create_workspace).parameters["mem_mib"].default
_OVERHEAD_MIB = 128
_SLOT_MIB = _DEFAULT_MEM_MIB + _OVERHEAD_MIB

Source = Union[bytes, str, "os.PathLike[str]"]


def node_resources(slots: Optional[int] = None) -> Dict[str, float]:
    """The resources this node should advertise to Ray.

    ``slots`` defaults to what pyro's admission lets run at once: the
    guest memory limit (``$PYRO_MAX_GUEST_MEMORY_MIB``, or three quarters
    of the host's) over a default guest (its default memory plus 128 MiB for QEMU),
    and at most ``$PYRO_MAX_RUNNING_VMS`` if that is set. A guest asks for
    as many slots as its memory fills.
    """
    if slots is None:
        mem = os.environ.get("PYRO_MAX_GUEST_MEMORY_MIB")
        if mem:
            mib = int(mem)
        else:
            with open("/proc/meminfo") as f:
                kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
            mib = kib // 1024 * 3 // 4
        slots = mib // _SLOT_MIB
        limit = os.environ.get("PYRO_MAX_RUNNING_VMS")
        if limit:
            slots = min(slots, int(limit))
    if slots < 1:
        raise InvalidArgumentError(f"a pyro node needs at least one slot, not {slots}")
    return {RESOURCE: float(slots)}


def _pack(source: Source) -> bytes:
    """A tar archive of bytes, a directory, or a tar file on this side."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    path = Path(os.fspath(source))
    if path.is_file():
        return path.read_bytes()
    if not path.is_dir():
        raise InvalidArgumentError(f"{path} is not a directory or a tar archive")
    buf = io.BytesIO()
    write_tar(path, buf)
    return buf.getvalue()


def _node_args(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Creation arguments as they go to a node: no host path of this side
    or of the node. A secret's ``file_path`` is read here, on the caller's
    side, and sent as its value."""
    if "seed_path" in kwargs:
        raise InvalidArgumentError("a RayWorkspace takes seed= (bytes, or a directory or archive on this side)")
    secrets = kwargs.get("secrets")
    if secrets:
        sent = []
        for secret in secrets:
            secret = dict(secret)
            if "file_path" in secret:
                secret["value"] = Path(os.fspath(secret.pop("file_path"))).read_text()
            sent.append(secret)
        kwargs = dict(kwargs, secrets=sent)
    return kwargs


def _absolute(directory: Union[str, "os.PathLike[str]"]) -> str:
    path = os.fspath(directory)
    if not os.path.isabs(path):
        raise InvalidArgumentError(f"a checkpoint directory is read on other nodes: give an absolute path, not {path!r}")
    return path


def _placement(slots: Optional[float], args: Dict[str, Any], node_id: Optional[str]) -> Dict[str, Any]:
    """Ray options for a guest made with ``args``: ``slots``, or as many as its memory fills."""
    if slots is None:
        slots = float(max(1, math.ceil((args.get("mem_mib", _DEFAULT_MEM_MIB) + _OVERHEAD_MIB) / _SLOT_MIB)))
    if slots <= 0:
        raise InvalidArgumentError(f"slots must be positive, not {slots}")
    options: Dict[str, Any] = {"num_cpus": 0, "resources": {RESOURCE: slots}}
    if node_id is not None:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=False)
    return options


def _new_actor(placement: Dict[str, Any]) -> Any:
    """A workspace's actor, placed; 16 calls at once (a shell read need not wait behind an exec)."""
    return Actor.options(max_concurrency=16, **placement).remote()


def _unwrap(e: BaseException) -> BaseException:
    """pyro's own exception out of Ray's wrapper, unchanged otherwise."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, PyroError) else e


def submit_run_in_vm(
    *, slots: Optional[float] = None, node_id: Optional[str] = None, max_retries: int = 3, **kwargs: Any
) -> "ray.ObjectRef[Dict[str, Any]]":
    """Starts :meth:`Pyro.run_in_vm` as a Ray task on a node with ``slots`` free; its result's ref.

    ``kwargs`` are ``run_in_vm``'s; ``slots`` defaults to what ``mem_mib``
    fills. The result also has ``node_id`` and ``node_ip``. A run whose node or worker dies is run again elsewhere,
    up to ``max_retries`` times (Ray's default; 0 for commands that must
    not run twice). A command that fails is a result, never retried.
    """
    placement = _placement(slots, kwargs, node_id)
    return run.options(max_retries=max_retries, **placement).remote(kwargs)


def run_in_vm(
    *,
    environment: str,
    command: Command,
    slots: Optional[float] = None,
    node_id: Optional[str] = None,
    max_retries: int = 3,
    **kwargs: Any,
) -> Dict[str, Any]:
    """:meth:`Pyro.run_in_vm` as a Ray task: waits for a free slot, runs, returns its result."""
    ref = submit_run_in_vm(
        slots=slots, node_id=node_id, max_retries=max_retries, environment=environment, command=command, **kwargs
    )
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        raise _unwrap(e) from None
    except ray.exceptions.RayError as e:
        raise UnavailableError(f"the run was lost with its worker or node, {max_retries} retries included: {_first_line(e)}") from e


class RayWorkspace:
    """A workspace on some node of a Ray cluster, held by its actor.

    Made by :meth:`create` or :meth:`restore`; ``workspace_id``,
    ``node_id`` and ``node_ip`` say what and where it is. Published ports
    listen on that node's loopback: reach them from a task placed with
    :meth:`scheduling_strategy`. The workspace lives as long as its actor:
    :meth:`delete_workspace` ends both, and when the last handle is
    dropped Ray ends the actor, which deletes the workspace.
    """

    def __init__(self, actor: Any, created: Dict[str, Any], call_timeout: float) -> None:
        self._actor = actor
        self.created = created
        self.workspace_id: str = created["workspace_id"]
        self.node_id: str = created["node_id"]
        self.node_ip: str = created["node_ip"]
        self.call_timeout = call_timeout

    def __repr__(self) -> str:
        return f"RayWorkspace({self.workspace_id} on {self.node_ip})"

    @classmethod
    def create(
        cls,
        *,
        environment: str,
        seed: Optional[Source] = None,
        slots: Optional[float] = None,
        node_id: Optional[str] = None,
        timeout: Optional[float] = None,
        call_timeout: float = 600,
        **kwargs: Any,
    ) -> "RayWorkspace":
        """Places a workspace's actor on a node with ``slots`` free and creates the workspace there.

        ``seed`` is a tar archive's bytes, or a directory or tar archive on
        the caller's side (packed here and sent through Ray's object store).
        ``kwargs`` are :meth:`Pyro.create_workspace`'s (a secret's
        ``file_path`` is read on this side); ``slots`` defaults to what
        ``mem_mib`` fills. Waits for free slots; ``timeout`` bounds that wait
        and the creation.
        """
        args = dict(_node_args(kwargs), environment=environment)
        actor = _new_actor(_placement(slots, kwargs, node_id))
        data = None if seed is None else ray.put(_pack(seed))
        return cls._start(actor, actor.create.remote(args, data), timeout, call_timeout)

    @classmethod
    def restore(
        cls,
        checkpoint: Union[str, "os.PathLike[str]"],
        *,
        slots: Optional[float] = None,
        node_id: Optional[str] = None,
        timeout: Optional[float] = None,
        call_timeout: float = 600,
        **overrides: Any,
    ) -> "RayWorkspace":
        """A new workspace from a checkpoint directory, on whichever node Ray places it.

        The directory is read on that node, so it must be on storage every
        node sees. ``overrides`` replace the kept settings and give what a
        checkpoint never holds: ``secrets``, and ``network_policy`` (a
        restored workspace has no network unless it is given). ``slots``
        defaults to what ``mem_mib`` fills, if it is given, else one.
        """
        actor = _new_actor(_placement(slots, overrides, node_id))
        ref = actor.restore.remote(_absolute(checkpoint), _node_args(overrides))
        return cls._start(actor, ref, timeout, call_timeout)

    @classmethod
    def _start(cls, actor: Any, ref: Any, timeout: Optional[float], call_timeout: float) -> "RayWorkspace":
        try:
            created = ray.get(ref, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            ray.kill(actor)
            raise UnavailableError(
                f"no workspace within {timeout} s: no node had {RESOURCE} free, or creating it took longer"
            ) from None
        except ray.exceptions.RayTaskError as e:
            ray.kill(actor)
            raise _unwrap(e) from None
        except ray.exceptions.RayActorError as e:
            raise WorkspaceLostError(f"the new workspace's actor died: {_first_line(e)}") from e
        return cls(actor, created, call_timeout)

    def scheduling_strategy(self) -> NodeAffinitySchedulingStrategy:
        """Places a task or actor on this workspace's node (``.options(scheduling_strategy=...)``)."""
        return NodeAffinitySchedulingStrategy(self.node_id, soft=False)

    def _get(self, ref: Any, what: str, timeout: float) -> Any:
        try:
            return ray.get(ref, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise UnavailableError(
                f"workspace {self.workspace_id} on node {self.node_ip} did not answer {what} within {timeout:.0f} s"
            ) from None
        except ray.exceptions.RayTaskError as e:
            raise _unwrap(e) from None
        except ray.exceptions.ActorUnavailableError as e:
            # The connection was cut: either the actor is gone (its node or
            # process died, which Ray settles within seconds) or it is back.
            raise self._after_cut(what, e) from e
        except ray.exceptions.RayActorError as e:
            raise self._lost(what, e) from e

    def _lost(self, what: str, e: BaseException) -> WorkspaceLostError:
        return WorkspaceLostError(
            f"workspace {self.workspace_id} on node {self.node_ip} ({self.node_id}) is lost during "
            f"{what}: {_first_line(e)}"
        )

    def _after_cut(self, what: str, cut: BaseException) -> PyroError:
        deadline = time.monotonic() + _SETTLE_SECONDS
        while True:
            try:
                ray.get(self._actor.ping.remote(), timeout=max(1.0, deadline - time.monotonic()))
            except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
                if time.monotonic() < deadline:
                    time.sleep(1)
                    continue
                return UnavailableError(
                    f"workspace {self.workspace_id} on node {self.node_ip} has not answered for "
                    f"{_SETTLE_SECONDS} s since the connection was cut during {what}; it may be lost"
                )
            except ray.exceptions.RayActorError as e:
                return self._lost(what, e)
            return UnavailableError(
                f"the connection to workspace {self.workspace_id} on node {self.node_ip} was cut during "
                f"{what}, which may or may not have run; the workspace is still there"
            )

    def _call(self, method: str, *args: Any, timeout: Optional[float] = None, **kwargs: Any) -> Dict[str, Any]:
        ref = self._actor.call.remote(method, list(args), kwargs)
        return self._get(ref, method, timeout or self.call_timeout)  # type: ignore[no-any-return]

    # -- Pyro's workspace methods, this workspace's id implied -----------------

    def status_workspace(self) -> Dict[str, Any]:
        return self._call("status_workspace")

    def update_workspace(self, **kwargs: Any) -> Dict[str, Any]:
        return self._call("update_workspace", **kwargs)

    def stop_workspace(self) -> Dict[str, Any]:
        return self._call("stop_workspace")

    def start_workspace(self) -> Dict[str, Any]:
        return self._call("start_workspace")

    def pause_workspace(self) -> Dict[str, Any]:
        return self._call("pause_workspace")

    def resume_workspace(self) -> Dict[str, Any]:
        return self._call("resume_workspace")

    def logs_workspace(self) -> Dict[str, Any]:
        return self._call("logs_workspace")

    def exec_workspace(self, *, command: Command, timeout_seconds: int = 30, **kwargs: Any) -> Dict[str, Any]:
        return self._call(
            "exec_workspace",
            command=command,
            timeout_seconds=timeout_seconds,
            timeout=timeout_seconds + _GRACE_SECONDS,
            **kwargs,
        )

    def push_workspace_sync(self, source: Source, *, dest: str = "/workspace") -> Dict[str, Any]:
        """Copies a tar archive (bytes) or a caller-side directory or tar file into the workspace."""
        ref = self._actor.push.remote(ray.put(_pack(source)), dest)
        return self._get(ref, "push_workspace_sync", self.call_timeout)  # type: ignore[no-any-return]

    def export_workspace(
        self, path: str, *, output_path: Optional[Union[str, "os.PathLike[str]"]] = None, force: bool = False
    ) -> Dict[str, Any]:
        """Copies ``path`` out of the workspace to the caller: ``archive`` is a tar of it.

        With ``output_path`` it is also written there, on the caller's side,
        as a file or a directory, the way :meth:`Pyro.export_workspace` does.
        """
        r: Dict[str, Any] = self._get(self._actor.export.remote(path), "export_workspace", self.call_timeout)
        if output_path is not None:
            _unpack(r["archive"], Path(os.fspath(output_path)), r["artifact_type"] == "directory", force)
            r["output_path"] = os.fspath(output_path)
        return r

    def diff_workspace(self) -> Dict[str, Any]:
        return self._call("diff_workspace")

    def list_workspace_files(self, **kwargs: Any) -> Dict[str, Any]:
        return self._call("list_workspace_files", **kwargs)

    def read_workspace_file(self, path: str, **kwargs: Any) -> Dict[str, Any]:
        return self._call("read_workspace_file", path, **kwargs)

    def write_workspace_file(self, path: str, *, text: str) -> Dict[str, Any]:
        return self._call("write_workspace_file", path, text=text)

    def apply_workspace_patch(self, *, patch: str) -> Dict[str, Any]:
        return self._call("apply_workspace_patch", patch=patch)

    def list_workspace_disk(self, **kwargs: Any) -> Dict[str, Any]:
        return self._call("list_workspace_disk", **kwargs)

    def read_workspace_disk(self, path: str, **kwargs: Any) -> Dict[str, Any]:
        return self._call("read_workspace_disk", path, **kwargs)

    def create_snapshot(self, snapshot_name: str) -> Dict[str, Any]:
        return self._call("create_snapshot", snapshot_name)

    def list_snapshots(self) -> Dict[str, Any]:
        return self._call("list_snapshots")

    def delete_snapshot(self, snapshot_name: str) -> Dict[str, Any]:
        return self._call("delete_snapshot", snapshot_name)

    def reset_workspace(self, *, snapshot: str = "baseline") -> Dict[str, Any]:
        return self._call("reset_workspace", snapshot=snapshot)

    def open_shell(self, **kwargs: Any) -> Dict[str, Any]:
        return self._call("open_shell", **kwargs)

    def read_shell(self, shell_id: str, **kwargs: Any) -> Dict[str, Any]:
        wait = float(kwargs.get("wait_for_idle_ms") or 0) / 1000
        return self._call("read_shell", shell_id, timeout=self.call_timeout + wait, **kwargs)

    def write_shell(self, shell_id: str, **kwargs: Any) -> Dict[str, Any]:
        return self._call("write_shell", shell_id, **kwargs)

    def signal_shell(self, shell_id: str, **kwargs: Any) -> Dict[str, Any]:
        return self._call("signal_shell", shell_id, **kwargs)

    def close_shell(self, shell_id: str) -> Dict[str, Any]:
        return self._call("close_shell", shell_id)

    def start_service(self, service_name: str, *, command: Command, **kwargs: Any) -> Dict[str, Any]:
        """Pyro's ``start_service``; its published ports listen on ``node_ip``'s node, at 127.0.0.1."""
        ready = float(kwargs.get("ready_timeout_seconds") or 30)
        return self._call(
            "start_service", service_name, command=command, timeout=ready + _GRACE_SECONDS, **kwargs
        )

    def list_services(self) -> Dict[str, Any]:
        return self._call("list_services")

    def status_service(self, service_name: str) -> Dict[str, Any]:
        return self._call("status_service", service_name)

    def stop_service(self, service_name: str) -> Dict[str, Any]:
        return self._call("stop_service", service_name)

    def logs_service(self, service_name: str, **kwargs: Any) -> Dict[str, Any]:
        return self._call("logs_service", service_name, **kwargs)

    # -- the cluster's own -------------------------------------------------------

    def checkpoint(self, directory: Union[str, "os.PathLike[str]"]) -> Dict[str, Any]:
        """Writes ``/workspace`` and the workspace's settings to ``directory/<workspace_id>``.

        ``directory`` is written on the workspace's node and read by
        :meth:`restore` on another, so it must be storage they share (a
        network filesystem, or a bucket mounted as one). Memory, processes
        and files outside ``/workspace`` are not kept, nor secrets' values.
        """
        ref = self._actor.checkpoint.remote(_absolute(directory))
        return self._get(ref, "checkpoint", self.call_timeout)  # type: ignore[no-any-return]

    def delete_workspace(self) -> Dict[str, Any]:
        """Deletes the workspace and ends its actor, freeing its slots."""
        r: Dict[str, Any] = self._get(self._actor.delete.remote(), "delete_workspace", self.call_timeout)
        ray.kill(self._actor)
        r.setdefault("reason", "explicit_delete")
        return r


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    for word in ("because", "node", "died"):
        found = [line for line in lines if word in line.lower()]
        if found:
            return found[0]
    return lines[0] if lines else type(e).__name__


def _unpack(archive: bytes, out: Path, directory: bool, force: bool) -> None:
    """Writes an export on this side, as ``Pyro.export_workspace`` would: a
    directory as ``out`` (its contents), a file or symlink as ``out``; built
    beside ``out`` and renamed into place, replacing it only with ``force``."""
    if not hasattr(tarfile, "data_filter"):
        raise UnavailableError(
            "writing an export here needs tarfile's extraction filters "
            "(Python 3.9.17, 3.10.12, 3.11.4, 3.12 or later); use the result's archive"
        )
    if (out.exists() or out.is_symlink()) and not force:
        raise ConflictError(f"{out} exists; pass force=True to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        entries = list(tmp.iterdir())
        if not directory and len(entries) != 1:
            raise InternalError(f"the export held {len(entries)} entries, not one")
        made = tmp if directory else entries[0]
        if directory:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out)
        elif out.exists() or out.is_symlink():
            out.unlink()
        os.rename(made, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _main(argv: List[str]) -> int:
    if argv[:1] != ["resources"] or len(argv) > 2:
        print("usage: python -m pyro_mcp.ray resources [SLOTS]", file=sys.stderr)
        return 2
    try:
        print(json.dumps(node_resources(int(argv[1]) if len(argv) == 2 else None)))
    except (ValueError, OSError) as e:
        print(f"pyro_mcp.ray: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
