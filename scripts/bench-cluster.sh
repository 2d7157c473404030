#!/usr/bin/env bash
# Cluster benchmarks: S3 reads, a merge through real coordinator and worker processes, the
# coordinator's dispatch rate, and planning a 405B-shaped merge from headers.
#
# What it measures, in one run (the machine is small and shared: compare ratios and medians,
# not absolute numbers across runs). Targets are in brackets; nothing here asserts them.
#   1. S3 read throughput against s3s-fs [shardmerge >= 80% of a plain loop]: the bench
#      model files as objects, read by `Storage::read_range` with the worker's default
#      chunking (8 MiB GETs, 8 in flight) versus a plain object_store loop of 8 MiB
#      `get_range` calls, 8 in flight (`buffer_unordered`). Also read_range tensor by tensor
#      (sequentially; a worker prefetches several at once), and the plain loop ordered and
#      reassembled into one buffer (to attribute a gap). (bench/src/bin/bench_s3.rs)
#   2. The 0.5B-parameter bench family (`shardmerge synth`, as scripts/bench.sh) merged with
#      AutoMerger's DARE-TIES recipe (base + finetune-a, seed 42): the embedded `shardmerge
#      merge` on local files, then models on S3 through a real `shardmerge coordinator`
#      process and 1, then 2, `shardmerge worker` processes (`submit --wait`, output to
#      s3://out). Wall time and CPU of each process kind; every cluster output must be
#      byte-identical to the embedded one (cmp). The models are uploaded through the S3 API
#      first (bench/src/bin/s3_put.rs), not copied into the server's root.
#   3. Coordinator overhead [>= 10,000 dispatches/s with no-op units]: the lease -> report
#      cycle of the pure `Scheduler` in-process (10k and 100k units), and over real gRPC on
#      loopback against an in-process `Coordinator` served by tonic exactly as `server::serve`
#      does, 4 worker clients, runs capped at 5 s: journal fsyncs on disk and on tmpfs (to
#      separate them out), each as served (TCP_NODELAY on accepted sockets) and without it.
#      (bench/src/bin/bench_dispatch.rs)
#   4. Planning a Llama-3.1-405B-shaped DARE-TIES merge of 4 models from headers alone [< 2 s]:
#      sparse safetensors files (header + set_len, 191 shards per model, index.json,
#      config.json; bench/src/bin/make_405b_headers.rs), `shardmerge plan` wall time and
#      peak RSS; then the same models on S3 submitted to a fresh coordinator process (plan
#      from S3 headers, journal, one multipart upload per shard): submit latency and the
#      coordinator's peak RSS; the job is then cancelled.
# Prints a Markdown table and writes it to $BENCH_DIR/results.md (details in $BENCH_DIR/logs).
# Exit status 1 if a cluster output differs from the embedded one (the table is still written).
#
# Run:  scripts/bench-cluster.sh      (~12 min on 2 cores; uses scripts/bench.sh's models, and
#                                      ~2.2 GB more while the S3 root holds uploaded copies)
# Env:
#   BENCH_DIR      work dir (default <repo>/target/bench-cluster): logs/, results.md, kv.txt
#   BENCH_MODELS   the synthetic family (default <repo>/target/bench/models; generated if absent)
#   BENCH_REPEAT   repeats of every timed measurement (default 3); medians are reported
#   BENCH_ONLY     subset of "s3 merge dispatch plan" (default: all four)
#   BENCH_KEEP=1   keep the S3 root, the outputs, the journal and the sparse 405B models
#                  (3.2 TB apparent size, a few MB on disk)
#   S3_PORT        port for s3s-fs on 127.0.0.1 (default: a free one)
# Needs GNU time at /usr/bin/time (installed with apt-get if missing) and the s3s-fs binary
# (scripts/install-s3s-fs.sh installs it into target/tools on first use, ~2-4 min).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
bench="${BENCH_DIR:-$repo/target/bench-cluster}"
models="${BENCH_MODELS:-$repo/target/bench/models}"
repeat="${BENCH_REPEAT:-3}"
only="${BENCH_ONLY:-s3 merge dispatch plan}"
mkdir -p "$bench/logs"
bench="$(cd "$bench" && pwd)"
logs="$bench/logs"
kvfile="$bench/kv.txt"
: >"$kvfile"
status=0

