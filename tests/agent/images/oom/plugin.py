"""Allocates (and touches) memory until the container's limit kills it."""
import sys

sys.stdin.read()
print("oom plugin: allocating", file=sys.stderr, flush=True)
hoard = []
for _ in range(4096):
    hoard.append(b"z" * (1024 * 1024))  # written, so the pages are really used
print("oom plugin: survived 4 GiB?", file=sys.stderr)
