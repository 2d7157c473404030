#!/usr/bin/env bash
# Builds the container images `shardmerge:dev` (and `shardmerge:<version>`) and `s3s-fs:dev`
# from static binaries on an empty base (FROM scratch: nothing is pulled, works offline).
#
#   scripts/build-image.sh                    # docker if it works (or can be installed), else podman
#   CONTAINER_TOOL=podman scripts/build-image.sh
#   SKIP_IMAGES=1 scripts/build-image.sh      # only the static binaries and the build context
#
# Steps: 1. static binaries (glibc, +crt-static) for x86_64-unknown-linux-gnu: shardmerge from
# this workspace, s3s-fs 0.14.1 with `cargo install` into target/tools/static;
# 2. a small build context in target/image-context (binaries, CA bundle, nsswitch.conf, an
# empty directory); 3. `docker build` / `podman build` of deploy/docker/{Dockerfile,s3s-fs.Dockerfile}.
#
# Container tool: an existing, reachable docker daemon is used as is. Otherwise, if dockerd is
# installed (or `apt-get install docker.io` can install it), a private dockerd is started with
# --iptables=false --ip6tables=false --bridge=none on unix://$DOCKER_SOCK and stopped on exit;
# DOCKER_BUILDKIT=0 (the legacy builder needs no extra images). Failing that, podman (installed
# with `apt-get install podman runc` if absent).
#
# Knobs: CONTAINER_TOOL (docker|podman), TAG (dev), DOCKER_SOCK (/run/shardmerge-dockerd.sock),
# KEEP_DOCKERD (leave the private dockerd running, e.g. for compose: export
# DOCKER_HOST=unix://$DOCKER_SOCK), SKIP_IMAGES, NO_INSTALL (never apt-get).
# Writes target/image-tool.env (TOOL, DOCKER_HOST, STARTED_DOCKERD_PID) for scripts/smoke-image.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=x86_64-unknown-linux-gnu
TAG=${TAG:-dev}
CTX=$ROOT/target/image-context
STATIC_TOOLS=$ROOT/target/tools/static
DOCKER_SOCK=${DOCKER_SOCK:-/run/shardmerge-dockerd.sock}
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$ROOT/Cargo.toml")
log() { echo "build-image: $*" >&2; }

# --- 1. static binaries -------------------------------------------------------------------
export RUSTFLAGS="-C target-feature=+crt-static"
log "building static shardmerge ($TARGET, +crt-static)"
cargo build --release --target "$TARGET" --bin shardmerge --manifest-path "$ROOT/Cargo.toml"
if [ ! -x "$STATIC_TOOLS/bin/s3s-fs" ]; then
  log "building static s3s-fs 0.14.1 into $STATIC_TOOLS"
  # 0.14.1 is the newest release that builds with rustc 1.95; --features binary builds the executable.
  cargo install s3s-fs@0.14.1 --features binary --locked --target "$TARGET" --root "$STATIC_TOOLS"
fi
unset RUSTFLAGS

# --- 2. build context ---------------------------------------------------------------------
rm -rf "$CTX"
mkdir -p "$CTX/empty"
# Debug sections off (symbols stay, so panics still name functions); a fraction of the size.
strip --strip-debug -o "$CTX/shardmerge" "$ROOT/target/$TARGET/release/shardmerge"
strip --strip-debug -o "$CTX/s3s-fs" "$STATIC_TOOLS/bin/s3s-fs"
for b in shardmerge s3s-fs; do
  if file "$CTX/$b" 2>/dev/null | grep -q 'dynamically linked'; then
    log "error: $CTX/$b is dynamically linked; a FROM scratch image needs a static binary"
    exit 1
  fi
done
CA=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
if [ ! -s "$CA" ]; then
  log "error: no CA bundle at $CA (apt-get install ca-certificates, or set CA_BUNDLE)"
  exit 1
fi
cp "$CA" "$CTX/ca-certificates.crt"
printf 'hosts: files dns\n' >"$CTX/nsswitch.conf"
log "build context ready in $CTX ($(du -sh "$CTX" | cut -f1))"
if [ -n "${SKIP_IMAGES:-}" ]; then
  exit 0
fi

