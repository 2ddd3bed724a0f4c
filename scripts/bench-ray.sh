#!/usr/bin/env bash
# COUNT one-shot runs (default 40) as Ray tasks over a three-node cluster on
# this machine (the Ray tests' cluster: head 4 pyro_slots, two workers 2
# each, every node its own raylet, PYRO_HOME and network namespace), beside
# the same runs from one process on one node without Ray, 8 at a time (the
# cluster's slots). Both use the SDK installed in the Python tier's venv
# (scripts/test.sh makes it) and the test cache. Root, for the namespaces.
# Usage: scripts/bench-ray.sh [COUNT]
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-40}"
py=target/py-venv/bin/python
[ -x "$py" ] && "$py" -c 'import ray, pyro_mcp.ray' 2>/dev/null || {
    echo "run scripts/test.sh once first: it builds the venv with pyro-mcp and ray" >&2
    exit 1
}
export PYRO_CACHE_DIR="$PWD/target/test-cache" PYRO_POOL_SIZE=0
unset PYRO_HOME
cd crates/pyro-py/tests
exec "../../../$py" - "$count" <<'PY'
import sys, tempfile
from pathlib import Path
from raycluster import Cluster

count = int(sys.argv[1])
with tempfile.TemporaryDirectory(prefix="pyro-bench-ray-") as tmp:
    c = Cluster(Path(tmp), [4, 2, 2])
    try:
        c.start()
        # The same warm-up for both: one run each way, not timed.
        c.driver("burst(1)")
        c.driver("burst_without_ray(1, 1)")
        ray = c.driver(f"burst({count})")
        alone = c.driver(f"burst_without_ray({count}, 8)")
    finally:
        c.close()
    assert ray["exit_codes"] == [0] * count and alone["ok"] == count
    print(f"{count} one-shot runs of debian:12 (echo), this machine      seconds   runs/s")
    print(f"  one node, one process, 8 at a time (no Ray)       {alone['seconds']:8.1f} {count / alone['seconds']:8.2f}")
    print(f"  Ray tasks over 3 nodes (8 pyro_slots)             {ray['seconds']:8.1f} {count / ray['seconds']:8.2f}")
    print(f"  by node: {ray['nodes']}")
    print(f"ratio Ray / no Ray: {ray['seconds'] / alone['seconds']:.2f}x the time")
PY
