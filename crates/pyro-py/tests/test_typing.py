"""The package's type hints: mypy --strict accepts the package and typed
user code, rejects a wrong call, and AsyncPyro's stub matches Pyro."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT

MYPY = [sys.executable, "-m", "mypy", "--strict", "--no-incremental"]

GOOD = '''
import asyncio
from typing import Any, Dict
from pyro_mcp import AsyncPyro, Pyro, create_server, errors

def run(p: Pyro) -> str:
    r: Dict[str, Any] = p.run_in_vm(environment="debian:12", command=["git", "--version"], timeout_seconds=5)
    ws = p.create_workspace(environment="debian:12", labels={"a": "b"})
    p.exec_workspace(ws["workspace_id"], command="true", secret_env={"T": "T"})
    return str(r["stdout"])

async def arun(p: AsyncPyro) -> int:
    r = await p.exec_workspace("id", command="true")
    return int(r["exit_code"])

def serve() -> None:
    create_server(profile="workspace-core").run()

try:
    run(Pyro(max_active_vms=2))
except errors.NotFoundError:
    pass
'''

BAD = '''
from pyro_mcp import AsyncPyro, Pyro
Pyro().run_in_vm(environment="debian:12", command="true", vcpu_count="two")
Pyro().exec_workspace("id", "true")
async def f() -> None:
    await AsyncPyro().read_shell("w", "s", cursor="0")
'''


def test_the_package_and_its_users_type_check(tmp_path: Path) -> None:
    out = subprocess.run([*MYPY, "-p", "pyro_mcp"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
    good = tmp_path / "good.py"
    good.write_text(GOOD)
    out = subprocess.run([*MYPY, str(good)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
    bad = tmp_path / "bad.py"
    bad.write_text(BAD)
    out = subprocess.run([*MYPY, str(bad)], capture_output=True, text=True)
    assert out.returncode == 1, out.stdout
    assert 'Argument "vcpu_count" to "run_in_vm" of "Pyro" has incompatible type "str"' in out.stdout, out.stdout
    assert 'Too many positional arguments for "exec_workspace"' in out.stdout, out.stdout
    assert 'Argument "cursor" to "read_shell" of "AsyncPyro"' in out.stdout, out.stdout


def test_the_async_stub_matches_pyro() -> None:
    stubgen = ROOT / "crates" / "pyro-py" / "stubgen_async.py"
    out = subprocess.run([sys.executable, str(stubgen), "--check"])
    assert out.returncode == 0, "python/pyro_mcp/_async.pyi is stale: run crates/pyro-py/stubgen_async.py"
