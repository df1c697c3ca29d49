"""Reads its input, says so on stderr, then sleeps (params.seconds, default an hour).
Asked to roll back, it answers at once."""
import json
import sys
import time

data = json.load(sys.stdin)
if data.get("action") == "rollback":
    print("sleepy plugin: nothing to roll back", file=sys.stderr)
    json.dump({}, sys.stdout)
    sys.exit(0)
print("sleepy plugin: going to sleep", file=sys.stderr, flush=True)
time.sleep((data.get("params") or {}).get("seconds", 3600))
json.dump({"slept": True}, sys.stdout)
