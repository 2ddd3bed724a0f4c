"""The wheel as users install it: a fresh venv with no Rust toolchain,
``uvx --from <wheel>``, and the MCP server started from Python, each
answered by the official MCP client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path
from typing import Dict, List

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from conftest import no_rust_path, venv_bin

WHEEL = Path(os.environ.get("PYRO_TEST_WHEEL", ""))

pytestmark = pytest.mark.skipif(not WHEEL.is_file(), reason="PYRO_TEST_WHEEL names no wheel")


def test_a_fresh_venv_without_rust_runs_the_one_liner(tmp_path: Path, child_env: Dict[str, str]) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    pip = env_dir / "bin" / "pip"
    subprocess.run([str(pip), "install", "--quiet", "--no-index", str(WHEEL)], check=True)
    child_env["PATH"] = no_rust_path(env_dir / "bin")
    one_liner = ('from pyro_mcp import Pyro; print(Pyro().run_in_vm(environment="debian:12", '
                 'command="git --version")["stdout"])')
    out = subprocess.run([str(env_dir / "bin" / "python"), "-c", one_liner], env=child_env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("git version 2."), out.stdout
    # The console script is the bundled binary.
    out = subprocess.run([str(env_dir / "bin" / "pyro"), "--version"], env=child_env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("pyro "), out


def uvx(args: List[str], env: Dict[str, str], tmp: Path) -> List[str]:
    env["UV_CACHE_DIR"] = str(tmp / "uv-cache")
    env["UV_TOOL_DIR"] = str(tmp / "uv-tools")
    return [str(venv_bin() / "uvx"), "--offline", "--from", str(WHEEL), *args]


def test_uvx_runs_doctor_and_a_run(tmp_path: Path, child_env: Dict[str, str]) -> None:
    child_env["PATH"] = no_rust_path()
    cmd = uvx(["pyro", "--json", "doctor"], child_env, tmp_path)
    out = subprocess.run(cmd, env=child_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["platform"] == "linux-x86_64" and report["runtime_ok"] is True, report
    cmd = uvx(["pyro", "run", "debian:12", "--", "git", "--version"], child_env, tmp_path)
    out = subprocess.run(cmd, env=child_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("git version 2."), out.stdout
    cmd = uvx(["pyro", "doctor", "--platform", "linux-aarch64"], child_env, tmp_path)
    out = subprocess.run(cmd, env=child_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "linux-x86_64" in out.stderr, out


async def talk(server: StdioServerParameters, expected_tools: int) -> None:
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = (await session.list_tools()).tools
            assert len(tools) == expected_tools, [t.name for t in tools]
            for t in tools:
                text = json.dumps([t.inputSchema, t.outputSchema])
                assert '"format": "uint' not in text and '"format": "int' not in text, t.name
            result = await session.call_tool("vm_run", {"environment": "debian:12", "command": "git --version"})
            assert not result.isError, result.content
            assert result.structuredContent["stdout"].startswith("git version 2.")


def test_uvx_serves_mcp_with_every_tool_by_default(tmp_path: Path, child_env: Dict[str, str]) -> None:
    import anyio

    child_env["PATH"] = no_rust_path()
    cmd = uvx(["pyro", "mcp", "serve"], child_env, tmp_path)
    server = StdioServerParameters(command=cmd[0], args=cmd[1:], env=child_env)
    anyio.run(talk, server, 46)


def test_create_server_from_python_answers_the_official_client(child_env: Dict[str, str]) -> None:
    import anyio

    code = "from pyro_mcp import create_server; create_server(profile='workspace-core').run()"
    server = StdioServerParameters(command=sys.executable, args=["-c", code], env=child_env)
    anyio.run(talk, server, 16)
    code = "from pyro_mcp.server import main; main()"
    server = StdioServerParameters(command=sys.executable, args=["-c", code], env=child_env)
    anyio.run(talk, server, 46)
