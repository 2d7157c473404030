#!/usr/bin/env bash
# Memory-budget benchmark (issue 9): merging tensors far larger than the memory budget, embedded
# and on a cluster, and what the cluster costs against the embedded merge.
#
# What it measures, in one run (the machine is small and shared: compare ratios, not absolute
# numbers across runs; the load average is printed with the table). Targets are in brackets;
# nothing here asserts them, but every output must be byte-identical to its reference.
#   1. Memory: a synthetic bf16 Llama family whose embedding and untied lm_head are 2 GiB each per
#      input (`shardmerge synth --hidden 8192 --vocab 131072 --layers 1 --intermediate 1024`:
#      4.9 GB per model, base + finetune-a + finetune-b = 14.6 GB, generated once under
#      $BENCH_DIR/models), merged with
#        - DARE-TIES as coordinator/tests/support/mod.rs::synth_config (base; finetune-a density
#          0.53 weight 0.6; finetune-b density 0.4 weight 0.3; int8_mask; bf16), and
#        - SLERP of base + finetune-a, t 0.5 (with one layer, bench.sh's t gradients would be
#          degenerate; the embedding and lm_head take t 0.5 in both),
#      all with `--random-seed 42`, each run as
#        a. embedded `shardmerge merge`, no limit: wall, CPU (user + sys), peak RSS (GNU time);
#           its output is the reference for b-d;
#        b. embedded `shardmerge merge --memory-limit $BENCH_MEMORY_LIMIT` [peak RSS <= limit];
#        c. cluster on the shared filesystem (local models, local output): a `shardmerge
#           coordinator --worker-memory-limit LIMIT` and 2 `shardmerge worker --memory-limit
#           LIMIT` processes, all fresh for the run: wall of `submit --wait`, CPU and peak RSS of
#           each worker [<= limit] and of the coordinator;
#        d. the same with the models on S3 (s3s-fs on loopback, uploaded through the S3 API by
#           bench/src/bin/s3_put.rs, never copied into its root) and the output to S3; the
#           s3s-fs process's CPU is reported too. Skipped with BENCH_S3=0.
#      Peak RSS is the kernel's high-water mark of the whole resident set (ru_maxrss), so it
#      includes file pages of memory-mapped inputs that the process touched, not only its heap;
#      the peaks of its anonymous and file-backed parts are sampled every 0.2 s from
#      /proc/PID/status (RssAnon, RssFile) and shown beside it.
#      Limits take k/m/b suffixes in powers of 1000 like the CLI: 512m = 512e6 bytes = 488 MiB.
#   2. Cluster overhead [cluster / embedded wall <= 1.15x]: scripts/bench.sh's 0.5B family
#      (its models in target/bench/models, generated with its synth arguments if absent) merged
#      with bench.sh's DARE-TIES recipe (base + finetune-a), embedded `shardmerge merge` versus a
#      coordinator + 2 worker processes on the shared filesystem (no memory limits; the processes
#      stay up across repeats), alternating embedded and cluster runs, BENCH_REPEAT times each:
#      median walls, their ratio, and CPU. Every cluster output must equal that repeat's
#      embedded output.
# Every run gets `sync` first and warm inputs (read once before the phase). Prints a Markdown
# table and writes it to $BENCH_DIR/results.md (logs and GNU time files in $BENCH_DIR/logs).
# Exit status 1 if an output differs from its reference or a run fails (the table is still
# written, with the failure and its log).
#
# Run:  scripts/bench-memory.sh
#   ~17 min on the 2-core VM (load average ~8-12 from other work) with the models present: part 1
#   ~14 min, of which the upload to S3 takes 2.5 min and the 4 S3 runs ~7 min (BENCH_S3=0 saves
#   ~10 min); part 2 ~1.5 min. Generating the large family first adds ~5-8 min. Disk: 14.6 GB
#   of models (kept), up to 2 merge outputs of 4.9 GB at a time, and 14.6 GB more while the S3
#   root holds the uploaded copies (removed at exit): ~35 GB free at the peak.
# Env:
#   BENCH_DIR            work dir (default <repo>/target/bench-memory): models/, *.yml, logs/,
#                        kv.txt, results.md
#   BENCH_SYNTH          synth arguments of the large family (default above); the models are
#                        regenerated when they change
#   BENCH_MEMORY_LIMIT   the budget of runs b-d (default 512m)
#   BENCH_RECIPES        subset of "dare-ties slerp" (default both)
#   BENCH_ONLY           subset of "memory overhead" (default both)
#   BENCH_S3=0           skip run d (no s3s-fs, no upload)
#   BENCH_MODELS         the 0.5B family of part 2 (default <repo>/target/bench/models)
#   BENCH_REPEAT         repeats of part 2 (default 3); part 1 runs once per recipe and mode
#   BENCH_TIMEOUT        seconds before a merge or submit is abandoned as failed (default 1800)
#   BENCH_BUILD=0        use target/release/shardmerge (and s3_put) as built, without cargo build
#                        (e.g. while the work tree does not compile); results.md gives its mtime
#   BENCH_KEEP=1         keep the outputs, the journals and the S3 root
#   S3_PORT              port for s3s-fs on 127.0.0.1 (default: a free one)
# SHARDMERGE_* variables that would change what is measured (limits, chunk and unit sizes,
# workers, threads, seeds, tokens) are unset. Needs GNU time at /usr/bin/time (installed with
# apt-get if missing) and, for run d, the s3s-fs binary (scripts/install-s3s-fs.sh installs it
# into target/tools on first use, ~2-4 min). The binaries are copied to $BENCH_DIR/bin first, so
# that a rebuild of target/release during the run (by other work) cannot change what is measured.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
bench="${BENCH_DIR:-$repo/target/bench-memory}"
synth_args="${BENCH_SYNTH:---hidden 8192 --vocab 131072 --layers 1 --intermediate 1024}"
limit="${BENCH_MEMORY_LIMIT:-512m}"
recipes="${BENCH_RECIPES:-dare-ties slerp}"
only="${BENCH_ONLY:-memory overhead}"
use_s3="${BENCH_S3:-1}"
small_models="${BENCH_MODELS:-$repo/target/bench/models}"
repeat="${BENCH_REPEAT:-3}"
timeout_s="${BENCH_TIMEOUT:-1800}"
keep="${BENCH_KEEP:-0}"
mkdir -p "$bench/logs" "$bench/out"
bench="$(cd "$bench" && pwd)"
models="$bench/models"
logs="$bench/logs"
out="$bench/out"
kvfile="$bench/kv.txt"
: >"$kvfile"
status=0
started="$(date -u '+%H:%M UTC')"

