#!/usr/bin/env bash
# Regenerate the golden fixtures with the real mergekit 0.1.5.
#
#   tests/golden/regen.sh            # models + every case
#   tests/golden/regen.sh CASE...    # models + only the named cases (multi/NAME for a
#                                    # multi-stage case under multi/)
#
# Env: MERGEKIT_VENV (default <repo>/target/mergekit-venv), created on demand
#      with `python3 -m venv` + `pip install mergekit==0.1.5`.
#      JOBS (default 2): how many mergekit-yaml runs at once.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${MERGEKIT_VENV:-$repo/target/mergekit-venv}"
jobs="${JOBS:-2}"

if [[ ! -x "$venv/bin/mergekit-yaml" ]]; then
    echo "creating mergekit venv at $venv" >&2
    python3 -m venv "$venv"
    # Pinned to the versions the committed fixtures were made with (see
    # generated-with.txt): transformers decides config.json's bytes, torch the
    # sort tie-breaks and reduction order.
    "$venv/bin/pip" install --quiet 'mergekit==0.1.5' 'torch==2.15.0' \
        'transformers==5.24.0' 'safetensors==0.8.0' 'numpy==2.4.6'
fi
installed="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("mergekit"))')"
if [[ "$installed" != "0.1.5" ]]; then
    echo "error: $venv has mergekit $installed, need 0.1.5" >&2
    exit 1
fi

tv="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("transformers"))')"
if [[ "$tv" != "5.24.0" ]]; then
    echo "warning: transformers $tv (fixtures were made with 5.24.0): config.json will differ" >&2
fi

cd "$here"

# Deterministic environment for mergekit:
#  - PYTHONHASHSEED=0 fixes str hashes;
#  - no ASLR (setarch -R), because Python 3.11's hash(None) is an address and
#    ModelReference hashes include None fields, so set order (README model
#    list, donor pick without base_model) otherwise changes from run to run;
#  - offline: nothing may touch the Hugging Face Hub.
export PYTHONHASHSEED=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
noaslr=()
if setarch "$(uname -m)" -R true 2>/dev/null; then
    noaslr=(setarch "$(uname -m)" -R)
else
    echo "warning: setarch -R unavailable; README model-list order may vary" >&2
fi

"$venv/bin/python" make_models.py models

if [[ $# -gt 0 ]]; then
    cases=("$@")
else
    cases=()
    for d in cases/*/; do cases+=("$(basename "$d")"); done
fi

run_case() {
    local name="$1" dir="cases/$1" extra=() log
    [[ -f "$dir/config.yml" ]] || { echo "error: no $dir/config.yml" >&2; return 1; }
    if [[ -s "$dir/args" ]]; then read -r -a extra < "$dir/args" || true; fi
    rm -rf "$dir/expected"
    log="$(mktemp)"
    if "${noaslr[@]}" "$venv/bin/mergekit-yaml" "$dir/config.yml" "$dir/expected" \
        --quiet "${extra[@]}" >"$log" 2>&1; then
        echo "ok   $name"
        rm -f "$log"
    else
        echo "FAIL $name (log below)" >&2
        cat "$log" >&2
        rm -f "$log"
        return 1
    fi
}

# A multi-stage case (multi/<case>/config.yml): mergekit-multi with `-I ./intermediate`
# (the stage paths written into the configs) and `--out-path ./final`, run from this
# directory, then moved to multi/<case>/expected/{intermediate,final}.
run_multi() {
    local name="$1" dir="multi/$1" extra=() log
    if [[ -s "$dir/args" ]]; then read -r -a extra < "$dir/args" || true; fi
    rm -rf "$dir/expected" ./intermediate ./final
    log="$(mktemp)"
    if "${noaslr[@]}" "$venv/bin/mergekit-multi" "$dir/config.yml" -I ./intermediate \
        --out-path ./final --quiet "${extra[@]}" >"$log" 2>&1; then
        mkdir -p "$dir/expected"
        mv ./intermediate ./final "$dir/expected/"
        echo "ok   multi/$name"
        rm -f "$log"
    else
        echo "FAIL multi/$name (log below)" >&2
        cat "$log" >&2
        rm -rf "$log" ./intermediate ./final
        return 1
    fi
}

multi_cases=()
if [[ $# -gt 0 ]]; then
    rest=()
    for c in "${cases[@]}"; do
        if [[ "$c" == multi/* ]]; then multi_cases+=("${c#multi/}"); else rest+=("$c"); fi
    done
    cases=("${rest[@]+"${rest[@]}"}")
else
    for d in multi/*/; do multi_cases+=("$(basename "$d")"); done
fi

pids=()
status=0
# One at a time: they share ./intermediate and ./final.
for name in "${multi_cases[@]+"${multi_cases[@]}"}"; do
    run_multi "$name" || status=1
done
for name in "${cases[@]+"${cases[@]}"}"; do
    run_case "$name" &
    pids+=($!)
    if (( ${#pids[@]} >= jobs )); then
        wait "${pids[0]}" || status=1
        pids=("${pids[@]:1}")
    fi
done
for pid in "${pids[@]}"; do wait "$pid" || status=1; done

"$venv/bin/python" - > generated-with.txt <<'EOF'
import importlib.metadata as m, platform
print("python", platform.python_version())
for p in ("mergekit", "torch", "transformers", "safetensors", "numpy", "huggingface_hub", "pydantic", "PyYAML"):
    print(p, m.version(p))
EOF
exit $status
