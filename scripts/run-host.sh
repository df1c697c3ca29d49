#!/usr/bin/env bash
# Prepare this host for `make run`: the system packages NullOps itself needs.
# As root on Debian it installs what is missing; otherwise it says exactly what to install.
set -euo pipefail

# python3-venv: the project's virtualenv; nodejs/npm: front-end packages (package.json).
APT_PACKAGES="python3 python3-venv nodejs npm"

log() { printf '[run-host] %s\n' "$*"; }

missing=()
for p in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q ' ok installed$' || missing+=("$p")
done
# A Python or Node.js from elsewhere (pyenv, NodeSource) is as good as Debian's packages.
command -v node >/dev/null && command -v npm >/dev/null && missing=("${missing[@]/nodejs}") && missing=("${missing[@]/npm}")
python3 -c 'import venv, ensurepip' 2>/dev/null && missing=("${missing[@]/python3-venv}") && missing=("${missing[@]/python3}")
read -r -a missing <<<"${missing[*]:-}"

if [ ${#missing[@]} -eq 0 ]; then
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