unset SHARDMERGE_MEMORY_LIMIT SHARDMERGE_WORKER_MEMORY_LIMIT SHARDMERGE_CHUNK_SIZE SHARDMERGE_UNIT_SIZE \
    SHARDMERGE_WORKERS SHARDMERGE_NUM_THREADS SHARDMERGE_SLOTS SHARDMERGE_RANDOM_SEED SHARDMERGE_OUT_SHARD_SIZE \
    SHARDMERGE_COORDINATOR SHARDMERGE_LISTEN SHARDMERGE_STATE_DIR SHARDMERGE_ALLOW_LOCATION \
    SHARDMERGE_TOKEN SHARDMERGE_TOKEN_FILE SHARDMERGE_WORKER_TOKEN SHARDMERGE_WORKER_TOKEN_FILE \
    SHARDMERGE_LOG_FORMAT SHARDMERGE_TLS_CA

# shellcheck source=lib.sh
. "$here/lib.sh"
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
# Bytes of a size with an optional k/m/b suffix (powers of 1000, as shardmerge parses it).
size_bytes() {
    awk -v s="$1" 'BEGIN { m = 1; c = tolower(substr(s, length(s)))
        if (c == "k") m = 1e3; else if (c == "m") m = 1e6; else if (c == "b") m = 1e9
        if (m > 1) s = substr(s, 1, length(s) - 1); printf "%.0f", s * m }'
}
limit_bytes="$(size_bytes "$limit")"
limit_mib="$(awk -v b="$limit_bytes" 'BEGIN { printf "%.0f", b / 1048576 }')"
# The last line of a GNU time file written with -f '%e %U %S %M' (a process killed by a signal
# gets a "Command terminated by signal" line first): wall, CPU (user + sys), peak RSS in MiB.
t_wall() { tail -n 1 "$1" | awk '{ printf "%.2f", $1 }'; }
t_cpu() { tail -n 1 "$1" | awk '{ printf "%.2f", $2 + $3 }'; }
t_rss() { tail -n 1 "$1" | awk '{ printf "%.0f", $4 / 1024 }'; }
# "within" or "OVER by N%" for a peak RSS in MiB against the limit.
vs_limit() {
    awk -v r="$1" -v l="$limit_bytes" 'BEGIN { if (r == "") print "n/a"; else if (r * 1048576 <= l) print "within";
        else printf "**OVER** by %.0f%%\n", (r * 1048576 / l - 1) * 100 }'
}
# sample_rss ROOT_PID OUT: until ROOT_PID exits, every 0.2 s, the resident set of the deepest
# descendant of ROOT_PID (the shardmerge process under time and timeout) split into anonymous
# memory and file pages (mapped inputs, the binary); writes the maxima "ANON_MIB FILE_MIB" to OUT.
sample_rss() {
    set +e
    local root="$1" p c k v anon=0 file=0 a f
    while kill -0 "$root" 2>/dev/null; do
        p="$root"
        while true; do
            c=""
            read -r c _ 2>/dev/null <"/proc/$p/task/$p/children"
            [[ -n "$c" ]] || break
            p="$c"
        done
        a=0 f=0
        while read -r k v _; do
            case "$k" in RssAnon:) a="$v" ;; RssFile:) f="$v" ;; esac
        done 2>/dev/null <"/proc/$p/status"
        ((a > anon)) && anon="$a"
        ((f > file)) && file="$f"
        echo "$((anon / 1024)) $((file / 1024))" >"$2"
        sleep 0.2
    done
}
samplers=()
# "anon A / file F" from a sample_rss file.
split_rss() { [[ -s "$1" ]] && awk '{ printf "anon %s / file %s", $1, $2 }' "$1" || echo "n/a"; }

