"""Drives `pyro mcp serve` with the official MCP Python SDK (the `mcp`
package), over stdio and streamable HTTP, against real guests.

Run by crates/pyro-cli/tests/mcp.rs with PYRO_BIN and PYRO_HOME set; exits
non-zero on the first failed check.
"""

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client

PYRO = os.environ["PYRO_BIN"]
GOLDEN = os.environ["PYRO_MCP_GOLDEN"]
EXPECTED_COUNTS = {"vm-run": 1, "workspace-core": 16, "workspace-full": 46}


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}", flush=True)


def ok(result):
    if result.isError:
        raise AssertionError(f"tool error: {result.content}")
    return result.structuredContent


async def tool_names(session):
    return sorted(t.name for t in (await session.list_tools()).tools)


async def recipe_r2(session, tmp):
    seed = os.path.join(tmp, "seed")
    os.makedirs(seed)
    with open(os.path.join(seed, "message.txt"), "w") as f:
        f.write("broken\n")
    with open(os.path.join(seed, "check.sh"), "w") as f:
        f.write(
            'set -eu\nvalue=$(cat message.txt)\nif [ "$value" != fixed ]; then '
            'echo "expected fixed got $value" >&2; exit 1; fi\necho "$value"\n'
        )
    w = ok(await session.call_tool(
        "workspace_create",
        {"environment": "debian:12", "seed_path": seed, "name": "repro-fix-loop"},
    ))
    wid = w["workspace_id"]
    r = ok(await session.call_tool("workspace_file_read", {"workspace_id": wid, "path": "message.txt"}))
    check(r["content"] == "broken\n", "R2: read message.txt")
    r = ok(await session.call_tool("workspace_exec", {"workspace_id": wid, "command": "sh check.sh"}))
    check(r["exit_code"] != 0, "R2: the check fails first")
    patch = "--- a/message.txt\n+++ b/message.txt\n@@ -1 +1 @@\n-broken\n+fixed\n"
    r = ok(await session.call_tool("workspace_patch_apply", {"workspace_id": wid, "patch": patch}))
    check(r["changed"] is True, "R2: patch applied")
    r = ok(await session.call_tool("workspace_exec", {"workspace_id": wid, "command": "sh check.sh"}))
    check(r["exit_code"] == 0 and r["stdout"] == "fixed\n", "R2: the check passes")
    r = ok(await session.call_tool("workspace_diff", {"workspace_id": wid}))
    check(r["changed"] is True, "R2: diff shows the change")
    out = os.path.join(tmp, "message.txt")
    ok(await session.call_tool("workspace_export", {"workspace_id": wid, "path": "message.txt", "output_path": out}))
    check(open(out).read() == "fixed\n", "R2: export")
    r = ok(await session.call_tool("workspace_reset", {"workspace_id": wid}))
    check(r["reset_count"] == 1, "R2: reset")
    r = ok(await session.call_tool("workspace_diff", {"workspace_id": wid}))
    check(r["changed"] is False, "R2: clean after reset")
    return wid


