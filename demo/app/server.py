"""The NullOps demo web app: shows the rows of its database's `items` table and its own version.

Standard library plus Debian's python3-psycopg2. Settings come from the environment:
DATABASE_URL (postgresql://user:password@host:5432/db, from the postgres-database plugin),
APP_VERSION and APP_COLOR (baked into the image at build time), PORT (default 8000).

GET /            an HTML page: the version and the rows, and a form that adds a row
GET /api/items   {"version": ..., "database": ..., "items": [{"id", "title", "created_at"}]}
POST /api/items  {"title": "..."} adds a row (so each copy's own database can be shown)
GET /health      200 "ok" when the database answers, else 503
"""
import html
import json
import os
import signal
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2

VERSION = os.environ.get("APP_VERSION", "dev")
COLOR = os.environ.get("APP_COLOR", "#2f6fdf")
DARK = os.environ.get("APP_THEME", "light") == "dark"
TABLE_SQL = "SELECT id, title, created_at FROM items ORDER BY id"
TITLE_MAX = 200


def connect():
    # A short connect timeout: /health must answer quickly even while the database is down.
    return psycopg2.connect(os.environ["DATABASE_URL"], connect_timeout=3)


def database_name():
    url = urllib.parse.urlsplit(os.environ.get("DATABASE_URL", ""))
    return url.path.lstrip("/") or "?"


def read_items():
    with connect() as conn, conn.cursor() as cur:
        cur.execute(TABLE_SQL)
        return [{"id": i, "title": t, "created_at": c.isoformat()} for i, t, c in cur.fetchall()]


def add_item(title):
    with connect() as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO items (title) VALUES (%s) RETURNING id", (title,))
        return cur.fetchone()[0]


def page(items, error=None):
    background, text = ("#16181d", "#e8e8e8") if DARK else ("#ffffff", "#1b1b1b")
    rows = "".join(f"<tr><td>{item['id']}</td><td>{html.escape(item['title'])}</td>"
                   f"<td>{html.escape(item['created_at'][:19])}</td></tr>" for item in items)
    problem = f"<p class=error>{html.escape(error)}</p>" if error else ""
    return f"""<!doctype html>
<html><head><meta charset=utf-8><title>NullOps demo {html.escape(VERSION)}</title>
<style>body{{font-family:sans-serif;margin:2rem;background:{background};color:{text}}}
header{{border-left:.6rem solid {html.escape(COLOR)};padding-left:1rem}}
table{{border-collapse:collapse}}td,th{{border:1px solid #8884;padding:.3rem .8rem;text-align:left}}
.error{{color:#d33}}</style></head>
<body><header><h1>NullOps demo</h1><p>version <b id=version>{html.escape(VERSION)}</b>,
database <b>{html.escape(database_name())}</b></p></header>{problem}
<table><tr><th>id</th><th>title</th><th>added</th></tr>{rows}</table>
<form method=post action=/add><input name=title maxlength={TITLE_MAX} placeholder="a new row" required>
<button>Add</button></form></body></html>"""


class Handler(BaseHTTPRequestHandler):
    server_version = "nullops-demo"

    def _send(self, status, body, content_type="text/html; charset=utf-8", extra=()):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status, obj):
        self._send(status, json.dumps(obj), "application/json")

    def _body(self):
        length = min(int(self.headers.get("Content-Length") or 0), 64 * 1024)
        return self.rfile.read(length)

    def do_GET(self):  # noqa: N802 - the http.server API
        path = urllib.parse.urlsplit(self.path).path
        try:
            if path == "/health":
                with connect() as conn, conn.cursor() as cur:
                    cur.execute("SELECT 1")
                self._send(200, "ok\n", "text/plain")
            elif path == "/api/items":
                self._json(200, {"version": VERSION, "database": database_name(), "items": read_items()})
            elif path == "/":
                self._send(200, page(read_items()))
            else:
                self._send(404, "not found\n", "text/plain")
        except psycopg2.Error as exc:
            message = f"database error: {str(exc).strip()}"
            if path == "/":
                self._send(503, page([], message))
            else:
                self._json(503, {"version": VERSION, "error": message})

    def do_POST(self):  # noqa: N802
        path = urllib.parse.urlsplit(self.path).path
        try:
            if path == "/api/items":
                title = json.loads(self._body() or b"{}").get("title")
            elif path == "/add":
                title = urllib.parse.parse_qs(self._body().decode()).get("title", [""])[0]
            else:
                return self._send(404, "not found\n", "text/plain")
            if not isinstance(title, str) or not title.strip() or len(title) > TITLE_MAX:
                return self._json(422, {"error": f"title: give 1-{TITLE_MAX} characters"})
            item_id = add_item(title.strip())
        except (ValueError, AttributeError):
            return self._json(400, {"error": 'send JSON like {"title": "a row"}'})
        except psycopg2.Error as exc:
            return self._json(503, {"error": f"database error: {str(exc).strip()}"})
        if path == "/add":
            return self._send(303, "", extra=[("Location", "/")])
        return self._json(201, {"id": item_id, "title": title.strip()})

    def log_message(self, fmt, *args):
        sys.stderr.write(f"{self.address_string()} {fmt % args}\n")


def main():
    port = int(os.environ.get("PORT", "8000"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    # PID 1 in its container: without a handler SIGTERM is ignored and every stop waits out the
    # grace period before the kill.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"nullops demo {VERSION} listening on :{port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
