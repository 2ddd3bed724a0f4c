#!/usr/bin/env bash
# Benchmarks `pyro run debian:12 -- true` against references measured in the
# same run: a bare `true` and gVisor's `runsc do true` (Debian package runsc;
# skipped with a note if it is missing). Prints p50/p95 and ratios, then a cold-start breakdown from
# pyro's own timings. Usage: scripts/bench.sh [RUNS] (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
pyro="${PYRO:-target/release/pyro}"
[ -x "$pyro" ] || cargo build --release --locked -p pyro-cli >&2

now_ns() { date +%s%N; }

# Times `runs` executions of a command; prints one millisecond figure a line.
time_runs() {
    local i t0 t1
    for ((i = 0; i < runs; i++)); do
        t0=$(now_ns)
        "$@" >/dev/null 2>&1
        t1=$(now_ns)
        awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", (b - a) / 1e6 }'
    done
}

# p50 and p95 of the figures on stdin.
percentiles() {
    sort -n | awk '{ v[NR] = $1 } END {
        p50 = v[int((NR + 1) / 2)]; i95 = int(NR * 0.95 + 0.999); if (i95 < 1) i95 = 1;
        printf "%.1f %.1f\n", p50, v[i95] }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a / b }'; }

"$pyro" env pull debian:12 >/dev/null
"$pyro" run debian:12 -- true >/dev/null 2>&1 # warm the page cache

read -r true_p50 true_p95 < <(time_runs true | percentiles)
have_runsc=0
if command -v runsc >/dev/null && runsc --network=none --ignore-cgroups do true >/dev/null 2>&1; then
    have_runsc=1
    read -r runsc_p50 runsc_p95 < <(time_runs runsc --network=none --ignore-cgroups do true | percentiles)
fi

timings=$(mktemp)
trap 'rm -f "$timings"' EXIT
for ((i = 0; i < runs; i++)); do
    t0=$(now_ns)
    "$pyro" run --json debian:12 -- true > "$timings.json"
    t1=$(now_ns)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", (b - a) / 1e6 }' >> "$timings"
    grep -oE '"(prepare|boot|guest_boot|exec|cleanup)_ms": [0-9]+' "$timings.json" \
        | tr -d '":' >> "$timings.parts"
done
read -r pyro_p50 pyro_p95 < <(percentiles < "$timings")

echo "accelerator: $("$pyro" doctor --json | grep -oE '"accel": "[a-z]+"' | cut -d'"' -f4)   runs: $runs"
printf "%-34s %10s %10s\n" "command" "p50 ms" "p95 ms"
printf "%-34s %10s %10s\n" "true (bare)" "$true_p50" "$true_p95"
if [ $have_runsc = 1 ]; then
    printf "%-34s %10s %10s\n" "runsc do true" "$runsc_p50" "$runsc_p95"
else
    echo "(runsc is not installed or cannot run here: apt-get install runsc)"
fi
printf "%-34s %10s %10s\n" "pyro run debian:12 -- true" "$pyro_p50" "$pyro_p95"
echo
if [ $have_runsc = 1 ]; then
    echo "pyro / runsc:  p50 $(ratio "$pyro_p50" "$runsc_p50")x   p95 $(ratio "$pyro_p95" "$runsc_p95")x"
fi
echo "pyro / true:   p50 $(ratio "$pyro_p50" "$true_p50")x"

# Bare QEMU: start a microvm paused and quit at once.
read -r qemu_p50 _ < <(time_runs sh -c 'echo quit | qemu-system-x86_64 -M microvm,acpi=on -nodefaults -no-user-config -display none -S -monitor stdio' | percentiles)
echo
echo "cold-start breakdown (p50 ms):"
printf "  %-44s %8s\n" "qemu process start + quit (bare)" "$qemu_p50"
for part in prepare boot guest_boot exec cleanup; do
    v=$(awk -v k="${part}_ms" '$1 == k { print $2 }' "$timings.parts" | percentiles | cut -d' ' -f1)
    case $part in
        prepare) label="prepare (assets, environment, disk overlay)" ;;
        boot) label="boot (supervisor start to agent ready)" ;;
        guest_boot) label="  of which guest kernel start to agent" ;;
        exec) label="exec round trip of the command" ;;
        cleanup) label="cleanup (delete VM)" ;;
    esac
    printf "  %-44s %8s\n" "$label" "$v"
done
rm -f "$timings.json" "$timings.parts"
