#!/usr/bin/env bash
# The reference demo's images in a local registry, for `make run` and `make demo`:
#
#   127.0.0.1:5000/demo/web:{1.0,1.1,features-dark-mode}   demo/app (version and colour differ)
#   127.0.0.1:5000/nullops/postgres:15                       images/postgres (Debian's PostgreSQL)
#   127.0.0.1:5000/nullops/{postgres-database,sql-script,http-wait}:1.0   plugins/<name>
#
# The registry is Debian's docker-registry on 127.0.0.1:5000 without auth (loopback only; the
# engine allows plain HTTP to 127.0.0.0/8), its data under var/registry; started here when it
# does not answer. Each image carries a label with the hash of its inputs (its folder, the base
# image, the build arguments): unchanged images are not rebuilt, and an image is pushed only
# when the registry's manifest is not the one already pushed. A second run takes a second or two.
#
# Bases: the Dockerfiles name public ones (debian:bookworm-slim...). Where those cannot be
# pulled (no registry reachable), the local Debian base of scripts/build-test-images.sh is used.
#
# Usage: scripts/demo-images.sh [--optional]
#   --optional   (make run) when Docker or the registry is unavailable, say so and exit 3
#                instead of failing: NullOps runs without the demo.
# Env:   DEMO_REGISTRY (default 127.0.0.1:5000), DEMO_BASE_IMAGE (force a base image)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REGISTRY=${DEMO_REGISTRY:-127.0.0.1:5000}
REGISTRY_DIR=$ROOT/var/registry
LOCAL_BASE=nullops-test/base:bookworm
PUBLIC_BASE=debian:bookworm-slim
HASH_LABEL=org.nullops.build.inputs-sha256
OPTIONAL=0
[ "${1:-}" = --optional ] && OPTIONAL=1

# folder | repository:tag | build arguments (space-separated NAME=value)
IMAGES=(
    "demo/app|demo/web:1.0|APP_VERSION=1.0 APP_COLOR=#2f6fdf"
    "demo/app|demo/web:1.1|APP_VERSION=1.1 APP_COLOR=#1f9d55"
    "demo/app|demo/web:features-dark-mode|APP_VERSION=features-dark-mode APP_COLOR=#c05fe0 APP_THEME=dark"
    "images/postgres|nullops/postgres:15|"
    "plugins/postgres-database|nullops/postgres-database:1.0|"
    "plugins/sql-script|nullops/sql-script:1.0|"
    "plugins/http-wait|nullops/http-wait:1.0|"
)

log() { printf '[demo-images] %s\n' "$*"; }
die() { printf '[demo-images] ERROR: %s\n' "$*" >&2; exit 1; }
# Unavailable, not broken: with --optional, `make run` goes on without the demo.
unavailable() {
    if [ "$OPTIONAL" -eq 1 ]; then
        log "$* -- NullOps starts without the demo"
        exit 3
    fi
    die "$*"
}
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f s", b - a }'; }

# ---------------------------------------------------------------- registry
# (python3 rather than curl: a minimal Debian has python3 for the venv, not always curl)
registry_status() {  # path -> HTTP status, 000 when nothing answers
    python3 - "http://$REGISTRY$1" <<'PY'
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], method="HEAD" if "/manifests/" in sys.argv[1] else "GET",
                             headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
try:
    with urllib.request.urlopen(req, timeout=3) as r:
        print(r.status, r.headers.get("Docker-Content-Digest", ""))
except urllib.error.HTTPError as e:
    print(e.code, "")
except OSError:
    print("000", "")
PY
}

ensure_registry() {
    local status _ i
    read -r status _ <<<"$(registry_status /v2/)"
    [ "$status" = 200 ] && return 0
    [ "$status" = 000 ] || unavailable "something on $REGISTRY answers /v2/ with $status (not a registry without auth); set DEMO_REGISTRY to another address"
    [ "$REGISTRY" = 127.0.0.1:5000 ] || unavailable "no registry answers at $REGISTRY"
    command -v docker-registry >/dev/null ||
        unavailable "docker-registry is not installed (apt-get install docker-registry)"
    mkdir -p "$REGISTRY_DIR/data"
    cat >"$REGISTRY_DIR/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $REGISTRY_DIR/data
  delete:
    enabled: true
http:
  addr: $REGISTRY
EOF
    log "starting the local registry on $REGISTRY (data: var/registry/data, log: var/registry/registry.log)"
    # Its own session: it outlives this script and the terminal, like dockerd.
    setsid nohup docker-registry serve "$REGISTRY_DIR/config.yml" \
        >>"$REGISTRY_DIR/registry.log" 2>&1 </dev/null 8>&- &
    echo $! >"$REGISTRY_DIR/registry.pid"
    for i in $(seq 1 50); do
        read -r status _ <<<"$(registry_status /v2/)"
        [ "$status" = 200 ] && return 0
        sleep 0.1
    done
    tail -n 20 "$REGISTRY_DIR/registry.log" >&2 || true
    unavailable "the registry did not answer on $REGISTRY within 5 s"
}

