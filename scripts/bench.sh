#!/usr/bin/env bash
# Benchmark shardmerge against mergekit 0.1.5 on AutoMerger's two recipes and on
# model_stock, della and nuslerp.
#
# What it measures, in one run (the machine is noisy: compare the ratios, not the
# absolute numbers across runs):
#   - a synthetic bf16 Llama-shaped family (`shardmerge synth`: hidden 2048, 8 layers,
#     ~0.54B params, ~1.08 GB per model), generated once under $BENCH_DIR/models;
#   - AutoMerger's SLERP (base + finetune-a, t gradients) and DARE-TIES (density 0.53,
#     weight 0.6, int8_mask) recipes, and model_stock (base + finetune-a + finetune-b),
#     della (base + both fine-tunes, densities 0.5/0.6, epsilon 0.1) and nuslerp (the two
#     fine-tunes, weights 0.4/0.6), all `--random-seed 42`, dtype bfloat16;
#   - for each tool and recipe, under GNU `/usr/bin/time -v`: wall time, CPU time
#     (user + sys) and peak RSS, with warm page cache for both tools (the inputs are
#     read again before every run) and `sync` before every run;
#   - the I/O floor: reading both inputs once from the warm cache (dd to /dev/null),
#     and writing a file of the output's size (dd from /dev/zero, no fsync, like the tools);
#   - output parity: DARE-TIES, model_stock and nuslerp .safetensors must be
#     byte-identical (cmp), SLERP within 1 bf16 ulp (scripts/compare_outputs.py, run with
#     the venv's python); for della (bf16 magnitudes tie within rows, and torch's unstable
#     sort orders them: tests/golden/README.md) the differing elements are reported.
# Prints a Markdown table (medians over the repeats) and writes it to $BENCH_DIR/results.md.
# Exit status 1 if an output comparison fails (the table is still written).
#
# Run:  scripts/bench.sh          (~6 GB of disk under $BENCH_DIR; a few minutes)
# Env:
#   BENCH_DIR        work dir (default <repo>/target/bench): models/, *.yml, logs/, results.md
#   BENCH_REPEAT     runs per tool and recipe (default 1)
#   BENCH_RECIPES    which recipes (default "dare-ties slerp model-stock della nuslerp")
#   SKIP_MERGEKIT=1  time shardmerge only (no ratios, no output comparison)
#   BENCH_KEEP=1     keep the last outputs in $BENCH_DIR/out/TOOL/merged-RECIPE
#   MERGEKIT_VENV    mergekit 0.1.5 venv (default <repo>/target/mergekit-venv; created on
#                    demand by scripts/mergekit-venv.sh, like tests/golden/regen.sh)
#   SHARDMERGE_*     read by shardmerge itself, e.g. SHARDMERGE_WORKERS=4
# Needs GNU time at /usr/bin/time; installed with `apt-get install time` if missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
bench="${BENCH_DIR:-$repo/target/bench}"
repeat="${BENCH_REPEAT:-1}"
read -r -a recipes <<<"${BENCH_RECIPES:-dare-ties slerp model-stock della nuslerp}"
skip_mk="${SKIP_MERGEKIT:-0}"
mkdir -p "$bench/logs"
bench="$(cd "$bench" && pwd)"

# shellcheck source=lib.sh
. "$here/lib.sh"
ensure_gnu_time

echo "== building shardmerge (release)" >&2
cargo build --release --quiet --manifest-path "$repo/Cargo.toml" --bin shardmerge
sm="${CARGO_TARGET_DIR:-$repo/target}/release/shardmerge"

tools=(shardmerge)
if [[ "$skip_mk" != 1 ]]; then
    # shellcheck source=mergekit-venv.sh disable=SC1091
    source "$here/mergekit-venv.sh"
    mergekit_venv_ensure "$repo"
    tools=(mergekit shardmerge)
fi
# Same deterministic, offline environment as tests/golden/regen.sh.
export PYTHONHASHSEED=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
noaslr=()
if setarch "$(uname -m)" -R true 2>/dev/null; then noaslr=(setarch "$(uname -m)" -R); fi

models="$bench/models"
if [[ ! -f "$models/.complete" ]]; then
    echo "== generating synthetic models in $models" >&2
    rm -rf "$models"
    "$sm" synth "$models" >&2
    touch "$models/.complete"
fi
base="$models/base"
ft="$models/finetune-a"
ft2="$models/finetune-b"

