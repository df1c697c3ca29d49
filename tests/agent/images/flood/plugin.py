"""Writes 50 MB to stdout (a plugin gone wrong), then a JSON object."""
import sys

sys.stdin.read()
chunk = b"x" * (1024 * 1024)
for _ in range(50):
    sys.stdout.buffer.write(chunk)
sys.stdout.buffer.write(b'{"done": true}')
