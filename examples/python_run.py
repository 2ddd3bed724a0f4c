"""One command in a fresh microVM, from Python.

    pip install dist/pyro_mcp-*.whl && python examples/python_run.py
"""

from pyro_mcp import Pyro

pyro = Pyro()
result = pyro.run_in_vm(environment="debian:12", command="git --version", timeout_seconds=30)
print(result["stdout"], end="")
print(f"exit_code={result['exit_code']} duration_ms={result['duration_ms']}")
