"""Print the node id the agent stored in its data directory (agent.db, table meta), or nothing."""
import sqlite3
import sys
from pathlib import Path

path = Path(sys.argv[1]) / "agent.db"
if path.is_file():
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'node_id'").fetchone()
    except sqlite3.Error:
        row = None
    finally:
        db.close()
    if row:
        print(row[0])
