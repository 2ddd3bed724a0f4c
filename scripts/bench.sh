#!/usr/bin/env bash
# Benchmarks `pyro run debian:12 -- true` (restored from a template, and
# booted with PYRO_FAST_START=0) against references measured in the same
# run: a bare `true` and gVisor's `runsc do true` (Debian package runsc;
# skipped with a note if it is missing). Prints p50/p95 and ratios, then a
# breakdown from pyro's own timings. Usage: scripts/bench.sh [RUNS] (default 10).
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

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Times `runs` of `pyro run --json debian:12 -- true` with the environment
# given (e.g. PYRO_FAST_START=0); wall times in $work/NAME, pyro's own
# timings in $work/NAME.parts.
time_pyro() {
    local name=$1 i t0 t1
    shift
    for ((i = 0; i < runs; i++)); do
        t0=$(now_ns)
        env "$@" "$pyro" run --json debian:12 -- true > "$work/out.json"
        t1=$(now_ns)
        awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", (b - a) / 1e6 }' >> "$work/$name"
        grep -oE '"(prepare|boot|guest_boot|exec|cleanup)_ms": [0-9]+' "$work/out.json" \
            | tr -d '":' >> "$work/$name.parts"
    done
}
time_pyro fast PYRO_FAST_START=1
time_pyro cold PYRO_FAST_START=0
read -r pyro_p50 pyro_p95 < <(percentiles < "$work/fast")
read -r cold_p50 cold_p95 < <(percentiles < "$work/cold")

echo "accelerator: $("$pyro" doctor --json | grep -oE '"accel": "[a-z]+"' | cut -d'"' -f4)   runs: $runs"
printf "%-44s %10s %10s\n" "command" "p50 ms" "p95 ms"
printf "%-44s %10s %10s\n" "true (bare)" "$true_p50" "$true_p95"
if [ $have_runsc = 1 ]; then
    printf "%-44s %10s %10s\n" "runsc do true" "$runsc_p50" "$runsc_p95"
else
    echo "(runsc is not installed or cannot run here: apt-get install runsc)"
fi
printf "%-44s %10s %10s\n" "pyro run debian:12 -- true" "$pyro_p50" "$pyro_p95"
printf "%-44s %10s %10s\n" "  same, booting (PYRO_FAST_START=0)" "$cold_p50" "$cold_p95"
echo
if [ $have_runsc = 1 ]; then
    echo "pyro / runsc:          p50 $(ratio "$pyro_p50" "$runsc_p50")x   p95 $(ratio "$pyro_p95" "$runsc_p95")x"
    echo "pyro booting / runsc:  p50 $(ratio "$cold_p50" "$runsc_p50")x   p95 $(ratio "$cold_p95" "$runsc_p95")x"
fi
echo "pyro / true:           p50 $(ratio "$pyro_p50" "$true_p50")x"

# Bare QEMU: start a microvm paused and quit at once.
read -r qemu_p50 _ < <(time_runs sh -c 'echo quit | qemu-system-x86_64 -M microvm,acpi=on -nodefaults -no-user-config -display none -S -monitor stdio' | percentiles)
echo
echo "breakdown (p50 ms):                             restored    booted"
printf "  %-44s %8s\n" "qemu process start + quit (bare)" "$qemu_p50"
for part in prepare boot guest_boot exec cleanup; do
    fast=$(awk -v k="${part}_ms" '$1 == k { print $2 }' "$work/fast.parts" | percentiles | cut -d' ' -f1)
    cold=$(awk -v k="${part}_ms" '$1 == k { print $2 }' "$work/cold.parts" | percentiles | cut -d' ' -f1)
    case $part in
        prepare) label="prepare (assets, environment, disk overlay)" ;;
        boot) label="boot or restore (to agent ready)" ;;
        guest_boot) label="  of which guest kernel start to agent" ;;
        exec) label="exec round trip of the command" ;;
        cleanup) label="cleanup (delete VM)" ;;
    esac
    printf "  %-44s %8s %9s\n" "$label" "$fast" "$cold"
done
