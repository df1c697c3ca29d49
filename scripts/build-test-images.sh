#!/usr/bin/env bash
# Build the local Docker images the tests use, without any registry (none is
# reachable here, so `docker pull` / `FROM python:...` cannot work):
#
#   nullops-test/base:bookworm   Debian minbase + python3, venv, pip, CA certs
#   nullops-test/busybox:latest  Debian's static busybox with its applet links
#   nullops-test/postgres:15, nullops-test/{postgres-database,sql-script,http-wait}:latest
#                                the first-party images (images/, plugins/), built
#                                with `docker build` FROM the base image
#
# Each image carries a label with the SHA-256 of its inputs (this recipe, the
# package list, the host CA certificates, the busybox binary). When the image
# already has the same hash the build is skipped, so this is quick to re-run.
#
# Usage: scripts/build-test-images.sh [--force]
# Env:   DEBIAN_MIRROR (default http://deb.debian.org/debian)
set -euo pipefail

BASE_IMAGE=nullops-test/base:bookworm
BUSYBOX_IMAGE=nullops-test/busybox:latest
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,python3-pip,ca-certificates
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
HOST_CA_DIR=/usr/local/share/ca-certificates
# Downloaded .debs are kept here so a rebuild (new CA cert, recipe change)
# does not fetch them again.
DEB_CACHE=/var/cache/nullops-test-images/debootstrap
BUSYBOX_BIN=/bin/busybox
# Not "org.nullops.test": containers inherit image labels, and the tests
# remove everything that carries that one.
HASH_LABEL=org.nullops.build.inputs-sha256

FORCE=0
[ "${1:-}" = --force ] && FORCE=1

