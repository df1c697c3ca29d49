#!/usr/bin/env bash
# Prepare this host for `make run`: the system packages NullOps itself needs.
# As root on Debian it installs what is missing; otherwise it says exactly what to install.
set -euo pipefail

# python3-venv: the project's virtualenv; nodejs/npm: front-end packages (package.json);
# docker.io: the engine the local agent deploys to; caddy: the ingress for deployment URLs;
# docker-registry: the local registry the demo's images go to (scripts/demo-images.sh);
# debootstrap, busybox-static: the local base image when no public one can be pulled.
APT_PACKAGES="python3 python3-venv nodejs npm docker.io caddy docker-registry debootstrap busybox-static"

log() { printf '[run-host] %s\n' "$*"; }
die() { printf '[run-host] ERROR: %s\n' "$*" >&2; exit 1; }
source "$(dirname "${BASH_SOURCE[0]}")/docker-engine.sh"

# The engine: started when installed and silent (no systemd here); as non-root, say how.
ensure_docker() {
    command -v docker >/dev/null || return 0
    docker_up && return 0
    if [ "$(id -u)" -ne 0 ]; then
        log "the Docker engine is not running: start it (sudo service docker start) for deployments"
        return 0
    fi
    start_docker
}

missing=()
for p in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q ' ok installed$' || missing+=("$p")
done
# A Python or Node.js from elsewhere (pyenv, NodeSource) is as good as Debian's packages.
command -v node >/dev/null && command -v npm >/dev/null && missing=("${missing[@]/nodejs}") && missing=("${missing[@]/npm}")
python3 -c 'import venv, ensurepip' 2>/dev/null && missing=("${missing[@]/python3-venv}") && missing=("${missing[@]/python3}")
read -r -a missing <<<"${missing[*]:-}"

# Docker Engine from docker.com (docker-ce) is as good as Debian's docker.io.
command -v dockerd >/dev/null && missing=("${missing[@]/docker.io}")
read -r -a missing <<<"${missing[*]:-}"

if [ ${#missing[@]} -eq 0 ]; then
    ensure_docker
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    log "missing: ${missing[*]}"
    log "install them with: sudo apt-get install -y ${missing[*]}   (then run make run again)"
    exit 1
fi
log "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
ensure_docker
