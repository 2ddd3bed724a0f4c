"""A persistent workspace from Python: seed, run a failing check, patch,
check again, diff, checkpoint, reset, export.

    python examples/python_workspace.py
"""

import tempfile
from pathlib import Path

from pyro_mcp import Pyro

PATCH = "--- a/message.txt\n+++ b/message.txt\n@@ -1 +1 @@\n-broken\n+fixed\n"

with tempfile.TemporaryDirectory() as tmp:
    repo = Path(tmp, "repo")
    repo.mkdir()
    (repo / "message.txt").write_text("broken\n")
    (repo / "check.sh").write_text('set -eu\n[ "$(cat message.txt)" = fixed ] && echo fixed\n')

    pyro = Pyro()
    ws = pyro.create_workspace(environment="debian:12", seed_path=repo, name="example")
    wid = ws["workspace_id"]
    try:
        print("before:", pyro.exec_workspace(wid, command="sh check.sh")["exit_code"])
        pyro.apply_workspace_patch(wid, patch=PATCH)
        after = pyro.exec_workspace(wid, command="sh check.sh")
        print("after:", after["exit_code"], after["stdout"].strip())
        print("changed:", [e["path"] for e in pyro.diff_workspace(wid)["entries"]])
        pyro.create_snapshot(wid, "fixed")
        pyro.reset_workspace(wid)  # back to the baseline
        print("after reset:", pyro.read_workspace_file(wid, "message.txt")["content"].strip())
        pyro.reset_workspace(wid, snapshot="fixed")
        out = Path(tmp, "message.txt")
        pyro.export_workspace(wid, "message.txt", output_path=out)
        print("exported:", out.read_text().strip())
    finally:
        pyro.delete_workspace(wid)
