"""The official TypeScript MCP client (`@modelcontextprotocol/sdk`, from
npm) against `pyro mcp serve`: it compiles every output schema with Ajv and
validates structured results with them. Schemas with OpenAPI formats made
it warn `unknown format "uint64"` for every integer field."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict

from conftest import ROOT

HERE = Path(__file__).resolve().parent / "ts"
CLIENT_DIR = ROOT / "target" / "ts-client"


def client_dir() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "node and npm are needed for the TypeScript client test"
    CLIENT_DIR.mkdir(parents=True, exist_ok=True)
    for f in ("package.json", "client.mjs"):
        shutil.copyfile(HERE / f, CLIENT_DIR / f)
    if not (CLIENT_DIR / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir():
        subprocess.run([npm, "install", "--silent", "--no-audit", "--no-fund"], cwd=CLIENT_DIR,
                       check=True, timeout=600)
    return CLIENT_DIR


def test_the_typescript_client_validates_every_result_without_a_warning(child_env: Dict[str, str]) -> None:
    cwd = client_dir()
    pyro = Path(sys.executable).parent / "pyro"
    out = subprocess.run(["node", "client.mjs", str(pyro), "mcp", "serve"], cwd=cwd, env=child_env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["warnings"] == [], report["warnings"][:5]
    assert report["errors"] == [], report["errors"]
    assert report["tools"] == 46
    assert report["run"]["stdout"].startswith("git version 2.")
    assert report["status"]["state"] == "started"
