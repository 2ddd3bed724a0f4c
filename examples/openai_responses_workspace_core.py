"""The workspace-core MCP tools offered to a Responses API model: tool
definitions come from the MCP server's own schemas (tools/list), and each
function call the model makes is a tools/call on `pyro mcp serve`.

    pip install openai mcp
    OPENAI_API_KEY=... python examples/openai_responses_workspace_core.py [MODEL]

PYRO_COMMAND names the pyro binary (default: pyro on PATH).
"""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from openai import OpenAI

TASK = (
    "Create a debian:12 workspace, run `git --version` in it, delete the workspace, "
    "then tell me the git version."
)


def tool_definitions(tools) -> list:
    """MCP tools as Responses API function tools."""
    return [
        {"type": "function", "name": t.name, "description": t.description or "", "parameters": t.inputSchema}
        for t in tools
    ]


async def main(model: str) -> int:
    server = StdioServerParameters(
        command=os.environ.get("PYRO_COMMAND", "pyro"),
        args=["mcp", "serve", "--profile", "workspace-core"],
    )
    client = OpenAI()
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write) as mcp:
            await mcp.initialize()
            tools = tool_definitions((await mcp.list_tools()).tools)
            items: list = [{"role": "user", "content": TASK}]
            for _ in range(10):
                response = client.responses.create(model=model, input=items, tools=tools)
                calls = [o for o in response.output if o.type == "function_call"]
                if not calls:
                    print(response.output_text)
                    return 0
                for call in calls:
                    items.append({"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments})
                    result = await mcp.call_tool(call.name, json.loads(call.arguments or "{}"))
                    if result.isError:
                        output = {"error": result.content[0].text if result.content else "tool error"}
                    else:
                        output = result.structuredContent
                    items.append({"type": "function_call_output", "call_id": call.call_id, "output": json.dumps(output)})
    print("no answer after 10 turns", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "gpt-4o-mini")))