log() { printf '[build-test-images] %s\n' "$*"; }
die() { printf '[build-test-images] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- cleanup
WORKDIR_PREFIX=/var/tmp/nullops-test-image.
WORKDIR=""
NEW_IMAGE_ID=""
CHILD_PID=""

remove_workdir() {  # dir
    local dir=$1 m
    # debootstrap mounts /proc and /sys inside the rootfs; if it was
    # interrupted they may still be mounted. Unmount before deleting.
    for m in $(findmnt -rn -o TARGET | grep -F "$dir/" | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$dir"
}

cleanup() {
    local rc=$?
    # Stop a running debootstrap (and the dpkg/wget under it) before its
    # rootfs is deleted from under it.
    if [ -n "$CHILD_PID" ]; then
        kill -TERM -- "-$CHILD_PID" 2>/dev/null || true
        wait "$CHILD_PID" 2>/dev/null || true
    fi
    # An import that succeeded but whose build then failed is removed; it is
    # never tagged (see import_and_tag), so nothing half-made keeps a name.
    if [ -n "$NEW_IMAGE_ID" ]; then
        docker rmi -f "$NEW_IMAGE_ID" >/dev/null 2>&1 || true
    fi
    if [ -n "$WORKDIR" ] && [ -d "$WORKDIR" ]; then
        remove_workdir "$WORKDIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Run a long command in its own process group, in the background, and wait
# for it: bash runs a trap only after a foreground command ends, so this lets
# an interrupt stop the build at once (cleanup kills the group).
run_killable() {
    local rc=0
    setsid "$@" &
    CHILD_PID=$!
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=""
    return "$rc"
}

new_workdir() {
    # /var/tmp: on disk, and the rootfs is ~300 MB.
    WORKDIR=$(mktemp -d "${WORKDIR_PREFIX}XXXXXX")
}

# ---------------------------------------------------------------- helpers
current_hash() {  # image -> value of the inputs label, or empty
    docker image inspect --format "{{ index .Config.Labels \"$HASH_LABEL\" }}" "$1" 2>/dev/null || true
}

# Stream a rootfs into `docker import` untagged, then tag it. Tagging only
# after both tar and import succeeded means a failed or truncated tar never
# ends up under the image's name.
import_and_tag() {  # rootfs image hash [--change ...]...
    local rootfs=$1 image=$2 hash=$3; shift 3
    local out rc=0
    out=$(tar --numeric-owner -C "$rootfs" -c . |
          docker import --change "LABEL $HASH_LABEL=$hash" "$@" -) || rc=$?
    # Remember the new image even when tar failed after import took what it
    # got: the exit trap then deletes it.
    NEW_IMAGE_ID=$(grep -o 'sha256:[0-9a-f]*' <<<"$out" | tail -n 1 || true)
    [ "$rc" -eq 0 ] && [ -n "$NEW_IMAGE_ID" ] || die "tar | docker import failed for $image"
    docker tag "$NEW_IMAGE_ID" "$image"
    NEW_IMAGE_ID=""  # tagged: now it belongs to the image name
}

sha() { sha256sum | cut -c1-64; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f s", b - a }'; }

# Run one build if its inputs changed. $1 image, $2 hash, $3 build function.
maybe_build() {
    local image=$1 hash=$2 fn=$3 t0
    if [ "$FORCE" -eq 0 ] && [ "$(current_hash "$image")" = "$hash" ]; then
        log "$image up to date (inputs ${hash:0:12})"
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || die "building $image needs root (debootstrap/chroot); run: sudo $0"
    t0=$EPOCHREALTIME
    log "building $image (inputs ${hash:0:12})"
    local old_id
    old_id=$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
    new_workdir
    "$fn" "$image" "$hash"
    rm -rf --one-file-system "$WORKDIR"; WORKDIR=""
    # Drop the image this one replaced, unless something still uses it.
    if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect --format '{{.Id}}' "$image")" ]; then
        docker rmi "$old_id" >/dev/null 2>&1 || true
    fi
    log "$image built in $(since "$t0")"
}

# ---------------------------------------------------------------- recipes
# The text of these functions is part of the input hash: editing a recipe
# rebuilds its image.

build_base() {  # image hash
    local image=$1 hash=$2 rootfs="$WORKDIR/rootfs"
    mkdir -p "$DEB_CACHE"
    run_killable debootstrap --variant=minbase --include="$BASE_PACKAGES" \
        --cache-dir="$DEB_CACHE" \
        "$SUITE" "$rootfs" "$MIRROR" >"$WORKDIR/debootstrap.log" 2>&1 || {
        tail -n 30 "$WORKDIR/debootstrap.log" >&2
        die "debootstrap failed"
    }
    # HTTPS from containers goes through the intercepting proxy: trust the
    # same extra CAs as the host.
    local crts=("$HOST_CA_DIR"/*.crt)
    if [ -e "${crts[0]}" ]; then
        cp "${crts[@]}" "$rootfs/usr/local/share/ca-certificates/"
    fi
    # (grep drops rehash's routine warning about the bundle file itself)
    chroot "$rootfs" update-ca-certificates --fresh 2>&1 >/dev/null |
        { grep -v 'skipping ca-certificates.crt' >&2 || true; }
    # Smaller image; `apt-get update` in a Dockerfile refetches the lists.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/var/log/*.log "$rootfs"/tmp/* "$rootfs"/root/.cache
    # Docker supplies these at run time; don't bake in the host's.
    : >"$rootfs/etc/resolv.conf"
    echo localhost >"$rootfs/etc/hostname"
    import_and_tag "$rootfs" "$image" "$hash" --change 'ENV LANG=C.UTF-8'
}

build_busybox() {  # image hash
    local image=$1 hash=$2 rootfs="$WORKDIR/rootfs" link
    mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,root,var/www} "$rootfs/tmp"
    chmod 1777 "$rootfs/tmp"
    install -m 0755 "$BUSYBOX_BIN" "$rootfs/bin/busybox"
    # One symlink per applet (sh, wget, httpd, ...) at the path busybox wants.
    for link in $("$BUSYBOX_BIN" --list-full); do
        [ "$link" = bin/busybox ] || ln -sf /bin/busybox "$rootfs/$link"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
    echo 'root:x:0:' >"$rootfs/etc/group"
    echo 'hosts: files dns' >"$rootfs/etc/nsswitch.conf"
    import_and_tag "$rootfs" "$image" "$hash" --change 'CMD ["/bin/sh"]'
}

# ---------------------------------------------------------------- first-party images
# images/postgres and plugins/*: their own Dockerfiles, built FROM the base
# image (their default base is a public one no registry here serves). The
# inputs hash is the one tests/plugins/images.py computes, so pytest finds
# these up to date: the base image's id, then the `sha256sum` listing of the
# folder's files in byte order (Python caches left out). The same list of
# images is in tests/plugins/images.py.
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DOCKER_IMAGES=(  # "tag folder"; sql-script after postgres-database: it reuses their shared layer
    "nullops-test/postgres:15 images/postgres"
    "nullops-test/postgres-database:latest plugins/postgres-database"
    "nullops-test/sql-script:latest plugins/sql-script"
    "nullops-test/http-wait:latest plugins/http-wait"
    "nullops-test/ansible-host:bookworm images/ansible-host"
)

docker_inputs_hash() {  # folder -> hash
    local folder=$1 base_id
    base_id=$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE") || die "$BASE_IMAGE missing"
    {
        echo "base $base_id"
        (cd "$folder" && find . -name __pycache__ -prune -o -type f ! -name '*.pyc' -printf '%P\0' |
            LC_ALL=C sort -z | xargs -0 -r sha256sum)
    } | sha
}

maybe_docker_build() {  # image folder (relative to the repository)
    local image=$1 folder=$REPO_ROOT/$2 hash old_id t0
    [ -f "$folder/Dockerfile" ] || die "$folder/Dockerfile missing"
    hash=$(docker_inputs_hash "$folder")
    if [ "$FORCE" -eq 0 ] && [ "$(current_hash "$image")" = "$hash" ]; then
        log "$image up to date (inputs ${hash:0:12})"
        return 0
    fi
    t0=$EPOCHREALTIME
    log "building $image from $2 (inputs ${hash:0:12})"
    old_id=$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
    new_workdir
    # The legacy builder (no buildx here) builds on a local-only base; --force-rm
    # leaves no container behind when a step fails. Interrupted, the client's
    # exit cancels the build in the engine.
    DOCKER_BUILDKIT=0 run_killable docker build --force-rm --pull=false \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" --label "$HASH_LABEL=$hash" \
        -t "$image" "$folder" >"$WORKDIR/build.log" 2>&1 || {
        tail -n 30 "$WORKDIR/build.log" >&2
        die "docker build of $image failed"
    }
    rm -rf "$WORKDIR"; WORKDIR=""
    if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect --format '{{.Id}}' "$image")" ]; then
        docker rmi "$old_id" >/dev/null 2>&1 || true
    fi
    log "$image built in $(since "$t0")"
}

# ---------------------------------------------------------------- main
main() {
    command -v docker >/dev/null || die "docker CLI not found (run scripts/test-host.sh)"
    docker info >/dev/null 2>&1 || die "docker engine not reachable (run scripts/test-host.sh)"

    # Two concurrent runs would build the same image twice; serialise them.
    exec 9>/tmp/nullops-build-test-images.lock
    if ! flock -n 9; then
        # (also held by a debootstrap orphaned when an earlier run was killed)
        log "waiting for another build to finish"
        flock 9
    fi
    # Holding the lock, any work dir left over was abandoned by a run that
    # was killed outright (SIGKILL skips the trap).
    local stale
    for stale in "$WORKDIR_PREFIX"*; do
        [ -d "$stale" ] || continue
        log "removing leftover $stale"
        remove_workdir "$stale"
    done

    local t0 base_hash busybox_hash
    t0=$EPOCHREALTIME

    base_hash=$({
        declare -f build_base import_and_tag
        echo "$SUITE $BASE_PACKAGES"  # not the mirror: any mirror gives the same image
        # Name and content of each extra CA certificate, in a stable order.
        find "$HOST_CA_DIR" -maxdepth 1 -name '*.crt' -type f -print0 2>/dev/null |
            sort -z | xargs -0 -r sha256sum
    } | sha)
    maybe_build "$BASE_IMAGE" "$base_hash" build_base

    [ -x "$BUSYBOX_BIN" ] || die "$BUSYBOX_BIN missing (apt-get install busybox-static)"
    busybox_hash=$({
        declare -f build_busybox import_and_tag
        sha256sum <"$BUSYBOX_BIN"
    } | sha)
    maybe_build "$BUSYBOX_IMAGE" "$busybox_hash" build_busybox

    local entry
    for entry in "${DOCKER_IMAGES[@]}"; do
        # shellcheck disable=SC2086 # "tag folder": two words
        maybe_docker_build $entry
    done

    log "done in $(since "$t0")"
}

main "$@"
