#!/usr/bin/env bash
# The application as one archive for roles/nullops_control_plane: the files git tracks (as they
# are in the work tree) plus the built front-end assets (app/static/vendor and app/static/build,
# `make assets`), which git ignores. Reproducible: the same files give the same bytes (sorted
# names, fixed times and owners, gzip without a time stamp), so the role copies and unpacks a
# release only when something changed.
#
# Usage: scripts/source-archive.sh OUTPUT.tar.gz
set -euo pipefail

out=${1:?usage: scripts/source-archive.sh OUTPUT.tar.gz}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
for built in app/static/vendor/htmx.min.js app/static/build; do
    [ -e "$built" ] || { echo "source-archive: $built is missing: run make assets first" >&2; exit 1; }
done
mkdir -p "$(dirname "$out")"
tmp=$(mktemp "${out}.XXXXXX")
trap 'rm -f "$tmp"' EXIT
# Deleted but not yet committed files are listed by ls-files: keep only those that exist.
{ git ls-files -z; find app/static/vendor app/static/build -type f -print0; } |
    while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
    tar --null -T - --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        --mode='u+rwX,go+rX,go-w' -c | gzip -n >"$tmp"
mv "$tmp" "$out"
trap - EXIT