# shellcheck source=lib.sh
. "$here/lib.sh"
ensure_gnu_time
# Field of /usr/bin/time -v output: wall seconds or peak RSS in MB.
time_wall() { awk -F': ' '/Elapsed \(wall clock\)/ { k = split($NF, p, ":"); w = 0; for (i = 1; i <= k; i++) w = w * 60 + p[i]; printf "%.3f", w }' "$1"; }
time_rss_mb() { awk -F': ' '/Maximum resident/ { printf "%.0f", $NF / 1024 }' "$1"; }

pids=()
s3root=""
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ -n "$s3root" && "${BENCH_KEEP:-0}" != 1 ]]; then rm -rf "$s3root"; fi
    if [[ "${BENCH_KEEP:-0}" != 1 ]]; then rm -rf "$bench/405b" "$bench/out" "$bench/state-merge"; fi
}
trap cleanup EXIT

echo "== building release binaries" >&2
cargo build --release --quiet --manifest-path "$repo/Cargo.toml" -p shardmerge-coordinator --bin shardmerge
cargo build --release --quiet --manifest-path "$repo/Cargo.toml" -p shardmerge-bench --bins
rel="$repo/target/release"
sm="$rel/shardmerge"
s3fs="$("$here/install-s3s-fs.sh")"

if [[ ! -f "$models/base/model.safetensors" || ! -f "$models/finetune-a/model.safetensors" ]]; then
    echo "== generating synthetic models in $models" >&2
    rm -rf "$models"
    "$sm" synth "$models" >&2
    touch "$models/.complete"
fi

# An S3 server with a temp root: bucket `models` gets the family, `out` the outputs.
s3root="$(mktemp -d "$bench/s3root.XXXXXX")"
mkdir -p "$s3root/models" "$s3root/out"
s3_port="${S3_PORT:-$(free_port)}"
export AWS_ENDPOINT="http://127.0.0.1:$s3_port" AWS_ACCESS_KEY_ID=shardmerge-bench \
    AWS_SECRET_ACCESS_KEY=shardmerge-bench-secret AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
unset SHARDMERGE_TOKEN SHARDMERGE_TOKEN_FILE SHARDMERGE_WORKER_TOKEN SHARDMERGE_WORKER_TOKEN_FILE SHARDMERGE_ALLOW_LOCATION
"$s3fs" --host 127.0.0.1 --port "$s3_port" --access-key "$AWS_ACCESS_KEY_ID" \
    --secret-key "$AWS_SECRET_ACCESS_KEY" "$s3root" >"$logs/s3s-fs.log" 2>&1 &
s3_pid=$!
pids+=("$s3_pid")
wait_port "$s3_port"
echo "== s3s-fs on $AWS_ENDPOINT (root $s3root)" >&2
if want s3 || want merge; then
    # Uploaded, not copied into the root: s3s-fs keeps an object's ETag in a sidecar written at
    # upload; without one it hashes the whole file on every HEAD and GET (see s3_put.rs).
    "$rel/s3_put" "$models/base" s3://models/base "$models/finetune-a" s3://models/finetune-a 2>&1 |
        tee "$logs/s3_put.log" >&2
    cat "$s3root"/models/*/*.safetensors "$models"/base/*.safetensors "$models"/finetune-a/*.safetensors \
        >/dev/null # warm page cache
fi

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"

# Starts a coordinator with its journal in $1; sets coord_pid and coord_url.
start_coordinator() {
    local log="$logs/coordinator-$2.log" i
    "$sm" coordinator --listen 127.0.0.1:0 --state-dir "$1" >"$log" 2>&1 &
    coord_pid=$!
    pids+=("$coord_pid")
    for ((i = 0; i < 200; i++)); do
        coord_url="$(sed -n 's/.*listening on \([0-9.:]*\).*/http:\/\/\1/p' "$log" | head -n 1)"
        [[ -n "$coord_url" ]] && return 0
        sleep 0.05
    done
    echo "error: coordinator did not start; see $log" >&2
    return 1
}

# ---------------------------------------------------------------- 1. S3 read throughput
if want s3; then
    echo "== 1. S3 read throughput ($repeat repeats)" >&2
    "$rel/bench_s3" --repeat "$repeat" s3://models/base/model.safetensors s3://models/finetune-a/model.safetensors \
        2>"$logs/bench_s3.log" | tee -a "$kvfile" >&2
fi

