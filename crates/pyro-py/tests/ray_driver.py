"""What the Ray tests run as drivers inside the test cluster (raycluster.py).
Each function connects to the cluster, does its part, and returns what
the test asserts on. The tasks here are imported by the cluster's workers
(the raylets' PYTHONPATH holds this directory)."""

from __future__ import annotations

import gc
import io
import os
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List

import ray

from pyro_mcp import Pyro
from pyro_mcp.errors import InvalidArgumentError, PyroError, UnavailableError, WorkspaceLostError
from pyro_mcp.ray import RayWorkspace, run_in_vm, submit_run_in_vm

PATCH = "--- a/message.txt\n+++ b/message.txt\n@@ -1 +1 @@\n-broken\n+fixed\n"


def connect() -> Dict[str, str]:
    """Alive nodes: id -> ip."""
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    return {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}


def repo_tar(tag: str) -> bytes:
    """A git repository whose check fails until message.txt says fixed."""
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        (repo / "message.txt").write_text("broken\n")
        (repo / "check.sh").write_text(f'set -eu\n[ "$(cat message.txt)" = fixed ] && echo {tag} passed\n')
        git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
        for args in (["init", "-q"], ["add", "."], ["commit", "-qm", f"repo {tag}"]):
            subprocess.run([*git, *args], check=True)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for child in sorted(repo.iterdir()):
                tar.add(child, arcname=child.name)
        return buf.getvalue()


@ray.remote(num_cpus=0)
def recipe(ws: RayWorkspace, tag: str) -> Dict[str, Any]:
    """The recipe through a handle, from wherever Ray ran this task."""
    before = ws.exec_workspace(command="sh check.sh")
    ws.apply_workspace_patch(patch=PATCH)
    after = ws.exec_workspace(command="sh check.sh")
    git = ws.exec_workspace(command="git status --porcelain; git log --format=%s")
    exported = ws.export_workspace("/workspace")
    with tarfile.open(fileobj=io.BytesIO(exported["archive"])) as tar:
        names = sorted(tar.getnames())
    # The same export written on this task's side, as Pyro.export_workspace would.
    with tempfile.TemporaryDirectory() as tmp:
        ws.export_workspace("/workspace", output_path=Path(tmp, "out"))
        message = Path(tmp, "out", "message.txt").read_text()
    return {
        "task_node": ray.get_runtime_context().get_node_id(),
        "workspace_node": ws.node_id,
        "exec_node": before["node_id"],
        "before": before["exit_code"],
        "after": [after["exit_code"], after["stdout"]],
        "git": git["stdout"],
        "exported": message,
        "has_git_dir": ".git" in names,
    }


def recipe_on_eight(status_cmd: List[str]) -> Dict[str, Any]:
    nodes = connect()
    ids = sorted(nodes)

    def on_another_node(ws: RayWorkspace, tag: str) -> Any:
        """The recipe in a task on a node other than the workspace's."""
        other = ids[(ids.index(ws.node_id) + 1) % len(ids)]
        strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(other, soft=False)
        return recipe.options(scheduling_strategy=strategy).remote(ws, tag)

    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(
            lambda i: RayWorkspace.create(environment="debian:12", seed=repo_tar(f"ws{i}"), mem_mib=512),
            range(8),
        ))
    status = subprocess.run(status_cmd, capture_output=True, text=True).stdout

    # A ninth is asked for while the eight run their recipes: it waits.
    ninth: List[RayWorkspace] = []
    waiter = threading.Thread(
        target=lambda: ninth.append(RayWorkspace.create(environment="debian:12", seed=repo_tar("ws8"), mem_mib=512))
    )
    waiter.start()
    results = ray.get([on_another_node(ws, f"ws{i}") for i, ws in enumerate(made)], timeout=600)
    waited = not ninth
    # A request bounded by a timeout gives up, and leaves nothing behind.
    try:
        RayWorkspace.create(environment="debian:12", mem_mib=512, timeout=5)
        gave_up = "placed"
    except UnavailableError as e:
        gave_up = str(e)

    # Once one is deleted, the ninth takes its slot and runs the recipe too.
    freed = made[0]
    freed.delete_workspace()
    waiter.join(300)
    if ninth:
        results.append(ray.get(on_another_node(ninth[0], "ws8"), timeout=600))
    for ws in made[1:] + ninth:
        ws.delete_workspace()
    return {
        "nodes": nodes,
        "placed": [nodes[w.node_id] for w in made],
        "status": status,
        "ninth_waited": waited,
        "gave_up": gave_up,
        "ninth_node_is_freed_node": bool(ninth) and ninth[0].node_id == freed.node_id,
        "ninth_placed": bool(ninth),
        "results": results,
        "workspace_ids": [w.workspace_id for w in made + ninth],
    }