async def malformed_calls(session, wid, tmp):
    r = await session.call_tool("workspace_status", {"workspace_id": "ffffffffffff"})
    check(r.isError and "no workspace" in r.content[0].text, "unknown workspace is a tool error")
    r = await session.call_tool("workspace_file_read", {"workspace_id": wid, "path": "../../etc/passwd"})
    check(r.isError and "not allowed" in r.content[0].text, "bad path is a tool error")
    r = await session.call_tool("workspace_patch_apply", {"workspace_id": wid, "patch": "not a patch"})
    check(r.isError and "patch" in r.content[0].text, "bad patch is a tool error")
    r = await session.call_tool("workspace_exec", {"workspace_id": wid})
    check(r.isError, "a missing parameter is a tool error")
    r = ok(await session.call_tool("workspace_list", {}))
    check(r["count"] >= 1, "the server keeps serving")
    r = await session.call_tool("workspace_export", {
        "workspace_id": wid, "path": "check.sh", "output_path": os.path.join(tmp, "message.txt"),
    })
    text = r.content[0].text
    check(r.isError and "already exists" in text and "--force" not in text,
          "an existing output is refused in the server's own words")
    # Host paths outside the roots the server was started with are refused,
    # and nothing is read or written.
    r = await session.call_tool("workspace_create", {"environment": "debian:12", "seed_path": "/etc"})
    check(r.isError and "outside the host paths" in r.content[0].text, "a seed outside the roots is refused")
    outside = os.path.join(os.path.dirname(tmp), "outside.txt")
    r = await session.call_tool("workspace_export", {"workspace_id": wid, "path": "check.sh", "output_path": outside})
    check(r.isError and not os.path.exists(outside), "an export outside the roots is refused")
    r = await session.call_tool("workspace_sync_push", {"workspace_id": wid, "source_path": "/root"})
    check(r.isError and "outside the host paths" in r.content[0].text, "a sync source outside the roots is refused")
    r = await session.call_tool("vm_run", {"environment": "debian:12", "command": "true", "allow_host_compat": True})
    check(r.isError and "--allow-host-compat" in r.content[0].text, "host execution needs the operator's consent")
    r = await session.call_tool("workspace_status", {"workspace_id": "ffffffffffff"})
    check("workspace_list" in r.content[0].text and "pyro workspace" not in r.content[0].text,
          "the remedy names a tool, not a CLI command")


async def argv_lists(session, wid):
    r = ok(await session.call_tool("workspace_exec", {"workspace_id": wid, "command": ["echo", "a  b"]}))
    check(r["stdout"] == "a  b\n", "a list is an argv: its words reach the program as they are")
    r = ok(await session.call_tool("workspace_exec", {"workspace_id": wid, "command": ["echo $0"]}))
    check(r["exit_code"] == 127 and r["stdout"] == "",
          "a one-element list is an argv too, never a shell string")
    r = ok(await session.call_tool("workspace_exec", {"workspace_id": wid, "command": "echo $0"}))
    check(r["exit_code"] == 0 and r["stdout"] != "", "a string is a shell command")


async def concurrency(session, wid):
    slow = asyncio.ensure_future(session.call_tool(
        "workspace_exec", {"workspace_id": wid, "command": "sleep 4; echo slow"}
    ))
    await asyncio.sleep(0.5)
    start = time.monotonic()
    ok(await session.call_tool("workspace_status", {"workspace_id": wid}))
    quick = time.monotonic() - start
    check(not slow.done() and quick < 3, f"status answered in {quick:.2f}s while an exec ran")
    r = ok(await slow)
    check(r["stdout"] == "slow\n", "the long exec finished")


def golden_check(profile, tools):
    listed = [t.model_dump(mode="json", exclude_none=True) for t in tools]
    listed.sort(key=lambda t: t["name"])
    path = os.path.join(GOLDEN, f"{profile}.json")
    text = json.dumps(listed, indent=2, sort_keys=True) + "\n"
    if os.environ.get("PYRO_BLESS"):
        with open(path, "w") as f:
            f.write(text)
    check(open(path).read() == text, f"{profile}: tools/list matches {path}")