# ---------------------------------------------------------------- base image
BASE=""        # the image the Dockerfiles build FROM; empty: their own public defaults
choose_base() {
    if [ -n "${DEMO_BASE_IMAGE:-}" ]; then
        BASE=$DEMO_BASE_IMAGE
    elif docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
        BASE=$LOCAL_BASE   # built for the tests already: no download at all
    elif docker image inspect "$PUBLIC_BASE" >/dev/null 2>&1 ||
         timeout 120 docker pull -q "$PUBLIC_BASE" >/dev/null 2>&1; then
        BASE=""
    else
        log "$PUBLIC_BASE cannot be pulled here: building the local Debian base instead"
        [ "$(id -u)" -eq 0 ] || unavailable "building the local base needs root (debootstrap); run as root or make $PUBLIC_BASE pullable"
        command -v debootstrap >/dev/null || unavailable "debootstrap is missing (apt-get install debootstrap busybox-static)"
        bash "$ROOT/scripts/build-test-images.sh" || die "the local base image could not be built"
        BASE=$LOCAL_BASE
    fi
    log "base image: ${BASE:-the public defaults of the Dockerfiles}"
}

# ---------------------------------------------------------------- build and push
inputs_hash() {  # folder args -> sha256 of the folder's files, the base image id and the args
    local folder=$1 args=$2
    {
        (cd "$ROOT/$folder" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
        [ -n "$BASE" ] && docker image inspect --format '{{.Id}}' "$BASE"
        echo "$args"
    } | sha256sum | cut -c1-64
}

build_one() {  # folder ref args
    local folder=$1 ref=$2 args=$3 hash current arg t0
    [ -f "$ROOT/$folder/Dockerfile" ] || die "$folder/Dockerfile is missing"
    hash=$(inputs_hash "$folder" "$args")
    current=$(docker image inspect --format "{{ index .Config.Labels \"$HASH_LABEL\" }}" "$ref" 2>/dev/null || true)
    if [ "$current" = "$hash" ]; then
        return 0
    fi
    local build_args=()
    [ -n "$BASE" ] && build_args+=(--build-arg "BASE_IMAGE=$BASE")
    for arg in $args; do build_args+=(--build-arg "$arg"); done
    t0=$EPOCHREALTIME
    # The legacy builder (no buildx here) works with local-only bases; --force-rm leaves no
    # container behind when a step fails.
    DOCKER_BUILDKIT=0 docker build -q --force-rm "${build_args[@]}" --label "$HASH_LABEL=$hash" \
        -t "$ref" "$ROOT/$folder" >/dev/null 2>"$REGISTRY_DIR/build.log" || {
        tail -n 30 "$REGISTRY_DIR/build.log" >&2
        die "building $ref from $folder failed"
    }
    log "built $ref in $(since "$t0")"
}

push_one() {  # ref (registry/repository:tag)
    local ref=$1 path repo tag status digest pushed
    path=${ref#"$REGISTRY"/}
    repo=${path%:*}
    tag=${path##*:}
    read -r status digest <<<"$(registry_status "/v2/$repo/manifests/$tag")"
    # RepoDigests holds the digest this very image got when it was last pushed here.
    pushed=$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$ref" |
             grep -F "$REGISTRY/$repo@" | cut -d@ -f2 || true)
    if [ "$status" = 200 ] && [ -n "$digest" ] && grep -qxF "$digest" <<<"$pushed"; then
        return 0
    fi
    docker push -q "$ref" >/dev/null 2>"$REGISTRY_DIR/push.log" || {
        cat "$REGISTRY_DIR/push.log" >&2
        die "pushing $ref failed"
    }
    log "pushed $ref"
}

main() {
    local t0=$EPOCHREALTIME entry folder ref args missing=()
    command -v docker >/dev/null || unavailable "Docker is not installed"
    docker info >/dev/null 2>&1 || unavailable "the Docker engine does not answer (start dockerd)"
    for entry in "${IMAGES[@]}"; do
        IFS='|' read -r folder ref args <<<"$entry"
        [ -f "$ROOT/$folder/Dockerfile" ] || missing+=("$folder")
    done
    [ ${#missing[@]} -eq 0 ] || die "missing image folders: ${missing[*]}"
    mkdir -p "$REGISTRY_DIR"
    # Two runs at once (make run in two terminals) would build the same images twice.
    exec 8>"$REGISTRY_DIR/.images.lock"
    flock 8
    ensure_registry
    choose_base
    for entry in "${IMAGES[@]}"; do
        IFS='|' read -r folder ref args <<<"$entry"
        build_one "$folder" "$REGISTRY/$ref" "$args"
        push_one "$REGISTRY/$ref"
    done
    log "demo images in $REGISTRY, up to date ($(since "$t0"))"
}

main "$@"