@ray.remote(num_cpus=0)
def fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return str(r.read().decode())
    except OSError as e:
        return f"unreachable: {e}"


@ray.remote(num_cpus=0)
def workspace_ids() -> List[str]:
    """The workspaces in this node's PYRO_HOME."""
    return [w["workspace_id"] for w in Pyro().list_workspaces()["workspaces"]]


def handle_surface() -> Dict[str, Any]:
    """Ports, pushes, shells and snapshots through a handle; a dropped handle."""
    nodes = connect()
    ws = RayWorkspace.create(environment="debian:12-build", network_policy="egress+published-ports")
    ws.push_workspace_sync(repo_tar("pushed"))
    ws.write_workspace_file("index.txt", text="served-from-guest\n")
    svc = ws.start_service(
        "web",
        command="python3 -m http.server 8080",
        readiness={"type": "http", "url": "http://127.0.0.1:8080/index.txt"},
        published_ports=[{"guest_port": 8080}],
    )
    port = svc["published_ports"][0]
    url = f"http://{port['host']}:{port['host_port']}/index.txt"
    here = fetch.options(scheduling_strategy=ws.scheduling_strategy()).remote(url)
    # From another node, the port is not served on the workspace node's address.
    other = next(n for n in nodes if n != ws.node_id)
    strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(other, soft=False)
    elsewhere = fetch.options(scheduling_strategy=strategy).remote(f"http://{ws.node_ip}:{port['host_port']}/index.txt")
    out = {"service": svc, "on_its_node": ray.get(here), "on_another_node": ray.get(elsewhere), "node_id": ws.node_id}

    ws.create_snapshot("served")
    ws.write_workspace_file("index.txt", text="changed\n")
    ws.reset_workspace(snapshot="served")
    shell = ws.open_shell()
    ws.write_shell(shell["shell_id"], input="cat index.txt check.sh | head -2; echo shell-$((6*7))")
    screen = ""
    for _ in range(30):
        screen = ws.read_shell(shell["shell_id"], plain=True, wait_for_idle_ms=500)["output"]
        if "shell-42" in screen:
            break
    ws.close_shell(shell["shell_id"])
    out["shell"] = screen
    # pyro's errors arrive as pyro's classes; a file export lands on this side.
    try:
        ws.delete_snapshot("no-such-snapshot")
        out["missing"] = "deleted"
    except PyroError as e:
        out["missing"] = type(e).__name__
    with tempfile.TemporaryDirectory() as tmp:
        r = ws.export_workspace("index.txt", output_path=Path(tmp, "copy.txt"))
        out["exported_file"] = [r["artifact_type"], Path(tmp, "copy.txt").read_text()]
    for bad in (lambda: ws.checkpoint("relative/dir"), lambda: RayWorkspace.create(environment="debian:12", seed_path="/x")):
        try:
            bad()
        except InvalidArgumentError as e:
            out.setdefault("refused", []).append(str(e))
    ws.delete_workspace()

    # Every handle dropped: Ray ends the actor, and the actor the workspace.
    dropped = RayWorkspace.create(environment="debian:12", mem_mib=512)
    wid, on = dropped.workspace_id, dropped.scheduling_strategy()
    out["dropped_was_listed"] = wid in ray.get(workspace_ids.options(scheduling_strategy=on).remote())
    del dropped
    gc.collect()
    deadline = time.monotonic() + 60
    while wid in ray.get(workspace_ids.options(scheduling_strategy=on).remote()):
        assert time.monotonic() < deadline, f"workspace {wid} outlived its handles"
        time.sleep(1)
    out["dropped_gone_after"] = 60 - (deadline - time.monotonic())
    return out


def burst(count: int) -> Dict[str, Any]:
    nodes = connect()
    start = time.monotonic()
    refs = [submit_run_in_vm(environment="debian:12", command=f"echo run-{i}") for i in range(count)]
    results = ray.get(refs, timeout=1200)
    seconds = time.monotonic() - start
    one = run_in_vm(environment="debian:12", command=["git", "--version"])
    return {
        "seconds": seconds,
        "stdout": sorted(r["stdout"] for r in results),
        "exit_codes": [r["exit_code"] for r in results],
        "nodes": {nodes[r["node_id"]]: sum(1 for x in results if x["node_id"] == r["node_id"]) for r in results},
        "one": one["stdout"],
    }


