"""What runs on the nodes for pyro_mcp.ray: the workspace actor and the
one-shot run task. Each worker process keeps one :class:`~pyro_mcp.Pyro`,
whose state is the node's own ``PYRO_HOME``."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import stat
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
from pyro_mcp.errors import ConflictError, InternalError, InvalidArgumentError, PyroError

#: The checkpoint's files in its directory.
CHECKPOINT_TAR = "workspace.tar"
CHECKPOINT_JSON = "checkpoint.json"
#: The settings a checkpoint keeps, and their types. Never the network
#: policy (whoever can write the store could grant egress) nor secrets.
KEPT = {
    "environment": str,
    "vcpu_count": int,
    "mem_mib": int,
    "ttl_seconds": int,
    "on_idle": str,
    "name": str,
    "labels": dict,
}
#: The label that ties a workspace to the actor holding it.
ACTOR_LABEL = "ray-actor"
#: The methods of Pyro a handle may call through ``call`` (none takes a host path).
CALLS = frozenset({
    "status_workspace", "update_workspace", "stop_workspace", "start_workspace", "pause_workspace",
    "resume_workspace", "logs_workspace", "exec_workspace", "diff_workspace", "list_workspace_files",
    "read_workspace_file", "write_workspace_file", "apply_workspace_patch", "list_workspace_disk",
    "read_workspace_disk", "create_snapshot", "list_snapshots", "delete_snapshot", "reset_workspace",
    "open_shell", "read_shell", "write_shell", "signal_shell", "close_shell", "start_service",
    "list_services", "status_service", "stop_service", "logs_service",
})

logger = logging.getLogger("pyro_mcp.ray")

#: The watcher of a workspace's actor (argv: the pyro binary, the actor id).
#: Its stdin is a pipe whose other end only the actor holds: it reads as
#: end-of-file once the actor is gone, however it went, and then every
#: workspace labelled with that actor is deleted, unless the actor said
#: ``released`` first. Standard library only, so it stays small.
WATCH = """
import json, subprocess, sys
pyro, actor = sys.argv[1:3]
if sys.stdin.read().strip() == "released":
    sys.exit(0)
out = subprocess.run([pyro, "workspace", "list", "--json"], capture_output=True, text=True)
for w in json.loads(out.stdout or "{}").get("workspaces", []):
    if (w.get("labels") or {}).get("%s") == actor:
        print("pyro workspace %%s: its actor ended; deleting it" %% w["workspace_id"], file=sys.stderr, flush=True)
        subprocess.run([pyro, "workspace", "delete", w["workspace_id"]], stdout=subprocess.DEVNULL)