# ---------------------------------------------------------------- 2. merge: embedded vs cluster
if want merge; then
    echo "== 2. 0.5B DARE-TIES merge: embedded vs cluster ($repeat repeats each)" >&2
    recipe() {
        cat <<EOF
models:
  - model: $1/base
    # no parameters necessary for base model
  - model: $1/finetune-a
    parameters:
      density: 0.53
      weight: 0.6
merge_method: dare_ties
base_model: $1/base
parameters:
  int8_mask: true
dtype: bfloat16
EOF
    }
    recipe "$models" >"$bench/dare-ties-local.yml"
    recipe "s3://models" >"$bench/dare-ties-s3.yml"
    embedded_out="$bench/out/embedded"
    walls=()
    for ((r = 1; r <= repeat; r++)); do
        rm -rf "$embedded_out"
        sync
        /usr/bin/time -v -o "$logs/embedded-$r.time" "$sm" merge "$bench/dare-ties-local.yml" "$embedded_out" \
            --random-seed 42 --quiet >"$logs/embedded-$r.log" 2>&1
        walls+=("$(time_wall "$logs/embedded-$r.time")")
        kv merge_embedded_rss_mb "$(time_rss_mb "$logs/embedded-$r.time")"
        echo "   embedded run $r: ${walls[-1]} s" >&2
    done
    kv merge_embedded_wall "$(printf '%s\n' "${walls[@]}" | median)"
    kv merge_embedded_runs "${walls[*]}"

    rm -rf "$bench/state-merge" # a fresh journal: nothing to resume
    start_coordinator "$bench/state-merge" merge
    echo "   coordinator at $coord_url" >&2
    worker_pids=()
    for nw in 1 2; do
        while ((${#worker_pids[@]} < nw)); do
            i=$((${#worker_pids[@]} + 1))
            "$sm" worker --coordinator "$coord_url" --name "bench-$i" >"$logs/worker-$i.log" 2>&1 &
            worker_pids+=($!)
            pids+=($!)
        done
        sleep 1 # let the new worker register
        walls=() cpu_w=() cpu_c=() cpu_s=()
        for ((r = 1; r <= repeat; r++)); do
            out="run-w$nw-$r"
            wc0=0
            for p in "${worker_pids[@]}"; do wc0="$(awk -v a="$wc0" -v b="$(cpu_of "$p")" 'BEGIN { print a + b }')"; done
            cc0="$(cpu_of "$coord_pid")" sc0="$(cpu_of "$s3_pid")"
            sync
            t0="$EPOCHREALTIME"
            if ! "$sm" submit "$bench/dare-ties-s3.yml" "s3://out/$out" --coordinator "$coord_url" --wait \
                --random-seed 42 >"$logs/submit-$out.log" 2>&1; then
                echo "error: cluster merge failed; see $logs/submit-$out.log" >&2
                tail -n 20 "$logs/submit-$out.log" >&2
                exit 1
            fi
            walls+=("$(secs_since "$t0")")
            wc1=0
            for p in "${worker_pids[@]}"; do wc1="$(awk -v a="$wc1" -v b="$(cpu_of "$p")" 'BEGIN { print a + b }')"; done
            cpu_w+=("$(awk -v a="$wc0" -v b="$wc1" 'BEGIN { printf "%.2f", b - a }')")
            cpu_c+=("$(awk -v a="$cc0" -v b="$(cpu_of "$coord_pid")" 'BEGIN { printf "%.2f", b - a }')")
            cpu_s+=("$(awk -v a="$sc0" -v b="$(cpu_of "$s3_pid")" 'BEGIN { printf "%.2f", b - a }')")
            same=identical
            for f in "$embedded_out"/*.safetensors "$embedded_out"/model.safetensors.index.json; do
                [[ -e "$f" ]] || continue
                if ! cmp -s "$f" "$s3root/out/$out/${f##*/}"; then same="DIFFERS (${f##*/})"; status=1; fi
            done
            echo "   $nw worker(s) run $r: ${walls[-1]} s, output $same" >&2
            kv "merge_w${nw}_cmp_$r" "$same"
            [[ "${BENCH_KEEP:-0}" == 1 ]] || rm -rf "${s3root:?}/out/$out"
        done
        kv merge_units "$(sed -n 's/.*units [0-9]*\/\([0-9]*\).*/\1/p' "$logs/submit-$out.log" | head -n 1)"
        kv "merge_w${nw}_wall" "$(printf '%s\n' "${walls[@]}" | median)"
        kv "merge_w${nw}_runs" "${walls[*]}"
        kv "merge_w${nw}_cpu_workers" "$(printf '%s\n' "${cpu_w[@]}" | median)"
        kv "merge_w${nw}_cpu_coord" "$(printf '%s\n' "${cpu_c[@]}" | median)"
        kv "merge_w${nw}_cpu_s3" "$(printf '%s\n' "${cpu_s[@]}" | median)"
    done
    kv merge_embedded_cpu "$(awk -F': ' '/User time|System time/ { s += $NF } END { printf "%.2f", s }' "$logs/embedded-$repeat.time")"
    for p in "${worker_pids[@]}" "$coord_pid"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
fi

# ---------------------------------------------------------------- 3. dispatch rate
if want dispatch; then
    echo "== 3. coordinator dispatch rate ($repeat repeats)" >&2
    "$rel/bench_dispatch" --mode sched --units 10000,100000 --batch 1,16,64 --repeat "$repeat" \
        2>"$logs/dispatch-sched.log" | tee -a "$kvfile" >&2
    shm=""
    if [[ -d /dev/shm && -w /dev/shm ]]; then shm="$(mktemp -d /dev/shm/shardmerge-bench.XXXXXX)"; fi
    # As `server::serve` serves (TCP_NODELAY on accepted sockets), then without it (as it was).
    for nodelay in "" --no-tcp-nodelay; do
        for where in disk tmpfs; do
            dir="$bench"
            if [[ "$where" == tmpfs ]]; then [[ -n "$shm" ]] || continue; dir="$shm"; fi
            label="$where${nodelay:+_nagle}"
            nd=()
            [[ -z "$nodelay" ]] || nd=("$nodelay")
            "$rel/bench_dispatch" --mode grpc --units 20000 --batch 1,16,64 --clients 4 --repeat "$repeat" \
                --max-secs 5 --state-dir "$dir" --label "$label" "${nd[@]}" \
                2>"$logs/dispatch-grpc-$label.log" | tee -a "$kvfile" >&2
        done
    done
    [[ -z "$shm" ]] || rm -rf "$shm"
fi

# ---------------------------------------------------------------- 4. 405B plan from headers
if want plan; then
    echo "== 4. planning a 405B-shaped DARE-TIES merge of 4 models ($repeat repeats)" >&2
    rm -rf "$bench/405b"
    "$rel/make_405b_headers" "$bench/405b" --models 4 --shards 191 >/dev/null 2>"$logs/make_405b.log"
    kv plan_files "$(find "$bench/405b" -name '*.safetensors' | wc -l)"
    kv plan_apparent_tb "$(du -sb --apparent-size "$bench/405b" | awk '{ printf "%.2f", $1 / 1e12 }')"
    kv plan_disk_mb "$(du -sk "$bench/405b" | awk '{ printf "%.1f", $1 / 1024 }')"
    recipe405() {
        cat <<EOF
models:
  - model: $1/base
  - model: $1/finetune-1
    parameters:
      density: 0.53
      weight: 0.6
  - model: $1/finetune-2
    parameters:
      density: 0.4
      weight: 0.3
  - model: $1/finetune-3
    parameters:
      density: 0.6
      weight: 0.2
merge_method: dare_ties
base_model: $1/base
parameters:
  int8_mask: true
dtype: bfloat16
EOF
    }
    recipe405 "$bench/405b" >"$bench/dare-ties-405b.yml"
    walls=() inner=() rss=()
    for ((r = 1; r <= repeat; r++)); do
        /usr/bin/time -v -o "$logs/plan-$r.time" "$sm" plan "$bench/dare-ties-405b.yml" "$bench/405b-out" \
            --random-seed 42 >"$logs/plan-$r.log" 2>&1
        walls+=("$(time_wall "$logs/plan-$r.time")")
        rss+=("$(time_rss_mb "$logs/plan-$r.time")")
        inner+=("$(sed -n 's/^planned in \([0-9.]*\)s.*/\1/p' "$logs/plan-$r.log")")
        echo "   plan run $r: ${walls[-1]} s wall, planned in ${inner[-1]} s, ${rss[-1]} MB peak RSS" >&2
    done
    kv plan_wall "$(printf '%s\n' "${walls[@]}" | median)"
    kv plan_runs "${walls[*]}"
    kv plan_inner "$(printf '%s\n' "${inner[@]}" | median)"
    kv plan_rss_mb "$(printf '%s\n' "${rss[@]}" | median)"
    kv plan_tasks "$(sed -n 's/^tasks: *\([0-9]*\).*/\1/p' "$logs/plan-1.log")"

    # The same models on S3, planned by a coordinator process at submission.
    # 3.2 TB cannot be uploaded: link the sparse files into the root and write the ETag sidecars
    # s3s-fs 0.14.1 would have written at upload (else each HEAD hashes a 4 GB file).
    mkdir -p "$s3root/m405"
    b64url() { printf %s "$1" | base64 -w0 | tr '+/' '-_' | tr -d '='; }
    for m in "$bench/405b"/*/; do cp -al "$m" "$s3root/m405/" 2>/dev/null || cp -a --sparse=always "$m" "$s3root/m405/"; done
    for f in "$s3root"/m405/*/*; do
        key="${f#"$s3root"/m405/}"
        echo '{"e_tag":"sparse-bench-object"}' >"$s3root/.bucket-$(b64url m405).object-$(b64url "$key").internal.json"
    done
    recipe405 "s3://m405" >"$bench/dare-ties-405b-s3.yml"
    walls=() hwm=() base_rss=()
    for ((r = 1; r <= repeat; r++)); do
        start_coordinator "$bench/state-405b-$r" "405b-$r"
        sleep 0.3
        base_rss+=("$(awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$coord_pid/status")")
        t0="$EPOCHREALTIME"
        job="$("$sm" submit "$bench/dare-ties-405b-s3.yml" "s3://out/405b-$r" --coordinator "$coord_url" \
            --random-seed 42 2>"$logs/submit-405b-$r.log")"
        walls+=("$(secs_since "$t0")")
        "$sm" status "$job" --coordinator "$coord_url" >>"$logs/submit-405b-$r.log" 2>&1 || true
        hwm+=("$(awk '/^VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$coord_pid/status")")
        "$sm" cancel "$job" --coordinator "$coord_url" >>"$logs/submit-405b-$r.log" 2>&1 || true
        echo "   coordinator submit run $r: ${walls[-1]} s, peak RSS ${hwm[-1]} MB (${base_rss[-1]} MB idle)" >&2
        sleep 0.5
        kill "$coord_pid" 2>/dev/null || true
        wait "$coord_pid" 2>/dev/null || true
        rm -rf "$bench/state-405b-$r"
    done
    kv plan_s3_submit "$(printf '%s\n' "${walls[@]}" | median)"
    kv plan_s3_submit_runs "${walls[*]}"
    kv plan_s3_coord_hwm_mb "$(printf '%s\n' "${hwm[@]}" | median)"
    kv plan_s3_coord_idle_mb "$(printf '%s\n' "${base_rss[@]}" | median)"
    kv plan_s3_units "$(sed -n 's/.*units [0-9]*\/\([0-9]*\).*/\1/p' "$logs/submit-405b-1.log" | head -n 1)"
fi

# ---------------------------------------------------------------- table
pct() { awk -v r="$1" 'BEGIN { if (r == "") print "n/a"; else printf "%.0f%%", r * 100 }'; }
verdict() { awk -v v="$1" -v t="$2" -v d="$3" 'BEGIN { if (v == "") print ""; else if ((d == "ge" && v + 0 >= t) || (d == "lt" && v + 0 < t)) print "meets"; else print "misses" }'; }
rate() { local v; v="$(get "$1")"; [[ -n "$v" ]] && printf "%'d/s" "$v" 2>/dev/null || echo "n/a"; }
{
    echo "# shardmerge cluster benchmarks"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" diff --quiet || echo '+dirty'),"
    echo "$(nproc) cores, $(free -g | awk '/^Mem:/ { print $2 }') GB RAM, $("$sm" --version), s3s-fs 0.14.1 on loopback, medians of $repeat run(s),"
    echo "load average (1/5/15 min) $load_before before, $(cut -d' ' -f1-3 /proc/loadavg) after. Every process shares the same 2 cores."
    echo
    echo "| # | measurement | result | target |"
    echo "|---|---|---|---|"
    if want s3; then
        echo "| 1 | S3 read, plain object_store loop (8 MiB GETs, 8 in flight), $(get s3_objects) objects / $(get s3_gb) GB | $(get s3_plain_gbps) GB/s | reference |"
        echo "| 1 | S3 read, shardmerge \`Storage::read_range\` whole object (default chunking) | $(get s3_shardmerge_gbps) GB/s = **$(pct "$(get s3_shardmerge_ratio)")** of plain (per run: $(get s3_shardmerge_ratio_runs)) | >= 80%: $(verdict "$(get s3_shardmerge_ratio)" 0.8 ge) |"
        echo "| 1 | S3 read, plain loop but in order + copied into one buffer (what \`read_range\` returns) | $(get s3_plain_ordered_gbps) GB/s = $(pct "$(get s3_plain_ordered_ratio)") of plain | (diagnostic) |"
        echo "| 1 | S3 read, shardmerge \`read_range\` tensor by tensor ($(get s3_tensors) tensors) | $(get s3_per_tensor_gbps) GB/s = $(pct "$(get s3_per_tensor_ratio)") of plain | (how a worker reads) |"
    fi
    if want merge; then
        echo "| 2 | 0.5B DARE-TIES, embedded \`shardmerge merge\` (local files) | $(get merge_embedded_wall) s wall, $(get merge_embedded_cpu) s CPU, $(get merge_embedded_rss_mb) MB peak RSS (runs: $(get merge_embedded_runs)) | reference |"
        for nw in 1 2; do
            cmpres="$(grep "^merge_w${nw}_cmp_" "$kvfile" | cut -d= -f2 | sort -u | paste -sd, -)"
            echo "| 2 | same, S3 -> coordinator + $nw worker process(es) -> S3 ($(get merge_units) units) | $(get "merge_w${nw}_wall") s wall (runs: $(get "merge_w${nw}_runs")); CPU: workers $(get "merge_w${nw}_cpu_workers") s, coordinator $(get "merge_w${nw}_cpu_coord") s, s3s-fs $(get "merge_w${nw}_cpu_s3") s; output $cmpres | bytes = embedded |"
        done
    fi
    if want dispatch; then
        for n in 10000 100000; do
            echo "| 3 | dispatch, in-process \`Scheduler\`, $n units, lease batch 1 / 16 / 64 | $(rate "dispatch_sched_n${n}_b1") / $(rate "dispatch_sched_n${n}_b16") / $(rate "dispatch_sched_n${n}_b64") | >= 10,000/s: $(verdict "$(get "dispatch_sched_n${n}_b16")" 10000 ge) |"
        done
        for l in disk tmpfs disk_nagle tmpfs_nagle; do
            [[ -n "$(get "dispatch_grpc_${l}_n20000_b1")" ]] || continue
            how="as served: TCP_NODELAY, group-committed journal"
            [[ "$l" == *_nagle ]] && how="without TCP_NODELAY on accepted sockets"
            echo "| 3 | dispatch over gRPC (loopback, 4 clients, journal on ${l%_nagle}, $how), batch 1 / 16 / 64 | $(rate "dispatch_grpc_${l}_n20000_b1") / $(rate "dispatch_grpc_${l}_n20000_b16") / $(rate "dispatch_grpc_${l}_n20000_b64") | >= 10,000/s: $(verdict "$(get "dispatch_grpc_${l}_n20000_b64")" 10000 ge) |"
        done
    fi
    if want plan; then
        echo "| 4 | \`shardmerge plan\`, 405B-shaped DARE-TIES of 4 models ($(get plan_files) sparse files, $(get plan_apparent_tb) TB apparent, $(get plan_disk_mb) MB on disk), $(get plan_tasks) tasks | **$(get plan_wall) s** wall (planned in $(get plan_inner) s; runs: $(get plan_runs)), **$(get plan_rss_mb) MB** peak RSS | < 2 s: $(verdict "$(get plan_wall)" 2 lt) |"
        echo "| 4 | same models on S3, \`submit\` to a fresh coordinator process (plan from S3 headers, journal, one multipart upload per output shard), $(get plan_s3_units) units | $(get plan_s3_submit) s submit latency (runs: $(get plan_s3_submit_runs)); coordinator peak RSS $(get plan_s3_coord_hwm_mb) MB ($(get plan_s3_coord_idle_mb) MB idle) | |"
    fi
    echo
    echo "Details per run: $logs (bench_s3.log, dispatch-*.log, submit-*.log, plan-*.log)."
} | tee "$bench/results.md"
exit "$status"