# The recipes, exactly as coordinator/src/demo.rs writes them.
cat >"$bench/slerp.yml" <<EOF
slices:
  - sources:
      - model: $base
        layer_range: [0, 8]
      - model: $ft
        layer_range: [0, 8]
merge_method: slerp
base_model: $base
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
EOF
cat >"$bench/dare-ties.yml" <<EOF
models:
  - model: $base
    # no parameters necessary for base model
  - model: $ft
    parameters:
      density: 0.53
      weight: 0.6
merge_method: dare_ties
base_model: $base
parameters:
  int8_mask: true
dtype: bfloat16
EOF

cat >"$bench/model-stock.yml" <<EOF
models:
  - model: $base
  - model: $ft
  - model: $ft2
merge_method: model_stock
base_model: $base
dtype: bfloat16
EOF
cat >"$bench/della.yml" <<EOF
models:
  - model: $base
  - model: $ft
    parameters:
      density: 0.5
      weight: 0.6
  - model: $ft2
    parameters:
      density: 0.6
      weight: 0.4
merge_method: della
base_model: $base
parameters:
  epsilon: 0.1
dtype: bfloat16
EOF
cat >"$bench/nuslerp.yml" <<EOF
models:
  - model: $ft
    parameters:
      weight: 0.4
  - model: $ft2
    parameters:
      weight: 0.6
merge_method: nuslerp
dtype: bfloat16
EOF

echo "== warming the page cache, measuring the I/O floor" >&2
inputs=("$base"/*.safetensors "$ft"/*.safetensors "$ft2"/*.safetensors)
cat "${inputs[@]}" >/dev/null
in_bytes="$(stat -c %s "${inputs[@]}" | awk '{ s += $1 } END { print s }')"
out_bytes="$(stat -c %s "$base"/*.safetensors | awk '{ s += $1 } END { print s }')"
t0="$EPOCHREALTIME"
for f in "${inputs[@]}"; do dd if="$f" of=/dev/null bs=16M status=none; done
read_s="$(secs_since "$t0" 2)"
sync
t0="$EPOCHREALTIME"
dd if=/dev/zero of="$bench/floor.bin" bs=16M count="$out_bytes" iflag=count_bytes status=none
write_s="$(secs_since "$t0" 2)"
rm -f "$bench/floor.bin"
sync

# run TOOL RECIPE REP: time one merge into $bench/out/TOOL/merged-RECIPE (same basename for
# both tools, so the model cards can match), append to runs.tsv.
run() {
    local tool="$1" recipe="$2" rep="$3" out="$bench/out/$1/merged-$2" log="$bench/logs/$1-$2-$3"
    local cmd=("$sm" merge "$bench/$recipe.yml" "$out" --random-seed 42 --quiet)
    [[ "$tool" == mergekit ]] && cmd=("${noaslr[@]}" "$MERGEKIT_VENV/bin/mergekit-yaml" \
        "$bench/$recipe.yml" "$out" --random-seed 42 --quiet)
    rm -rf "$out"
    mkdir -p "${out%/*}"
    # Re-read the inputs before every run: this VM's memory reclaim (DAMON) evicts cold cache
    # pages between runs, and whichever tool ran second would read them back from disk.
    cat "${inputs[@]}" >/dev/null
    sync
    echo "== $tool $recipe (run $rep/$repeat)" >&2
    if ! /usr/bin/time -v -o "$log.time" "${cmd[@]}" >"$log.log" 2>&1; then
        echo "error: $tool $recipe failed; see $log.log" >&2
        tail -n 20 "$log.log" >&2
        exit 1
    fi
    awk -F': ' -v r="$recipe" -v t="$tool" -v n="$rep" '
        /Elapsed \(wall clock\)/ { k = split($NF, p, ":"); w = 0; for (i = 1; i <= k; i++) w = w * 60 + p[i] }
        /User time/ { u = $NF } /System time/ { s = $NF } /Maximum resident/ { m = $NF }
        END { printf "%s\t%s\t%s\t%.2f\t%.2f\t%d\n", r, t, n, w, u + s, m }' "$log.time" >>"$bench/runs.tsv"
}

# compare RECIPE: mergekit's output against shardmerge's; 0 if they match.
compare() {
    local recipe="$1" mk="$bench/out/mergekit/merged-$1" sm_out="$bench/out/shardmerge/merged-$1" ok=0 f d
    if [[ "$recipe" == della ]]; then
        echo "compare_outputs.py (tied bf16 magnitudes are ordered differently; reported, not required):"
        "$MERGEKIT_VENV/bin/python" "$here/compare_outputs.py" "$mk" "$sm_out" --top 5 || true
    elif [[ "$recipe" != slerp ]]; then
        echo "cmp of .safetensors files (must be byte-identical):"
        for f in "$mk"/*.safetensors; do
            if cmp -s "$f" "$sm_out/${f##*/}"; then echo "  identical ${f##*/}"; else echo "  DIFFER ${f##*/}"; ok=1; fi
        done
        # On a mismatch, say which tensors differ and by how much.
        if [[ "$ok" != 0 ]]; then "$MERGEKIT_VENV/bin/python" "$here/compare_outputs.py" "$mk" "$sm_out" --top 10 || true; fi
    else
        echo "compare_outputs.py --max-ulp 1:"
        "$MERGEKIT_VENV/bin/python" "$here/compare_outputs.py" "$mk" "$sm_out" --max-ulp 1 || ok=1
    fi
    echo "other files (config.json, model card, ...):"
    d="$(diff -r -x '*.safetensors' "$mk" "$sm_out" | head -n 40)" || true
    echo "${d:-  identical}"
    return "$ok"
}

