"""What runs on the nodes for pyro_mcp.ray: the workspace actor and the
one-shot run task. Each worker process keeps one :class:`~pyro_mcp.Pyro`,
whose state is the node's own ``PYRO_HOME``."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional

import ray

from pyro_mcp._sdk import Pyro
from pyro_mcp.cli import binary
from pyro_mcp.errors import InvalidArgumentError, PyroError

#: The checkpoint's files in its directory.
CHECKPOINT_TAR = "workspace.tar"
CHECKPOINT_JSON = "checkpoint.json"
#: The settings a checkpoint keeps (secrets' values never leave their node).
KEPT = ("environment", "vcpu_count", "mem_mib", "ttl_seconds", "network_policy", "name", "labels")

logger = logging.getLogger("pyro_mcp.ray")

#: The watcher of a workspace's actor ($0 the pyro binary, $1 the id): its
#: stdin is the actor's pipe, which reads as end-of-file once the actor is
#: gone for any reason.
WATCH = (
    'IFS= read -r said; [ "$said" = released ] && exit 0; '
    'echo "pyro workspace $1: its actor ended; deleting it" >&2; exec "$0" workspace delete "$1"'
)

_local_lock = threading.Lock()
_local_pyro: Optional[Pyro] = None


def _pyro() -> Pyro:
    """This worker process's client (its node's ``PYRO_HOME``)."""
    global _local_pyro
    with _local_lock:
        if _local_pyro is None:
            _local_pyro = Pyro()
        return _local_pyro


def where() -> Dict[str, str]:
    """This node's id and address."""
    ctx = ray.get_runtime_context()
    ip: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    return {"node_id": ctx.get_node_id(), "node_ip": ip}


class _Scratch:
    """A private directory on the node for one call's files."""

    def __enter__(self) -> Path:
        self._dir = tempfile.TemporaryDirectory(prefix="pyro-ray-")
        return Path(self._dir.name)

    def __exit__(self, *exc: object) -> None:
        self._dir.cleanup()


def _tar_of(path: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if path.is_dir():
            for child in sorted(path.iterdir()):
                tar.add(child, arcname=child.name)
        else:
            tar.add(path, arcname=path.name)
    return buf.getvalue()


class _WorkspaceActor:
    """One workspace on the node Ray placed this actor on."""

    def __init__(self) -> None:
        self._id: Optional[str] = None
        self._watcher: Optional["subprocess.Popen[bytes]"] = None
        self._pyro = _pyro()
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)

    def __repr__(self) -> str:
        # Ray prefixes the actor's log lines with this.
        return f"PyroWorkspace({self._id or 'new'})"

    def _log(self, message: str) -> None:
        logger.info("pyro workspace %s: %s", self._id, message)

    def create(self, args: Dict[str, Any], seed: Optional[bytes]) -> Dict[str, Any]:
        with _Scratch() as tmp:
            if seed is not None:
                (tmp / "seed.tar").write_bytes(seed)
                args = dict(args, seed_path=tmp / "seed.tar")
            r = self._pyro.create_workspace(**args)
        self._id = r["workspace_id"]
        self._watch()
        node = where()
        self._log(f"created on node {node['node_ip']} ({node['node_id']}) in {self._pyro.manager.base_dir}")
        r.update(node)
        return r

    def _watch(self) -> None:
        """Ties the workspace to this process: when it ends, however it
        ends (its owner gone, killed, its node's raylet dead), a small
        shell holding the other end of a pipe deletes the workspace, unless
        it was told ``released`` first."""
        env = dict(os.environ, PYRO_HOME=str(self._pyro.manager.base_dir))
        # Started through a shell that exits at once, so that it is not this
        # worker's child: Ray ends a worker's children with the worker.
        self._watcher = subprocess.Popen(
            ["/bin/sh", "-c", 'exec 3<&0; /bin/sh -c "$0" "$@" <&3 3<&- & exit 0', WATCH, str(binary()), self._id or ""],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, start_new_session=True,
        )
        self._watcher.wait()

    def _release(self) -> None:
        if self._watcher is not None and self._watcher.stdin is not None:
            self._watcher.stdin.write(b"released\n")
            self._watcher.stdin.close()
            self._watcher = None

    def restore(self, checkpoint: str, overrides: Dict[str, Any]) -> Dict[str, Any]:
        path = Path(checkpoint)
        try:
            kept = json.loads((path / CHECKPOINT_JSON).read_text())
            tar = (path / CHECKPOINT_TAR).read_bytes()
        except (OSError, ValueError) as e:
            raise InvalidArgumentError(f"{path} is not a readable pyro checkpoint: {e}") from None
        args = {k: kept["settings"][k] for k in KEPT if k in kept["settings"]}
        args.update(overrides)
        r = self.create(args, tar)
        self._log(f"restored from checkpoint {path} of workspace {kept['workspace_id']}")
        r["restored_from"] = kept["workspace_id"]
        return r

    def call(self, method: str, args: List[Any], kwargs: Dict[str, Any]) -> Any:
        self._log(method)
        r = getattr(self._pyro, method)(self._id, *args, **kwargs)
        if isinstance(r, dict):
            r.update(where())
        return r

    def push(self, archive: bytes, dest: str) -> Dict[str, Any]:
        self._log(f"push_workspace_sync to {dest}")
        with _Scratch() as tmp:
            (tmp / "push.tar").write_bytes(archive)
            return self._pyro.push_workspace_sync(self._id or "", tmp / "push.tar", dest=dest)

    def export(self, path: str) -> Dict[str, Any]:
        self._log(f"export_workspace {path}")
        with _Scratch() as tmp:
            out = tmp / "out"
            r = self._pyro.export_workspace(self._id or "", path, output_path=out)
            r["archive"] = _tar_of(out)
        r["output_path"] = None
        return r

    def checkpoint(self, directory: str) -> Dict[str, Any]:
        assert self._id is not None
        status = self._pyro.status_workspace(self._id)
        dest = Path(directory) / self._id
        partial = Path(directory) / f".{self._id}.partial"
        if dest.exists():
            raise InvalidArgumentError(f"{dest} exists already")
        partial.mkdir(parents=True)
        try:
            with _Scratch() as tmp:
                out = tmp / "out"
                self._pyro.export_workspace(self._id, "/workspace", output_path=out)
                (partial / CHECKPOINT_TAR).write_bytes(_tar_of(out))
            record = {"workspace_id": self._id, "settings": {k: status.get(k) for k in KEPT}, **where()}
            (partial / CHECKPOINT_JSON).write_text(json.dumps(record, indent=2))
            partial.rename(dest)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        self._log(f"checkpointed to {dest}")
        return {"workspace_id": self._id, "path": str(dest), **where()}

    def ping(self) -> Dict[str, str]:
        return where()

    def delete(self) -> Dict[str, Any]:
        self._log("delete_workspace")
        r = self._pyro.delete_workspace(self._id or "")
        self._release()
        self._id = None
        return r

    def __ray_shutdown__(self) -> None:
        # Every handle is gone: the workspace goes with its actor.
        if self._id is not None:
            try:
                self.delete()
            except PyroError as e:
                logger.warning("pyro workspace %s was not deleted: %s", self._id, e)


Actor = ray.remote(_WorkspaceActor)


@ray.remote
def run(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    r = _pyro().run_in_vm(**kwargs)
    r.update(where())
    return r