# Background processes run as `/usr/bin/time -o FILE CMD &`: `pids` holds the time processes;
# they are stopped by signalling their child (the measured process), so that time still writes
# the child's peak RSS.
pids=()
s3root=""
child_of() { pgrep -P "$1" | head -n 1; }
stop() {
    local t c
    for t in "$@"; do
        c="$(child_of "$t" || true)"
        if [[ -n "$c" ]]; then kill "$c" 2>/dev/null || true; fi
    done
    for t in "$@"; do wait "$t" 2>/dev/null || true; done
}
s3_pid=""
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    stop "${pids[@]}"
    if [[ -n "$s3_pid" ]]; then kill "$s3_pid" 2>/dev/null || true; wait "$s3_pid" 2>/dev/null || true; fi
    if [[ -n "$s3root" && "$keep" != 1 ]]; then rm -rf "$s3root"; fi
    if [[ "$keep" != 1 ]]; then rm -rf "$out" "$bench"/state-*; fi
}
trap cleanup EXIT
ensure_gnu_time

build="${BENCH_BUILD:-1}"
if [[ "$build" == 1 ]]; then
    echo "== building release binaries" >&2
    cargo build --release --quiet --manifest-path "$repo/Cargo.toml" -p shardmerge-coordinator --bin shardmerge
fi
rel="${CARGO_TARGET_DIR:-$repo/target}/release"
rev="$(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" diff --quiet || echo '+dirty')" # what was built
# Run copies, so that a rebuild of target/release during the run cannot change what is measured.
mkdir -p "$bench/bin"
cp "$rel/shardmerge" "$bench/bin/shardmerge"
sm="$bench/bin/shardmerge"
s3_on=0
if want memory && [[ "$use_s3" == 1 ]]; then
    s3_on=1
    if [[ "$build" == 1 || ! -x "$rel/s3_put" ]]; then
        cargo build --release --quiet --manifest-path "$repo/Cargo.toml" -p shardmerge-bench --bin s3_put
    fi
    cp "$rel/s3_put" "$bench/bin/s3_put"
    s3fs="$("$here/install-s3s-fs.sh")"
fi

# ---------------------------------------------------------------- models
if want memory; then
    # shellcheck disable=SC2086 # synth_args is a list of options
    if [[ ! -f "$models/.complete" || "$(cat "$models/.complete")" != "$synth_args" ]]; then
        echo "== generating the large synthetic family in $models (shardmerge synth $synth_args)" >&2
        rm -rf "$models"
        "$sm" synth "$models" $synth_args >&2
        echo "$synth_args" >"$models/.complete"
    fi
    layers="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["num_hidden_layers"])' "$models/base/config.json")"
    emb_gib="$(python3 -c 'import json, sys; c = json.load(open(sys.argv[1])); print("%.2f" % (c["vocab_size"] * c["hidden_size"] * 2 / 2**30))' "$models/base/config.json")"
    model_gb="$(stat -c %s "$models/base/model.safetensors" | awk '{ printf "%.2f", $1 / 1e9 }')"