async def stdio_profile(profile, tmp):
    os.makedirs(tmp, exist_ok=True)
    params = StdioServerParameters(
        command=PYRO,
        args=["mcp", "serve", "--profile", profile, "--allow-host-path", tmp],
        env=dict(os.environ),
    )
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = (await session.list_tools()).tools
            check(len(tools) == EXPECTED_COUNTS[profile], f"stdio {profile}: {len(tools)} tools")
            golden_check(profile, tools)
            if profile == "vm-run":
                r = ok(await session.call_tool("vm_run", {"environment": "debian:12", "command": "git --version"}))
                check(r["stdout"].startswith("git version 2.39") and r["exit_code"] == 0, "stdio vm_run")
            if profile == "workspace-core":
                r = ok(await session.call_tool(
                    "vm_run", {"environment": "debian:12", "command": ["sh", "-c", 'echo "$0"', "argv"]}
                ))
                check(r["stdout"] == "argv\n", "stdio vm_run with an argv")
                wid = await recipe_r2(session, tmp)
                await malformed_calls(session, wid, tmp)
                await argv_lists(session, wid)
                await concurrency(session, wid)
                ok(await session.call_tool("workspace_delete", {"workspace_id": wid}))
            if profile == "workspace-full":
                w = ok(await session.call_tool("workspace_create", {
                    "environment": "debian:12",
                    "secrets": [{"name": "TOKEN", "value": "mcp-secret-5a1f"}],
                }))
                wid = w["workspace_id"]
                sh = ok(await session.call_tool("shell_open", {"workspace_id": wid, "secret_env": {"TOKEN": "TOKEN"}}))
                sid = sh["shell_id"]
                ok(await session.call_tool("shell_write", {"workspace_id": wid, "shell_id": sid, "input": "cd /tmp; echo in-$(pwd) $TOKEN"}))
                out = ""
                for _ in range(100):
                    r = ok(await session.call_tool("shell_read", {
                        "workspace_id": wid, "shell_id": sid, "plain": True, "wait_for_idle_ms": 200,
                    }))
                    out = r["output"]
                    if "in-/tmp [REDACTED]" in out:
                        break
                    await asyncio.sleep(0.2)
                check("in-/tmp [REDACTED]" in out and "mcp-secret-5a1f" not in out, "full: shell with a redacted secret")
                r = ok(await session.call_tool("shell_close", {"workspace_id": wid, "shell_id": sid}))
                check(r["closed"] is True, "full: shell closed")
                r = ok(await session.call_tool("workspace_exec", {
                    "workspace_id": wid, "command": "echo $T", "secret_env": {"TOKEN": "T"},
                }))
                check(r["stdout"] == "[REDACTED]\n", "full: exec with secret_env")
                r = await session.call_tool("service_start", {
                    "workspace_id": wid, "service_name": "app", "command": "touch .up; sleep 300",
                    "ready_file": ".up", "ready_tcp": "127.0.0.1:1",
                })
                check(r.isError, "full: two readiness checks are refused")
                r = ok(await session.call_tool("service_start", {
                    "workspace_id": wid, "service_name": "app", "command": "echo up; touch .up; sleep 300",
                    "ready_file": ".up",
                }))
                check(r["state"] == "running", "full: service running")
                r = ok(await session.call_tool("service_logs", {"workspace_id": wid, "service_name": "app", "tail_lines": 5}))
                check(r["stdout"] == "up\n", "full: service logs")
                r = ok(await session.call_tool("service_stop", {"workspace_id": wid, "service_name": "app"}))
                check(r["state"] == "stopped", "full: service stopped")
                r = ok(await session.call_tool("workspace_pause", {"workspace_id": wid}))
                check(r["state"] == "paused" and r["workspace_pause"]["state_bytes"] > 0, "full: paused")
                r = ok(await session.call_tool("workspace_resume", {"workspace_id": wid}))
                check(r["state"] == "started" and r["workspace_resume"]["restored"], "full: resumed")
                r = ok(await session.call_tool("workspace_fork", {"workspace_id": wid, "count": 1}))
                check(r["count"] == 1 and r["workspaces"][0]["state"] == "started", "full: forked")
                ok(await session.call_tool("workspace_delete", {"workspace_id": r["workspaces"][0]["workspace_id"]}))
                r = await session.call_tool("service_start", {
                    "workspace_id": wid, "service_name": "web", "command": "sleep 300",
                    "published_ports": [{"guest_port": 8080}],
                })
                check(r.isError and "egress+published-ports" in r.content[0].text,
                      "full: publishing needs the egress+published-ports policy")
                r = await session.call_tool("workspace_create", {
                    "environment": "debian:12", "secrets": [{"name": "Z", "file_path": "/dev/zero"}],
                })
                check(r.isError and "outside the host paths" in r.content[0].text,
                      "full: a secret file outside the roots is refused unread")
                ok(await session.call_tool("workspace_delete", {"workspace_id": wid}))
                await vm_lifecycle(session)