def burst_without_ray(count: int, threads: int) -> Dict[str, Any]:
    """The same runs from one process on one node, ``threads`` at a time."""
    pyro = Pyro()
    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(
            lambda i: pyro.run_in_vm(environment="debian:12", command=f"echo run-{i}"), range(count)
        ))
    return {"seconds": time.monotonic() - start, "ok": sum(r["exit_code"] == 0 for r in results)}


def lose_a_node(victim_ip: str, survivor_ip: str, raylet_pid: int, checkpoint_dir: str) -> Dict[str, Any]:
    """Workspaces on two worker nodes, one checkpointed; the victim's raylet
    is killed while commands run on both; then the checkpoint is restored."""
    nodes = connect()
    by_ip = {ip: i for i, ip in nodes.items()}
    victims = [
        RayWorkspace.create(environment="debian:12", node_id=by_ip[victim_ip], mem_mib=512, labels={"team": "a"})
        for _ in range(2)
    ]
    survivors = [RayWorkspace.create(environment="debian:12", node_id=by_ip[survivor_ip], mem_mib=512) for _ in range(2)]
    kept = victims[0]
    kept.write_workspace_file("notes/kept.txt", text="written before the node was lost\n")
    kept.exec_workspace(command="chmod 750 notes && mkdir -p build && echo 42 > build/answer")
    checkpoint = kept.checkpoint(checkpoint_dir)

    def run(ws: RayWorkspace, command: str) -> Dict[str, Any]:
        start = time.monotonic()
        try:
            r = ws.exec_workspace(command=command, timeout_seconds=300)
            return {"stdout": r["stdout"], "seconds": time.monotonic() - start}
        except WorkspaceLostError as e:
            return {"lost": str(e), "seconds": time.monotonic() - start}

    with ThreadPoolExecutor(4) as pool:
        lost = [pool.submit(run, ws, "sleep 240; echo finished") for ws in victims]
        kept_up = [pool.submit(run, ws, "sleep 20; echo survived") for ws in survivors]
        time.sleep(5)
        os.kill(raylet_pid, 9)
        killed = time.monotonic()
        lost_results = [f.result() for f in lost]
        lost_after = time.monotonic() - killed
        kept_results = [f.result() for f in kept_up]
    later = [ws.exec_workspace(command="echo still-here")["stdout"] for ws in survivors]

    restored = RayWorkspace.restore(checkpoint["path"])
    files = restored.exec_workspace(command="cat notes/kept.txt build/answer; stat -c %a notes")["stdout"]
    settings = restored.status_workspace()
    out = {
        "checkpoint": checkpoint,
        "lost": lost_results,
        "lost_within": lost_after,
        "survivors": kept_results,
        "survivors_later": later,
        "restored_node": nodes[restored.node_id],
        "restored_from": restored.created.get("restored_from"),
        "restored_files": files,
        "restored_settings": [settings["mem_mib"], settings["network_policy"], sorted(settings["labels"])],
        "victim_ids": [w.workspace_id for w in victims],
    }
    for ws in [*survivors, restored]:
        ws.delete_workspace()
    return out


def abandoned() -> Dict[str, Any]:
    """A workspace whose driver exits without deleting it."""
    connect()
    ws = RayWorkspace.create(environment="debian:12", mem_mib=512)
    return {"workspace_id": ws.workspace_id, "node_ip": ws.node_ip}


def killed_actor() -> Dict[str, Any]:
    """A workspace whose actor is killed outright (no shutdown hook runs)."""
    connect()
    ws = RayWorkspace.create(environment="debian:12", mem_mib=512)
    on = ws.scheduling_strategy()
    ray.kill(ws._actor, no_restart=True)
    start = time.monotonic()
    while ws.workspace_id in ray.get(workspace_ids.options(scheduling_strategy=on).remote()):
        assert time.monotonic() - start < 60, f"workspace {ws.workspace_id} outlived its killed actor"
        time.sleep(0.5)
    return {"workspace_id": ws.workspace_id, "node_ip": ws.node_ip, "gone_after": time.monotonic() - start}
