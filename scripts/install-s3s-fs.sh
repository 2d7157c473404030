#!/usr/bin/env bash
# Installs the s3s-fs S3-compatible server binary into target/tools/bin (once), for the local
# cluster and the cluster benchmarks. Prints the binary's path.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${TOOLS_DIR:-$ROOT/target/tools}
if [ ! -x "$TOOLS/bin/s3s-fs" ]; then
  # 0.14.1 is the newest release that builds with this toolchain; --features binary builds the executable.
  cargo install s3s-fs@0.14.1 --features binary --locked --root "$TOOLS" >&2
fi
echo "$TOOLS/bin/s3s-fs"
