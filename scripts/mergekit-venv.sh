# shellcheck shell=bash
# Source this file, then call `mergekit_venv_ensure REPO`: it sets MERGEKIT_VENV
# (default REPO/target/mergekit-venv), creates the venv with the real mergekit
# 0.1.5 if it is missing, and fails unless the venv has mergekit 0.1.5.
#
# Same logic and pins as tests/golden/regen.sh (which keeps its own copy; keep
# the two in sync, or make regen.sh source this file).

mergekit_venv_ensure() {
    local repo="$1" installed
    MERGEKIT_VENV="${MERGEKIT_VENV:-$repo/target/mergekit-venv}"
    export MERGEKIT_VENV
    if [[ ! -x "$MERGEKIT_VENV/bin/mergekit-yaml" ]]; then
        echo "creating mergekit venv at $MERGEKIT_VENV" >&2
        python3 -m venv "$MERGEKIT_VENV"
        # Pinned to the versions the golden fixtures were made with
        # (tests/golden/generated-with.txt).
        "$MERGEKIT_VENV/bin/pip" install --quiet 'mergekit==0.1.5' 'torch==2.15.0' \
            'transformers==5.24.0' 'safetensors==0.8.0' 'numpy==2.4.6'
    fi
    installed="$("$MERGEKIT_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("mergekit"))')"
    if [[ "$installed" != "0.1.5" ]]; then
        echo "error: $MERGEKIT_VENV has mergekit $installed, need 0.1.5" >&2
        return 1
    fi
}
