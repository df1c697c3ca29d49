"""Reads its input, says so on stderr, then sleeps (params.seconds, default an hour)."""
import json
import sys
import time

data = json.load(sys.stdin)
print("sleepy plugin: going to sleep", file=sys.stderr, flush=True)
time.sleep((data.get("params") or {}).get("seconds", 3600))
json.dump({"slept": True}, sys.stdout)