fi
if want overhead && [[ ! -f "$small_models/.complete" ]]; then
    # scripts/bench.sh's synth step, with its (default) arguments.
    echo "== generating scripts/bench.sh's synthetic models in $small_models" >&2
    rm -rf "$small_models"
    "$sm" synth "$small_models" >&2
    touch "$small_models/.complete"
fi

# ---------------------------------------------------------------- recipes
dare_ties() { # PREFIX [with finetune-b]
    cat <<EOF
models:
  - model: $1/base
    # no parameters necessary for base model
  - model: $1/finetune-a
    parameters:
      density: 0.53
      weight: 0.6
EOF
    if [[ "${2:-}" == b ]]; then
        cat <<EOF
  - model: $1/finetune-b
    parameters:
      density: 0.4
      weight: 0.3
EOF
    fi
    cat <<EOF
merge_method: dare_ties
base_model: $1/base
parameters:
  int8_mask: true
dtype: bfloat16
EOF
}
slerp() { # PREFIX LAYERS
    cat <<EOF
slices:
  - sources:
      - model: $1/base
        layer_range: [0, $2]
      - model: $1/finetune-a
        layer_range: [0, $2]
merge_method: slerp
base_model: $1/base
parameters:
  t: 0.5
dtype: bfloat16
EOF
}
if want memory; then
    dare_ties "$models" b >"$bench/dare-ties-local.yml"
    dare_ties s3://models b >"$bench/dare-ties-s3.yml"
    slerp "$models" "$layers" >"$bench/slerp-local.yml"
    slerp s3://models "$layers" >"$bench/slerp-s3.yml"
fi
want overhead && dare_ties "$small_models" >"$bench/dare-ties-0.5b.yml"

