"""Writes something that is not a JSON object (params.mode "text" or "list")."""
import json
import sys

data = json.load(sys.stdin)
if (data.get("params") or {}).get("mode") == "list":
    json.dump([1, 2, 3], sys.stdout)
else:
    sys.stdout.write("this is not JSON at all; " * 40)