""" % ACTOR_LABEL

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


def write_tar(path: Path, out: Any) -> None:
    """A tar of ``path`` (a directory's entries, or the file itself) into the
    file object ``out``. A file with several links is written whole each
    time: pyro takes no hard links in."""
    with tarfile.open(fileobj=out, mode="w") as tar:

        def add(p: Path, name: str) -> None:
            info = tar.gettarinfo(str(p), arcname=name)
            if info.islnk():
                info.type, info.linkname, info.size = tarfile.REGTYPE, "", p.lstat().st_size
            if info.isreg():
                with open(p, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
            if info.isdir():
                for child in sorted(p.iterdir()):
                    add(child, f"{name}/{child.name}")

        for child in sorted(path.iterdir()) if path.is_dir() else [path]:
            add(child, child.name)


def _archive_name(data: bytes) -> str:
    """pyro reads an archive by its name: gzip's magic makes it ``.tar.gz``."""
    return "archive.tar.gz" if data[:2] == b"\x1f\x8b" else "archive.tar"


def _regular(path: Path, limit: int) -> Any:
    """``path`` opened for reading if it is a regular file (not through a
    final symlink) of at most ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise InvalidArgumentError(f"{path} is not a readable pyro checkpoint: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
        os.close(fd)
        raise InvalidArgumentError(f"{path} is not a regular file of at most {limit} bytes")
    return os.fdopen(fd, "rb")


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _WorkspaceActor:
    """One workspace on the node Ray placed this actor on."""

    def __init__(self) -> None:
        self._id: Optional[str] = None
        self._pyro = _pyro()
        self._actor_id = ray.get_runtime_context().get_actor_id() or ""
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        self._watcher = self._watch()

    def __repr__(self) -> str:
        return f"PyroWorkspace({self._id or 'new'})"

    def _log(self, message: str) -> None:
        logger.info("pyro workspace %s: %s", self._id, message)

    def _watch(self) -> "subprocess.Popen[bytes]":
        """Ties every workspace this actor makes to its process, from before
        the first one exists (see ``WATCH``)."""
        env = dict(os.environ, PYRO_HOME=str(self._pyro.manager.base_dir))
        # Started through a shell that exits at once, so that it is not this
        # worker's child: Ray ends a worker's children with the worker.
        detach = 'exec 3<&0; "$0" "$@" <&3 3<&- & exit 0'
        watcher = subprocess.Popen(
            ["/bin/sh", "-c", detach, sys.executable, "-I", "-c", WATCH, str(binary()), self._actor_id],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, start_new_session=True,
        )
        watcher.wait()
        return watcher

    def _release(self) -> None:
        try:
            if self._watcher.stdin is not None and not self._watcher.stdin.closed:
                self._watcher.stdin.write(b"released\n")
                self._watcher.stdin.close()
        except OSError as e:
            logger.warning("pyro workspace %s: its watcher is gone: %s", self._id, e)

    def create(self, args: Dict[str, Any], seed: Optional[bytes]) -> Dict[str, Any]:
        with _Scratch() as tmp:
            if seed is not None:
                path = tmp / _archive_name(seed)
                path.write_bytes(seed)
                args = dict(args, seed_path=path)
            return self._create(args)

    def _create(self, args: Dict[str, Any]) -> Dict[str, Any]:
        args = dict(args, labels={**(args.get("labels") or {}), ACTOR_LABEL: self._actor_id})
        r = self._pyro.create_workspace(**args)
        self._id = r["workspace_id"]
        node = where()
        self._log(f"created on node {node['node_ip']} ({node['node_id']}) in {self._pyro.manager.base_dir}")
        r.update(node)
        return r

    def restore(self, checkpoint: str, overrides: Dict[str, Any]) -> Dict[str, Any]:
        path = Path(checkpoint)
        with _regular(path / CHECKPOINT_JSON, 1 << 20) as f:
            try:
                kept = json.loads(f.read())
                settings = {k: kept["settings"][k] for k in KEPT if kept["settings"].get(k) is not None}
                source = str(kept["workspace_id"])
            except (ValueError, KeyError, TypeError) as e:
                raise InvalidArgumentError(f"{path} is not a pyro checkpoint: {e}") from None
        for k, v in settings.items():
            if not isinstance(v, KEPT[k]):
                raise InvalidArgumentError(f"{path}: setting {k} is not a {KEPT[k].__name__}")
        settings.get("labels", {}).pop(ACTOR_LABEL, None)
        args = {**settings, **overrides}
        with _Scratch() as tmp, _regular(path / CHECKPOINT_TAR, 1 << 62) as f:
            with open(tmp / "seed.tar", "wb") as out:
                shutil.copyfileobj(f, out, 1 << 20)
            r = self._create(dict(args, seed_path=tmp / "seed.tar"))
        self._log(f"restored from checkpoint {path} of workspace {source}")
        r["restored_from"] = source
        return r

    def call(self, method: str, args: List[Any], kwargs: Dict[str, Any]) -> Any:
        if method not in CALLS:
            raise InvalidArgumentError(f"{method} is not a method of a RayWorkspace")
        if ACTOR_LABEL in (kwargs.get("clear_labels") or []) or ACTOR_LABEL in (kwargs.get("labels") or {}):
            raise InvalidArgumentError(f"the label {ACTOR_LABEL} ties the workspace to its actor; it stays")
        self._log(method)
        r = getattr(self._pyro, method)(self._id, *args, **kwargs)
        if isinstance(r, dict):
            r.update(where())
        return r

    def push(self, archive: bytes, dest: str) -> Dict[str, Any]:
        self._log(f"push_workspace_sync to {dest}")
        with _Scratch() as tmp:
            path = tmp / _archive_name(archive)
            path.write_bytes(archive)
            r = self._pyro.push_workspace_sync(self._id or "", path, dest=dest)
        return {**r, **where()}

    def export(self, path: str) -> Dict[str, Any]:
        self._log(f"export_workspace {path}")
        with _Scratch() as tmp:
            out = tmp / "out"
            r = self._pyro.export_workspace(self._id or "", path, output_path=out)
            buf = io.BytesIO()
            write_tar(out, buf)
            r["archive"] = buf.getvalue()
        r["output_path"] = None
        return {**r, **where()}

    def checkpoint(self, directory: str) -> Dict[str, Any]:
        assert self._id is not None
        status = self._pyro.status_workspace(self._id)
        root = Path(directory)
        dest = root / self._id
        if dest.exists():
            raise ConflictError(f"{dest} exists already")
        try:
            root.mkdir(parents=True, exist_ok=True)
            partial = Path(tempfile.mkdtemp(prefix=f".{self._id}.", suffix=".partial", dir=root))
        except OSError as e:
            raise InternalError(f"cannot write a checkpoint in {root}: {e}") from None
        try:
            with _Scratch() as tmp:
                out = tmp / "out"
                exported = self._pyro.export_workspace(self._id, "/workspace", output_path=out)
                with open(os.open(partial / CHECKPOINT_TAR, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                    write_tar(out, f)
                    os.fsync(f.fileno())
            record = {
                "workspace_id": self._id,
                "settings": {k: status.get(k) for k in KEPT},
                "skipped": exported.get("skipped", []),
                **where(),
            }
            with open(os.open(partial / CHECKPOINT_JSON, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                json.dump(record, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            _sync_dir(partial)
            os.rename(partial, dest)
            _sync_dir(root)
        except OSError as e:
            shutil.rmtree(partial, ignore_errors=True)
            if dest.exists():
                raise ConflictError(f"{dest} exists already") from None
            raise InternalError(f"cannot write the checkpoint {dest}: {e}") from None
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        self._log(f"checkpointed to {dest}")
        return {"workspace_id": self._id, "path": str(dest), "skipped": record["skipped"], **where()}

    @ray.method(concurrency_group="control")
    def ping(self) -> Dict[str, str]:
        return where()

    def delete(self) -> Dict[str, Any]:
        self._log("delete_workspace")
        r = self._pyro.delete_workspace(self._id or "")
        self._release()
        self._id = None
        return {**r, **where()}

    def __ray_shutdown__(self) -> None:
        # The actor ends gracefully (every handle gone, its owner gone): the
        # workspace goes with it. A forced end leaves it to the watcher.
        if self._id is not None:
            try:
                self.delete()
            except PyroError as e:
                logger.warning("pyro workspace %s was not deleted: %s", self._id, e)


# A ping has a thread of its own, so sixteen long calls cannot hold it up.
Actor = ray.remote(concurrency_groups={"control": 1})(_WorkspaceActor)  # type: ignore[call-overload]


@ray.remote
def run(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    r = _pyro().run_in_vm(**kwargs)
    r.update(where())
    return r
