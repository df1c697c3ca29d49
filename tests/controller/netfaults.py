"""Network faults for controller tests, on loopback only: a TCP proxy that can go silent,
packets dropped by the kernel for one connection (a leader that dies cleanly sends FIN; these
make the cases that do not: a partition, a host that freezes whole), and a registry whose image
pulls never end."""
import contextlib
import shutil
import socket
import subprocess
import threading
import time

import psutil

BLACKHOLE_COMMENT = "nullops-test-blackhole"  # marks our iptables rules, so stale ones can go


class SilentProxy:
    """Forwards 127.0.0.1:<port> to an upstream address until `go_silent()`; from then on it
    reads and drops every byte both ways and keeps every socket open: to both ends the peer
    is still there (its kernel acknowledges everything) and never answers again."""

    def __init__(self, upstream_host, upstream_port):
        self.upstream = (upstream_host, upstream_port)
        self.silent = threading.Event()
        self._sockets = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="silent-proxy", daemon=True).start()

    def go_silent(self):
        self.silent.set()

    def _accept(self):
        while True:
            try:
                client, _peer = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source, sink):
        while True:
            try:
                data = source.recv(65536)
                if not data:
                    if not self.silent.is_set():
                        sink.shutdown(socket.SHUT_WR)
                    return
                if not self.silent.is_set():
                    sink.sendall(data)
            except OSError:
                return

    def close(self):
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _iptables(*args):
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, timeout=30)


def can_drop_packets():
    """iptables works here (root, a kernel with netfilter)."""
    return shutil.which("iptables") is not None and _iptables("-S", "INPUT").returncode == 0


def _rules(client_port, server_port):
    """Both directions of one loopback connection, dropped as they arrive (INPUT): to each
    kernel its packets leave normally and are never answered. Dropping in OUTPUT instead is no
    partition: the sender's TCP sees a local error and keeps probing without counting."""
    def rule(sport, dport):
        return ["INPUT", "-i", "lo", "-s", "127.0.0.1", "-d", "127.0.0.1", "-p", "tcp",
                "--sport", str(sport), "--dport", str(dport),
                "-m", "comment", "--comment", BLACKHOLE_COMMENT, "-j", "DROP"]

    return [rule(client_port, server_port), rule(server_port, client_port)]


def remove_stale_rules():
    """Rules a killed run left behind, whose connection is gone: a new connection that happens
    to get the same port would hang. A concurrent run's rule has its connection alive."""
    live = {(conn.laddr.port, conn.raddr.port) for conn in psutil.net_connections(kind="tcp")
            if conn.raddr}
    for line in _iptables("-S", "INPUT").stdout.splitlines():
        if BLACKHOLE_COMMENT not in line:
            continue
        words = line.split()
        sport, dport = int(words[words.index("--sport") + 1]), int(words[words.index("--dport") + 1])
        if (sport, dport) not in live:
            _iptables("-D", *words[1:])


@contextlib.contextmanager
def packets_dropped(client_port, server_port):
    """Every packet between 127.0.0.1:client_port and 127.0.0.1:server_port vanishes."""
    remove_stale_rules()
    added = []
    try:
        for rule in _rules(client_port, server_port):
            done = _iptables("-I", *rule)
            assert done.returncode == 0, done.stderr
            added.append(rule)
        yield
    finally:
        for rule in added:
            _iptables("-D", *rule)


class StuckRegistry:
    """A container registry on 127.0.0.1 that answers the engine's version check (GET /v2/) and
    nothing else, so a pull of any image from it waits for ever: the engine gives up on a
    registry silent from the start (its check times out after about 25 s) but not on a manifest
    request that never gets an answer. `pulls` counts those requests, one per pull."""

    def __init__(self):
        self.pulls = 0
        self._sockets = []
        self._counted = threading.Condition()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="stuck-registry", daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _peer = self._listener.accept()
            except OSError:
                return  # closed
            self._sockets.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        received = b""
        try:
            while b"\r\n\r\n" not in received:
                chunk = conn.recv(4096)
                if not chunk or (not received and chunk[:1] == b"\x16"):
                    conn.close()  # TLS first: refused, and the engine tries plain HTTP (loopback)
                    return
                received += chunk
            if received.startswith(b"GET /v2/ "):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Docker-Distribution-API-Version: registry/2.0\r\n"
                             b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
                conn.close()
                return
            with self._counted:
                self.pulls += 1
                self._counted.notify_all()
            # no answer: the socket stays open until close()
        except OSError:
            return

    def wait_for_pulls(self, count=1, timeout=30):
        deadline = time.monotonic() + timeout
        with self._counted:
            while self.pulls < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{self.pulls} pulls reached the registry within {timeout}s, wanted {count}"
                self._counted.wait(left)

    def close(self):
        """The hung pulls fail at once."""
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
