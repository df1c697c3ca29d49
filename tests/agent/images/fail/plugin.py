"""Fails: a few stderr lines, then exit code 3."""
import sys

sys.stdin.read()
print("fail plugin: starting", file=sys.stderr)
print("fail plugin: the database refused the connection", file=sys.stderr)
sys.exit(3)