async def vm_lifecycle(session):
    v = ok(await session.call_tool("vm_create", {"environment": "debian:12"}))
    vid = v["vm_id"]
    check(v["state"] == "created" and v["network_enabled"] is False, "vm_create: created, no network")
    n = ok(await session.call_tool("vm_network_info", {"vm_id": vid}))
    check(n["network_enabled"] is False and n["guest_ip"] is None, "vm_network_info without a network")
    r = ok(await session.call_tool("vm_start", {"vm_id": vid}))
    check(r["state"] == "started", "vm_start")
    r = ok(await session.call_tool("vm_status", {"vm_id": vid}))
    check(r["state"] == "started", "vm_status: started")
    r = ok(await session.call_tool("vm_stop", {"vm_id": vid}))
    check(r["state"] == "stopped" and r["stop_reason"] == "stopped", f"vm_stop: {r}")
    r = ok(await session.call_tool("vm_exec", {"vm_id": vid, "command": "cat /proc/cmdline >/dev/null && uname -r"}))
    check(r["exit_code"] == 0 and r["stdout"].strip().endswith("cloud-amd64") and r["cleanup"]["deleted"],
          "vm_exec boots a stopped VM, runs, deletes")
    r = await session.call_tool("vm_status", {"vm_id": vid})
    check(r.isError and "unknown vm" in r.content[0].text, "vm_exec deleted the VM")

    v = ok(await session.call_tool("vm_create", {"environment": "debian:12", "network": True}))
    n = ok(await session.call_tool("vm_network_info", {"vm_id": v["vm_id"]}))
    check(n["network_enabled"] and n["guest_ip"] == "10.0.2.15" and n["backend"] == "passt"
          and n["outbound_connectivity_expected"], f"vm_network_info: {n}")
    r = ok(await session.call_tool("vm_delete", {"vm_id": v["vm_id"]}))
    check(r["deleted"] is True, "vm_delete")
    r = await session.call_tool("vm_start", {"vm_id": v["vm_id"]})
    check(r.isError, "a deleted VM is gone")

    keep = ok(await session.call_tool("vm_create", {"environment": "debian:12"}))
    short = ok(await session.call_tool("vm_create", {"environment": "debian:12", "ttl_seconds": 1}))
    await asyncio.sleep(1.5)
    r = ok(await session.call_tool("vm_reap_expired", {}))
    check(r["deleted_vm_ids"] == [short["vm_id"]] and r["count"] == 1, f"vm_reap_expired: {r}")
    ok(await session.call_tool("vm_delete", {"vm_id": keep["vm_id"]}))


async def http(tmp):
    token = "test-token-" + os.urandom(8).hex()
    os.makedirs(tmp, exist_ok=True)
    proc = subprocess.Popen(
        [PYRO, "mcp", "serve", "--http", "127.0.0.1:0", "--token", token, "--allow-host-path", tmp],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = None
        for line in proc.stderr:
            if "serving http://" in line:
                url = line.split("serving ", 1)[1].strip()
                break
        check(url is not None and url.startswith("http://127.0.0.1:"), f"http server at {url}")
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode()
        for headers, what in (({}, "no token"), ({"Authorization": "Bearer wrong"}, "a wrong token")):
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **headers})
            try:
                urllib.request.urlopen(req)
                status = 200
            except urllib.error.HTTPError as e:
                status = e.code
            check(status == 401, f"http with {what} is refused ({status})")
        async with streamablehttp_client(url, headers={"Authorization": f"Bearer {token}"}) as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                names = await tool_names(session)
                check(len(names) == 46, "http: workspace-full by default, as in pyro-mcp")
                r = ok(await session.call_tool("vm_run", {"environment": "debian:12", "command": "uname -r"}))
                check(r["stdout"].strip().endswith("cloud-amd64"), "http vm_run")
                wid = await recipe_r2(session, tmp)
                ok(await session.call_tool("workspace_delete", {"workspace_id": wid}))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def main():
    with tempfile.TemporaryDirectory() as tmp:
        for profile in ("vm-run", "workspace-core", "workspace-full"):
            await stdio_profile(profile, os.path.join(tmp, profile))
        await http(os.path.join(tmp, "http"))
    print("all MCP checks passed")


if __name__ == "__main__":
    asyncio.run(main())