rm -f "$bench/runs.tsv" "$bench"/compare-*.txt
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
status=0
for ((rep = 1; rep <= repeat; rep++)); do
    for recipe in "${recipes[@]}"; do
        for tool in "${tools[@]}"; do run "$tool" "$recipe" "$rep"; done
        if [[ "$rep" == 1 && "$skip_mk" != 1 ]]; then
            compare "$recipe" >"$bench/compare-$recipe.txt" 2>&1 || status=1
        fi
        [[ "${BENCH_KEEP:-0}" == 1 ]] || rm -rf "$bench/out/mergekit/merged-$recipe" "$bench/out/shardmerge/merged-$recipe"
    done
done

# median_of COLUMN RECIPE TOOL: the median of that column over the recipe's runs by the tool.
median_of() { awk -v c="$1" -v r="$2" -v t="$3" '$1 == r && $2 == t { print $c }' "$bench/runs.tsv" | median; }
{
    echo "# shardmerge vs mergekit 0.1.5"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" diff --quiet || echo '+dirty'),"
    echo "$(nproc) cores, $(free -g | awk '/^Mem:/ { print $2 }') GB RAM, $("$sm" --version), medians of $repeat run(s),"
    echo "load average (1/5/15 min) $load_before before the timed runs, $(cut -d' ' -f1-3 /proc/loadavg) after."
    echo "Inputs: 3 models (SLERP and DARE-TIES read 2), $(awk -v b="$in_bytes" 'BEGIN { printf "%.2f", b / 1e9 }') GB; output $(awk -v b="$out_bytes" 'BEGIN { printf "%.2f", b / 1e9 }') GB (bf16)."
    echo
    echo "| tool | recipe | wall s | CPU s | peak RSS GB | wall ratio mergekit/shardmerge | RSS ratio mergekit/shardmerge |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    for recipe in "${recipes[@]}"; do
        for tool in "${tools[@]}"; do
            wall="$(median_of 4 "$recipe" "$tool")" cpu="$(median_of 5 "$recipe" "$tool")" rss="$(median_of 6 "$recipe" "$tool")"
            mk_wall="" mk_rss=""
            if [[ "$tool" == shardmerge && "$skip_mk" != 1 ]]; then
                mk_wall="$(median_of 4 "$recipe" mergekit)" mk_rss="$(median_of 6 "$recipe" mergekit)"
            fi
            awk -v t="$tool" -v r="$recipe" -v w="$wall" -v c="$cpu" -v m="$rss" -v mw="$mk_wall" -v mm="$mk_rss" 'BEGIN {
                printf "| %s | %s | %.2f | %.2f | %.2f |", t, r, w, c, m * 1024 / 1e9
                if (mw != "") printf " %.2fx | %.2fx |\n", mw / w, mm / m; else print "  |  |" }'
        done
    done
    echo
    echo "I/O floor (warm cache, no fsync): read both inputs ${read_s} s, write an output-sized file ${write_s} s."
    for recipe in "${recipes[@]}"; do
        [[ -f "$bench/compare-$recipe.txt" ]] || continue
        # shellcheck disable=SC2016 # literal Markdown backticks
        printf '\n### Output comparison: %s\n\n```\n%s\n```\n' "$recipe" "$(cat "$bench/compare-$recipe.txt")"
    done
} | tee "$bench/results.md"
exit "$status"
