"""A real Ray cluster on this machine for the Ray tests: one head and
worker nodes, each its own raylet in a network namespace of its own, all
made by the test and joined by a bridge in one more namespace.

Ray dials and listens on its node's own address; in these namespaces that
address exists only on the test's bridge, so nothing the cluster sends
can leave it. Each node has its own ``PYRO_HOME``, Ray temp directory and
``pyro_slots``; they share the test run's read-mostly cache of kernels,
environments and templates, the way nodes would share a mirror.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

SUBNET = "10.213.0"
GATEWAY = f"{SUBNET}.254"
HERE = Path(__file__).resolve().parent


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Node:
    index: int
    netns: str
    ip: str
    home: Path
    temp: Path
    slots: int

    @property
    def logs(self) -> Path:
        return self.temp / "session_latest" / "logs"


class Cluster:
    """``slots[0]`` is the head's, the rest are one worker node each."""

    def __init__(self, root: Path, slots: List[int]) -> None:
        self.root = root
        self.tag = f"pr{os.getpid() % 100000}"
        self.switch = f"{self.tag}-sw"
        self.nodes = [
            Node(i, f"{self.tag}-n{i}", f"{SUBNET}.{i + 1}", root / f"home{i}", root / f"ray{i}", s)
            for i, s in enumerate(slots)
        ]
        self.address = f"{self.nodes[0].ip}:6379"
        self.bin = Path(sys.executable).parent

    def env(self, node: Node) -> Dict[str, str]:
        env = dict(os.environ)
        env.update(
            # Ray keeps files in HOME (~/.ray); each node has its own.
            HOME=str(node.temp),
            PYRO_HOME=str(node.home),
            PYTHONPATH=str(HERE),
            RAY_USAGE_STATS_ENABLED="0",
            RAY_ADDRESS=self.address,
            PATH=f"{self.bin}:{env.get('PATH', '/usr/bin:/bin')}",
        )
        return env

    def start(self) -> "Cluster":
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "addr", "add", f"{GATEWAY}/24", "dev", "br0")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for n in self.nodes:
            _ip("netns", "add", n.netns)
            a, b = f"{self.tag}a{n.index}", f"{self.tag}b{n.index}"
            _ip("link", "add", a, "type", "veth", "peer", "name", b)
            _ip("link", "set", a, "netns", self.switch)
            _ip("link", "set", b, "netns", n.netns)
            _ip("-n", self.switch, "link", "set", a, "master", "br0")
            _ip("-n", self.switch, "link", "set", a, "up")
            _ip("-n", n.netns, "link", "set", "lo", "up")
            _ip("-n", n.netns, "addr", "add", f"{n.ip}/24", "dev", b)
            _ip("-n", n.netns, "link", "set", b, "up")
            # passt takes its template from the default route; the gateway
            # is the switch's own address, which forwards nothing.
            _ip("-n", n.netns, "route", "add", "default", "via", GATEWAY)
            n.home.mkdir(parents=True)
            n.temp.mkdir(parents=True)
        for n in self.nodes:
            self._ray_start(n)
        return self

    def _ray_start(self, n: Node) -> None:
        args = [
            "--node-ip-address", n.ip,
            "--num-cpus", "4",
            "--resources", self._resources(n.slots),
            "--object-store-memory", str(200 * 1024 * 1024),
            "--temp-dir", str(n.temp),
            "--disable-usage-stats",
        ]
        if n.index == 0:
            args = ["--head", "--port", "6379", "--include-dashboard=false", *args]
        else:
            args = ["--address", self.address, *args]
        out = self.exec(n, [str(self.bin / "ray"), "start", *args], timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr

    def _resources(self, slots: int) -> str:
        """What ``python -m pyro_mcp.ray resources`` says a node advertises."""
        out = subprocess.run(
            [sys.executable, "-m", "pyro_mcp.ray", "resources", str(slots)],
            capture_output=True, text=True, check=True,
        )
        return out.stdout.strip()

    def exec(
        self, node: Node, argv: List[str], timeout: float = 600, cwd: Optional[Path] = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", node.netns, *argv],
            env=self.env(node), capture_output=True, text=True, timeout=timeout, cwd=cwd,
        )

    def python(
        self, code: str, node: Optional[Node] = None, timeout: float = 900, cwd: Optional[Path] = None
    ) -> subprocess.CompletedProcess:
        """Runs ``code`` as a Ray driver on ``node`` (the head by default)."""
        return self.exec(node or self.nodes[0], [sys.executable, "-c", code], timeout, cwd)

    def driver(self, call: str, node: Optional[Node] = None, timeout: float = 900) -> Dict:
        """Runs ``ray_driver.<call>`` on a node and returns the JSON it printed last."""
        out = self.python(f"import ray_driver, json; print(json.dumps(ray_driver.{call}))", node, timeout)
        assert out.returncode == 0, f"{call} failed:\n{out.stdout[-4000:]}\n{out.stderr[-8000:]}"
        return json.loads(out.stdout.strip().splitlines()[-1])

    def status(self) -> str:
        out = self.exec(self.nodes[0], [str(self.bin / "ray"), "status", "--address", self.address], 60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def pids(self, node: Node) -> List[int]:
        out = subprocess.run(["ip", "netns", "pids", node.netns], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def raylet(self, node: Node) -> int:
        for pid in self.pids(node):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                    return pid
            except OSError:
                pass
        raise AssertionError(f"no raylet in {node.netns}")

    def kill_node(self, node: Node) -> None:
        """Everything of the node that lives in its namespace: raylet, workers."""
        for _ in range(20):
            pids = self.pids(node)
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)

    def close(self) -> None:
        for n in reversed(self.nodes):
            self.kill_node(n)
        for ns in [n.netns for n in self.nodes] + [self.switch]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for n in self.nodes:
            shutil.rmtree(n.temp, ignore_errors=True)
