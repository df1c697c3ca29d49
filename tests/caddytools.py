"""A real Caddy (Debian's package) on free loopback ports, its state in a temporary folder.
Conftests that need it import the `caddy` fixture from here."""
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CaddyProcess:
    def __init__(self, folder):
        self.folder = folder
        self.admin_port, self.http_port = free_port(), free_port()
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        self.listen = f"127.0.0.1:{self.http_port}"
        self.process = None

    def start(self, resume=False):
        config = self.folder / "caddy.json"
        config.write_text(json.dumps({"admin": {"listen": f"127.0.0.1:{self.admin_port}"}}))
        env = {**os.environ, "XDG_DATA_HOME": str(self.folder / "data"),
               "XDG_CONFIG_HOME": str(self.folder / "config")}
        args = ["caddy", "run", "--config", str(config)] + (["--resume"] if resume else [])
        self.log = open(self.folder / "caddy.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(f"{self.admin_url}/config/", timeout=1).read()
                return
            except (urllib.error.URLError, OSError):
                assert self.process.poll() is None, (self.folder / "caddy.log").read_text()
                assert time.monotonic() < deadline, "caddy did not start"
                time.sleep(0.05)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.log.close()

    def get(self, host, path="/", timeout=5):
        """(status, body) of a request through Caddy with this Host header."""
        request = urllib.request.Request(f"http://{self.listen}{path}", headers={"Host": host})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as exc:  # our server not (yet) listening
            return 0, str(exc)

    def config(self, path="/config/"):
        return json.loads(urllib.request.urlopen(self.admin_url + path, timeout=5).read() or b"null")

    def add_foreign_route(self):
        """A route NullOps did not create (an operator's), in our server's route list."""
        route = {"@id": "operator-status", "match": [{"host": ["status.example.test"]}],
                 "handle": [{"handler": "static_response", "status_code": 200, "body": "operator ok"}]}
        request = urllib.request.Request(
            f"{self.admin_url}/config/apps/http/servers/nullops/routes/0", method="PUT",
            data=json.dumps(route).encode(), headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=5).read()


@pytest.fixture
def caddy(tmp_path):
    if not shutil.which("caddy"):
        message = "caddy is missing (apt-get install caddy; make test installs it)"
        if os.environ.get("NULLOPS_TEST_DOCKER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    folder = tmp_path / "caddy"
    folder.mkdir()
    process = CaddyProcess(folder)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def web(app):
    """The web tier over HTTP (the ingress asks it for pages): "host:port"."""
    import threading

    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
