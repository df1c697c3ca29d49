"""Reads the JSON input and writes {"echo": input}. Params shape extra behaviour:
sleep (seconds before answering), stderr_lines (that many numbered lines, each followed by
line_chars characters of "\u00ff", six bytes each in JSON), long_line (one stderr line of that
many characters), leak_secrets (print the secrets to stderr, to test
redaction), print_outputs (print the outputs it was given to stderr), probe ([host, port]:
report whether a TCP connection works), outputs (merged into the result, for
`${steps.X.outputs.KEY}`), fail_on_rollback (exit 4 when asked to roll back)."""
import json
import socket
import sys
import time

data = json.load(sys.stdin)
params = data.get("params") or {}
print(f"echo plugin: action {data.get('action')}, {len(json.dumps(data))} bytes in", file=sys.stderr)
padding = "\u00ff" * params.get("line_chars", 0)
for i in range(params.get("stderr_lines", 0)):
    print(f"line {i}{padding}", file=sys.stderr)
if params.get("long_line"):
    print("y" * params["long_line"], file=sys.stderr)
if params.get("leak_secrets"):
    print("secrets:", " ".join((data.get("secrets") or {}).values()), file=sys.stderr)
if params.get("print_outputs"):
    print("outputs:", json.dumps(data.get("outputs") or {}, sort_keys=True), file=sys.stderr)
if data.get("action") == "rollback":
    print(f"echo plugin: rolling back {data['deployment']['id']}", file=sys.stderr)
    if params.get("fail_on_rollback"):
        sys.exit(4)
result = {"echo": data, **(params.get("outputs") or {})}
if params.get("probe"):
    host, port = params["probe"]
    try:
        socket.create_connection((host, port), timeout=2).close()
        result["probe"] = "connected"
    except OSError as exc:
        result["probe"] = f"failed: {exc}"
time.sleep(params.get("sleep", 0))
json.dump(result, sys.stdout)
