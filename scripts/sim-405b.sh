#!/usr/bin/env bash
# 405B-scale simulation of the coordinator (issue 9, item 5; bench/src/bin/sim_405b/main.rs).
#
# Plans a 4-model DARE-TIES merge of a Llama-3.1-405B-shaped model (base + 3 fine-tunes, sparse
# safetensors files: headers only, 3.2 TB apparent, a few MB on disk) with the real planner and
# unit splitter, then drives the real Scheduler and journal (real fsyncs, group-committed) with
# simulated workers in simulated time: each "runs" a unit for (input + output bytes) / bandwidth.
# Prints coordinator CPU (plan, submit, dispatch), peak RSS, dispatch rate, and the simulated
# makespan against the ideal (total bytes / (workers x bandwidth)). Asserts nothing. ~1 s after
# the build.
#
# Run:  scripts/sim-405b.sh                    (the issue's defaults, below)
#       scripts/sim-405b.sh --workers 4000 --json
# Env:
#   SIM_WORKERS    simulated workers (default 1000)
#   SIM_BANDWIDTH  bytes/s per worker, k/m/b suffixes (default 200m = 200 MB/s)
#   SIM_UNIT_SIZE  target output bytes per work unit (default 64m, the coordinator's --unit-size)
#   SIM_DIR        work dir: inputs kept and reused in $SIM_DIR/models, journal in $SIM_DIR/state
#                  (default: a temporary directory, removed at the end)
# Any arguments are passed on to sim_405b (see `sim_405b --help`), after the defaults above.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cargo build --release --quiet --manifest-path "$repo/Cargo.toml" -p shardmerge-bench --bin sim_405b
args=(--workers "${SIM_WORKERS:-1000}" --bandwidth "${SIM_BANDWIDTH:-200m}" --unit-size "${SIM_UNIT_SIZE:-64m}")
[[ -z "${SIM_DIR:-}" ]] || args+=(--dir "$SIM_DIR")
exec "$repo/target/release/sim_405b" "${args[@]}" "$@"
