"""A minimal agent loop over pyro's MCP server, with the official MCP
Python SDK (`pip install mcp`). A real agent would let a model choose each
call; here the "model" is a fixed plan: reproduce a failure, patch, verify,
and keep the patch only if the check passes.

    python examples/agent_loop.py ./my-repo 'make test' fix.patch
"""

import asyncio
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def main(repo: str, check: str, patch_file: str) -> int:
    server = StdioServerParameters(command="pyro", args=["mcp", "serve", "--profile", "workspace-core"])
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write) as mcp:
            await mcp.initialize()
            created = await mcp.call_tool("workspace_create", {"environment": "debian:12-build", "seed_path": repo})
            wid = created.structuredContent["workspace_id"]
            try:
                before = await mcp.call_tool("workspace_exec", {"workspace_id": wid, "command": check})
                print("before:", before.structuredContent["exit_code"])
                patched = await mcp.call_tool("workspace_patch_apply", {"workspace_id": wid, "patch": open(patch_file).read()})
                if patched.isError:
                    print("patch refused:", patched.content[0].text)
                    return 1
                after = await mcp.call_tool("workspace_exec", {"workspace_id": wid, "command": check})
                code = after.structuredContent["exit_code"]
                print("after:", code)
                if code != 0:
                    await mcp.call_tool("workspace_reset", {"workspace_id": wid})
                    return 1
                diff = await mcp.call_tool("workspace_diff", {"workspace_id": wid})
                print(diff.structuredContent["patch"])
                return 0
            finally:
                await mcp.call_tool("workspace_delete", {"workspace_id": wid})


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:4])))