# ---------------------------------------------------------------- helpers for runs
# same REF DIR: "identical" if every .safetensors file and the index of REF equal DIR's.
same() {
    local f res=identical n=0
    for f in "$1"/*.safetensors "$1"/model.safetensors.index.json; do
        [[ -e "$f" ]] || continue
        n=$((n + 1))
        if ! cmp -s "$f" "$2/${f##*/}"; then res="DIFFERS (${f##*/})"; fi
    done
    [[ "$n" -gt 0 ]] || res="no reference output"
    echo "$res"
}

# embedded LABEL CONFIG OUT [ARGS...]: one timed `shardmerge merge`; records LABEL_{wall,cpu,rss,ok}.
embedded() {
    local label="$1" cfg="$2" dir="$3" log="$logs/$1"
    shift 3
    rm -rf "$dir"
    mkdir -p "${dir%/*}"
    sync
    echo "== $label: shardmerge merge $* (load $(loadavg))" >&2
    # timeout runs under time: time reports the larger peak RSS of the two and their CPU.
    local rc=0 tp sp
    rm -f "$log.rss"
    /usr/bin/time -o "$log.time" -f '%e %U %S %M' timeout "$timeout_s" \
        "$sm" merge "$cfg" "$dir" --random-seed 42 --quiet "$@" >"$log.log" 2>&1 &
    tp=$!
    sample_rss "$tp" "$log.rss" &
    sp=$!
    wait "$tp" || rc=$?
    wait "$sp" || true
    if [[ "$rc" == 0 ]]; then
        kv "${label}_ok" 1
    else
        echo "error: $label failed (exit $rc); see $log.log" >&2
        tail -n 20 "$log.log" >&2
        kv "${label}_ok" "FAILED (exit $rc, see $log.log)"
        status=1
    fi
    if [[ -s "$log.time" ]]; then
        kv "${label}_wall" "$(t_wall "$log.time")"
        kv "${label}_cpu" "$(t_cpu "$log.time")"
        kv "${label}_rss" "$(t_rss "$log.time")"
    fi
    kv "${label}_split" "$(split_rss "$log.rss")"
    echo "   $(get "${label}_wall") s wall, $(get "${label}_cpu") s CPU, $(get "${label}_rss") MiB peak RSS ($(get "${label}_split"))" >&2
}

# start_coordinator LABEL STATE_DIR [ARGS...]: sets coord (the time process) and coord_url.
start_coordinator() {
    local label="$1" state="$2" log="$logs/$1-coordinator" i
    shift 2
    rm -rf "$state"
    /usr/bin/time -o "$log.time" -f '%e %U %S %M' \
        "$sm" coordinator --listen 127.0.0.1:0 --state-dir "$state" "$@" >"$log.log" 2>&1 &
    coord=$!
    pids+=("$coord")
    sample_rss "$coord" "$log.rss" &
    samplers+=($!)
    for ((i = 0; i < 200; i++)); do
        coord_url="$(sed -n 's/.*listening on \([0-9.:]*\).*/http:\/\/\1/p' "$log.log" | head -n 1)"
        [[ -n "$coord_url" ]] && return 0
        sleep 0.05
    done
    echo "error: coordinator did not start; see $log.log" >&2
    return 1
}

# start_workers LABEL N [ARGS...]: sets workers (the time processes).
start_workers() {
    local label="$1" n="$2" i
    shift 2
    workers=()
    for ((i = 1; i <= n; i++)); do
        /usr/bin/time -o "$logs/$label-worker-$i.time" -f '%e %U %S %M' \
            "$sm" worker --coordinator "$coord_url" --name "$label-$i" "$@" >"$logs/$label-worker-$i.log" 2>&1 &
        workers+=($!)
        pids+=($!)
        sample_rss "$!" "$logs/$label-worker-$i.rss" &
        samplers+=($!)
    done
    sleep 1 # let the workers register
}

# submit LABEL CONFIG OUT_URI: timed `submit --wait`; records LABEL_{wall,ok,units}.
submit() {
    local label="$1" cfg="$2" dst="$3" log="$logs/$1-submit.log" t0
    sync
    echo "== $label: submit --wait to $coord_url (load $(loadavg))" >&2
    local rc=0
    t0="$EPOCHREALTIME"
    timeout "$timeout_s" "$sm" submit "$cfg" "$dst" --coordinator "$coord_url" --wait --random-seed 42 \
        >"$log" 2>&1 || rc=$?
    if [[ "$rc" == 0 ]]; then
        kv "${label}_ok" 1
    else
        echo "error: $label failed (exit $rc); see $log and $logs/${label%-[0-9]*}-*.log" >&2
        tail -n 20 "$log" >&2
        kv "${label}_ok" "FAILED (exit $rc, see $log)"
        status=1
    fi
    kv "${label}_wall" "$(secs_since "$t0" 2)"
    kv "${label}_units" "$(sed -n 's/.*units [0-9]*\/\([0-9]*\).*/\1/p' "$log" | tail -n 1)"
    echo "   $(get "${label}_wall") s wall" >&2
}

# cluster LABEL CONFIG OUT_URI: fresh coordinator (--worker-memory-limit) and 2 workers
# (--memory-limit), one job; records wall, and CPU and peak RSS of every process.
cluster() {
    local label="$1" cfg="$2" dst="$3" i s3c0=""
    start_coordinator "$label" "$bench/state-$label" --worker-memory-limit "$limit"
    start_workers "$label" 2 --memory-limit "$limit"
    [[ "$dst" != s3://* ]] || s3c0="$(cpu_of "$s3_pid")"
    submit "$label" "$cfg" "$dst"
    [[ -z "$s3c0" ]] || kv "${label}_cpu_s3" "$(awk -v a="$s3c0" -v b="$(cpu_of "$s3_pid")" 'BEGIN { printf "%.2f", b - a }')"
    stop "${workers[@]}"
    stop "$coord"
    wait "${samplers[@]}" 2>/dev/null || true
    samplers=()
    for i in 1 2; do
        kv "${label}_w${i}_rss" "$(t_rss "$logs/$label-worker-$i.time")"
        kv "${label}_w${i}_split" "$(split_rss "$logs/$label-worker-$i.rss")"
        kv "${label}_w${i}_cpu" "$(t_cpu "$logs/$label-worker-$i.time")"
    done
    kv "${label}_coord_rss" "$(t_rss "$logs/$label-coordinator.time")"
    kv "${label}_coord_cpu" "$(t_cpu "$logs/$label-coordinator.time")"
    echo "   workers $(get "${label}_w1_rss") / $(get "${label}_w2_rss") MiB peak RSS, coordinator $(get "${label}_coord_rss") MiB" >&2
}

# ---------------------------------------------------------------- S3 server
if [[ "$s3_on" == 1 ]]; then
    s3root="$(mktemp -d "$bench/s3root.XXXXXX")"
    mkdir -p "$s3root/models" "$s3root/out"
    s3_port="${S3_PORT:-$(free_port)}"
    export AWS_ENDPOINT="http://127.0.0.1:$s3_port" AWS_ACCESS_KEY_ID=shardmerge-bench \
        AWS_SECRET_ACCESS_KEY=shardmerge-bench-secret AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
    "$s3fs" --host 127.0.0.1 --port "$s3_port" --access-key "$AWS_ACCESS_KEY_ID" \
        --secret-key "$AWS_SECRET_ACCESS_KEY" "$s3root" >"$logs/s3s-fs.log" 2>&1 &
    s3_pid=$!
    wait_port "$s3_port"
    echo "== s3s-fs on $AWS_ENDPOINT (root $s3root); uploading the large family through the S3 API" >&2
    t0="$EPOCHREALTIME"
    # Uploaded, not copied into the root: s3s-fs keeps an object's ETag in a sidecar written at
    # upload; without one it hashes the whole file on every HEAD and GET (see s3_put.rs).
    "$bench/bin/s3_put" "$models/base" s3://models/base "$models/finetune-a" s3://models/finetune-a \
        "$models/finetune-b" s3://models/finetune-b 2>&1 | tee "$logs/s3_put.log" >&2
    kv s3_upload_s "$(secs_since "$t0" 2)"
fi

# ---------------------------------------------------------------- 1. memory
if want memory; then
    kv load_memory_before "$(loadavg)"
    echo "== 1. memory: $(echo "$recipes" | wc -w) recipe(s) on the large family, limit $limit" >&2
    for recipe in $recipes; do
        ref="$out/$recipe-embedded"
        cur="$out/$recipe-run"
        inputs=("$models/base/model.safetensors" "$models/finetune-a/model.safetensors")
        [[ "$recipe" == dare-ties ]] && inputs+=("$models/finetune-b/model.safetensors")
        cat "${inputs[@]}" >/dev/null # warm page cache
        embedded "$recipe-embedded" "$bench/$recipe-local.yml" "$ref"
        embedded "$recipe-embedded-limit" "$bench/$recipe-local.yml" "$cur" --memory-limit "$limit"
        kv "$recipe-embedded-limit_cmp" "$(same "$ref" "$cur")"
        rm -rf "$cur"
        cat "${inputs[@]}" >/dev/null
        cluster "$recipe-cluster" "$bench/$recipe-local.yml" "$cur"
        kv "$recipe-cluster_cmp" "$(same "$ref" "$cur")"
        rm -rf "$cur"
        if [[ "$s3_on" == 1 ]]; then
            cat "${inputs[@]/#"$models"/"$s3root/models"}" >/dev/null
            cluster "$recipe-s3" "$bench/$recipe-s3.yml" "s3://out/$recipe"
            kv "$recipe-s3_cmp" "$(same "$ref" "$s3root/out/$recipe")"
            [[ "$keep" == 1 ]] || rm -rf "${s3root:?}/out/$recipe"
        fi
        for l in embedded-limit cluster s3; do
            c="$(get "$recipe-${l}_cmp")"
            [[ -n "$c" ]] || continue
            echo "   $recipe-$l output: $c" >&2
            [[ "$c" == identical ]] || status=1
        done
        [[ "$keep" == 1 ]] || rm -rf "$ref"
    done
    kv load_memory_after "$(loadavg)"
fi
if [[ -n "$s3root" ]]; then
    kill "$s3_pid" 2>/dev/null || true
    wait "$s3_pid" 2>/dev/null || true
    s3_pid=""
    [[ "$keep" == 1 ]] || { rm -rf "$s3root"; s3root=""; }
fi

# ---------------------------------------------------------------- 2. cluster overhead
if want overhead; then
    echo "== 2. overhead: 0.5B DARE-TIES, embedded vs coordinator + 2 workers ($repeat repeats each)" >&2
    cat "$small_models"/base/*.safetensors "$small_models"/finetune-a/*.safetensors >/dev/null
    kv load_overhead_before "$(loadavg)"
    start_coordinator overhead "$bench/state-overhead"
    start_workers overhead 2
    ew=() cw=() ec=() cc=() wc=()
    for ((r = 1; r <= repeat; r++)); do
        embedded "overhead-embedded-$r" "$bench/dare-ties-0.5b.yml" "$out/overhead-embedded"
        ew+=("$(get "overhead-embedded-${r}_wall")") ec+=("$(get "overhead-embedded-${r}_cpu")")
        w0=0
        for p in "${workers[@]}"; do w0="$(awk -v a="$w0" -v b="$(cpu_of "$(child_of "$p")")" 'BEGIN { print a + b }')"; done
        c0="$(cpu_of "$(child_of "$coord")")"
        rm -rf "$out/overhead-cluster"
        submit "overhead-cluster-$r" "$bench/dare-ties-0.5b.yml" "$out/overhead-cluster"
        cw+=("$(get "overhead-cluster-${r}_wall")")
        w1=0
        for p in "${workers[@]}"; do w1="$(awk -v a="$w1" -v b="$(cpu_of "$(child_of "$p")")" 'BEGIN { print a + b }')"; done
        wc+=("$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.2f", b - a }')")
        cc+=("$(awk -v a="$c0" -v b="$(cpu_of "$(child_of "$coord")")" 'BEGIN { printf "%.2f", b - a }')")
        c="$(same "$out/overhead-embedded" "$out/overhead-cluster")"
        kv "overhead_cmp_$r" "$c"
        echo "   cluster output: $c" >&2
        [[ "$c" == identical ]] || status=1
        rm -rf "$out/overhead-cluster"
    done
    stop "${workers[@]}"
    stop "$coord"
    wait "${samplers[@]}" 2>/dev/null || true
    samplers=()
    kv overhead_embedded_wall "$(printf '%s\n' "${ew[@]}" | median)"
    kv overhead_embedded_runs "${ew[*]}"
    kv overhead_embedded_cpu "$(printf '%s\n' "${ec[@]}" | median)"
    kv overhead_cluster_wall "$(printf '%s\n' "${cw[@]}" | median)"
    kv overhead_cluster_runs "${cw[*]}"
    kv overhead_cluster_cpu_workers "$(printf '%s\n' "${wc[@]}" | median)"
    kv overhead_cluster_cpu_coord "$(printf '%s\n' "${cc[@]}" | median)"
    kv overhead_ratio "$(awk -v c="$(get overhead_cluster_wall)" -v e="$(get overhead_embedded_wall)" 'BEGIN { if (e > 0) printf "%.2f", c / e }')"
    kv overhead_ratio_runs "$(paste -d' ' <(printf '%s\n' "${cw[@]}") <(printf '%s\n' "${ew[@]}") |
        awk '{ printf "%s%.2f", (NR > 1 ? " " : ""), ($2 > 0 ? $1 / $2 : 0) }')"
    kv overhead_units "$(get "overhead-cluster-${repeat}_units")"
    kv overhead_worker_rss "$(for i in 1 2; do t_rss "$logs/overhead-worker-$i.time"; echo; done | paste -sd/ -)"
    kv overhead_coord_rss "$(t_rss "$logs/overhead-coordinator.time")"
    kv load_overhead_after "$(loadavg)"
fi

# ---------------------------------------------------------------- table
okmark() { local v; v="$(get "$1_ok")"; [[ "$v" == 1 ]] && echo "" || echo " ${v:-not run};"; }
{
    echo "# shardmerge memory-budget benchmark"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC') (started $started), commit $rev at the start,"
    echo "$(nproc) cores, $(free -g | awk '/^Mem:/ { print $2 }') GB RAM, $("$sm" --version)$([[ "$build" == 1 ]] || echo " (not rebuilt: binary of $(date -u -r "$rel/shardmerge" '+%Y-%m-%d %H:%M UTC'))"). Every process shares the same cores;"
    echo "other work on the machine shows in the load averages (1/5/15 min) below."
    if want memory; then
        echo
        echo "## 1. Merging 2 GiB tensors within a ${limit} budget"
        echo
        echo "\`shardmerge synth $synth_args\`: $model_gb GB per model, embedding and lm_head ${emb_gib} GiB each per input."
        echo "DARE-TIES: base + finetune-a (0.53/0.6) + finetune-b (0.4/0.3), int8_mask; SLERP: base + finetune-a, t 0.5; seed 42, bf16."
        echo "Limit $limit = $limit_bytes bytes = $limit_mib MiB (runs b-d). Peak RSS (GNU time) includes touched pages of mapped input"
        echo "files; in brackets the peaks of anonymous and file-backed RSS sampled every 0.2 s (/proc/PID/status RssAnon, RssFile)."
        echo "Load average $(get load_memory_before) before, $(get load_memory_after) after."
        [[ "$s3_on" != 1 ]] || echo "S3: s3s-fs 0.14.1 on loopback, the 3 models uploaded through the S3 API in $(get s3_upload_s) s (not timed below)."
        echo
        echo "| recipe | run | wall s | CPU s | peak RSS MiB (sampled split, MiB) | vs ${limit} limit | output vs a |"
        echo "|---|---|---:|---|---|---|---|"
        for recipe in $recipes; do
            e="$recipe-embedded" l="$recipe-embedded-limit"
            echo "| $recipe | a. embedded, no limit | $(get "${e}_wall") | $(get "${e}_cpu") | $(get "${e}_rss") ($(get "${e}_split")) | (no limit) |$(okmark "$e") reference |"
            echo "| $recipe | b. embedded, \`--memory-limit $limit\` | $(get "${l}_wall") | $(get "${l}_cpu") | $(get "${l}_rss") ($(get "${l}_split")) | $(vs_limit "$(get "${l}_rss")") |$(okmark "$l") $(get "${l}_cmp") |"
            for kind in cluster s3; do
                c="$recipe-$kind"
                [[ -n "$(get "${c}_ok")" ]] || continue
                where="c. cluster, shared filesystem"
                [[ "$kind" == s3 ]] && where="d. cluster, S3 in and out"
                s3cpu=""
                [[ -z "$(get "${c}_cpu_s3")" ]] || s3cpu=", s3s-fs $(get "${c}_cpu_s3")"
                worst="$(printf '%s\n' "$(get "${c}_w1_rss")" "$(get "${c}_w2_rss")" | sort -g | tail -n 1)"
                echo "| $recipe | $where: coordinator \`--worker-memory-limit $limit\`, 2 workers \`--memory-limit $limit\`, $(get "${c}_units") units | $(get "${c}_wall") | workers $(get "${c}_w1_cpu") + $(get "${c}_w2_cpu"), coordinator $(get "${c}_coord_cpu")$s3cpu | workers $(get "${c}_w1_rss") ($(get "${c}_w1_split")) / $(get "${c}_w2_rss") ($(get "${c}_w2_split")), coordinator $(get "${c}_coord_rss") | workers $(vs_limit "$worst") |$(okmark "$c") $(get "${c}_cmp") |"
            done
        done
    fi
    if want overhead; then
        echo
        echo "## 2. Cluster overhead: 0.5B DARE-TIES (scripts/bench.sh's models and recipe), shared filesystem"
        echo
        echo "Medians of $repeat alternating runs; coordinator and 2 workers (no memory limits) stay up across runs."
        echo "Load average $(get load_overhead_before) before, $(get load_overhead_after) after."
        echo
        echo "| run | wall s (median) | runs | CPU s (median) | peak RSS MiB | output |"
        echo "|---|---:|---|---|---|---|"
        echo "| embedded \`shardmerge merge\` | $(get overhead_embedded_wall) | $(get overhead_embedded_runs) | $(get overhead_embedded_cpu) | $(get "overhead-embedded-${repeat}_rss") (last run) | reference |"
        cmpres="$(grep '^overhead_cmp_' "$kvfile" | cut -d= -f2 | sort -u | paste -sd, -)"
        echo "| coordinator + 2 workers, $(get overhead_units) units (\`submit --wait\`) | $(get overhead_cluster_wall) | $(get overhead_cluster_runs) | workers $(get overhead_cluster_cpu_workers), coordinator $(get overhead_cluster_cpu_coord) | workers $(get overhead_worker_rss), coordinator $(get overhead_coord_rss) (process lifetime) | $cmpres |"
        echo "| **ratio cluster / embedded** | **$(get overhead_ratio)x** | $(get overhead_ratio_runs) | target <= 1.15x: $(awk -v r="$(get overhead_ratio)" 'BEGIN { print (r != "" && r <= 1.15) ? "meets" : "misses" }') | | |"
    fi
    echo
    echo "Logs: $logs (*.log; GNU time files *.time: wall, user, sys, max RSS KiB)."
} | tee "$bench/results.md"
exit "$status"