# --- 3. container tool ----------------------------------------------------------------------
apt_install() {
  if [ -n "${NO_INSTALL:-}" ] || ! command -v apt-get >/dev/null; then
    return 1
  fi
  log "installing $* with apt-get"
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

DOCKERD_PID=
cleanup() {
  # KEEP_DOCKERD keeps it only after a successful build (nobody would stop it otherwise).
  local rc=$?
  if [ -n "$DOCKERD_PID" ] && { [ -z "${KEEP_DOCKERD:-}" ] || [ $rc -ne 0 ]; }; then
    kill "$DOCKERD_PID" 2>/dev/null || true
    wait "$DOCKERD_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT

use_docker() {
  command -v docker >/dev/null || apt_install docker.io || return 1
  if docker info >/dev/null 2>&1; then
    return 0
  fi
  command -v dockerd >/dev/null || apt_install docker.io || return 1
  export DOCKER_HOST=unix://$DOCKER_SOCK
  if docker info >/dev/null 2>&1; then
    return 0
  fi
  log "starting a private dockerd on $DOCKER_HOST (log: $ROOT/target/dockerd.log)"
  dockerd --iptables=false --ip6tables=false --bridge=none --host "$DOCKER_HOST" \
    --pidfile "$ROOT/target/dockerd.pid" >"$ROOT/target/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
      return 0
    fi
    if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
      log "dockerd exited; see $ROOT/target/dockerd.log"
      DOCKERD_PID=
      return 1
    fi
    sleep 0.5
  done
  log "dockerd did not answer within 30 s; see $ROOT/target/dockerd.log"
  return 1
}

use_podman() {
  command -v podman >/dev/null || apt_install podman runc || return 1
  podman info >/dev/null 2>&1
}

TOOL=${CONTAINER_TOOL:-}
case "$TOOL" in
  docker) use_docker || { log "docker is not usable"; exit 1; } ;;
  podman) use_podman || { log "podman is not usable"; exit 1; } ;;
  "")
    if use_docker; then
      TOOL=docker
    elif use_podman; then
      TOOL=podman
    else
      log "error: neither docker nor podman is usable"
      exit 1
    fi
    ;;
  *) log "error: CONTAINER_TOOL must be docker or podman"; exit 1 ;;
esac

build() { # build DOCKERFILE TAG...
  local file=$1
  shift
  local tags=()
  for t in "$@"; do tags+=(-t "$t"); done
  log "$TOOL build -f $file ${*}"
  if [ "$TOOL" = docker ]; then
    DOCKER_BUILDKIT=0 docker build -q -f "$file" "${tags[@]}" "$CTX"
  else
    podman build -q --format docker -f "$file" "${tags[@]}" "$CTX"
  fi
}
build "$ROOT/deploy/docker/Dockerfile" "shardmerge:$TAG" "shardmerge:$VERSION"
build "$ROOT/deploy/docker/s3s-fs.Dockerfile" "s3s-fs:$TAG"

log "smoke test: shardmerge --version inside the image"
if [ "$TOOL" = docker ]; then
  docker run --rm --network=host "shardmerge:$TAG" --version
else
  podman run --rm --runtime /usr/sbin/runc --network=host "shardmerge:$TAG" --version
fi
log "built shardmerge:$TAG, shardmerge:$VERSION and s3s-fs:$TAG with $TOOL"
# For scripts that run the images next (smoke-image.sh): which tool, which daemon.
{
  echo "TOOL=$TOOL"
  if [ "$TOOL" = docker ] && [ -n "${DOCKER_HOST:-}" ]; then echo "DOCKER_HOST=$DOCKER_HOST"; fi
  if [ -n "$DOCKERD_PID" ] && [ -n "${KEEP_DOCKERD:-}" ]; then echo "STARTED_DOCKERD_PID=$DOCKERD_PID"; fi
} >"$ROOT/target/image-tool.env"
if [ -n "$DOCKERD_PID" ]; then
  if [ -n "${KEEP_DOCKERD:-}" ]; then
    log "the private dockerd (pid $DOCKERD_PID) keeps running: export DOCKER_HOST=$DOCKER_HOST"
  else
    log "the private dockerd is stopped on exit; its images stay in /var/lib/docker (KEEP_DOCKERD=1 keeps it)"
  fi
fi
