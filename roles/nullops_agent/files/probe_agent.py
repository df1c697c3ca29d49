"""Wait until the agent of one container answers on its published port, and say what it is.

Run on the node by the nullops_agent role (python3, standard library only). The agent's
`/healthz` reveals nothing but "ok" (docs/protocol.md), so the version comes from the container
itself: the agent logs `nullops-agent <version>, node id <id>` and `certificate thumbprint
sha256: <hex>` at every start. The probe reads the latest such lines from the container's log
through the Docker socket and connects to the port over TLS: the port answers for this start of
this container only when the certificate presented there has the thumbprint the container
logged. Prints one JSON object: version, node_id, thumbprint. Exits 1 with the reason (and the
end of the agent's log) when that does not happen within the timeout.
"""
import argparse
import hashlib
import http.client
import json
import re
import socket
import ssl
import sys
import time
import urllib.parse

STARTED = re.compile(r"nullops-agent (\S+), node id (\S+), data in")
THUMBPRINT = re.compile(r"certificate thumbprint sha256: ([0-9a-f]{64})")


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=10):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def engine(socket_path, path):
    conn = UnixConnection(socket_path)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def demux(raw):
    """The text of a non-TTY container log stream (8-byte frame headers)."""
    out, i = [], 0
    while i + 8 <= len(raw):
        size = int.from_bytes(raw[i + 4:i + 8], "big")
        out.append(raw[i + 8:i + 8 + size])
        i += 8 + size
    return b"".join(out).decode("utf-8", "replace")


def container_state(socket_path, name):
    quoted = urllib.parse.quote(name)
    status, body = engine(socket_path, f"/containers/{quoted}/json")
    if status != 200:
        return None, "", f"container {name}: engine answered {status}"
    state = json.loads(body)["State"]
    _, logs = engine(socket_path, f"/containers/{quoted}/logs?stdout=1&stderr=1&tail=400")
    return state, demux(logs), None


def logged(text):
    """(version, node id, thumbprint) of the latest start in the log, None where missing."""
    version = node_id = thumbprint = None
    starts = list(STARTED.finditer(text))
    if starts:
        last = starts[-1]
        version, node_id = last.group(1), last.group(2)
        found = THUMBPRINT.search(text, last.end())
        thumbprint = found.group(1) if found else None
    return version, node_id, thumbprint


def presented(address, port):
    """SHA-256 of the certificate the port presents, if /healthz answers 200 there."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Not checked against a CA by design (docs/protocol.md): compared with the logged thumbprint.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((address, port), timeout=5) as raw:
        with context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
            tls.sendall(b"GET /healthz HTTP/1.0\r\nHost: agent\r\n\r\n")
            answer = b""
            while chunk := tls.recv(4096):
                answer += chunk
    if not answer.startswith(b"HTTP/1.1 200") and not answer.startswith(b"HTTP/1.0 200"):
        raise OSError(f"/healthz answered {answer[:40]!r}")
    return hashlib.sha256(der).hexdigest()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--container", required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--timeout", type=float, default=90)
    parser.add_argument("--socket", default="/var/run/docker.sock")
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout
    why, logs = "not probed yet", ""
    while time.monotonic() < deadline:
        try:
            state, logs, why = container_state(args.socket, args.container)
            if state is not None:
                version, node_id, thumbprint = logged(logs)
                if state.get("Restarting") or (not state.get("Running") and state.get("ExitCode")):
                    # Final: the agent stopped with an error (its port in use, a bad setting): its
                    # restart policy would only repeat that until the timeout.
                    tail = "\n".join(logs.splitlines()[-15:])
                    print(f"container {args.container} exited with code {state.get('ExitCode')} at start; "
                          f"last lines of its log:\n{tail}", file=sys.stderr)
                    return 1
                if not state.get("Running"):
                    why = f"container {args.container} is {state.get('Status')} (exit code {state.get('ExitCode')})"
                elif version is None or thumbprint is None:
                    why = "the agent has not logged its version and certificate yet"
                elif version != args.version:
                    # Final: the container runs another version than the one asked for.
                    print(f"container {args.container} runs nullops-agent {version}, not {args.version}",
                          file=sys.stderr)
                    return 1
                else:
                    seen = presented(args.address, args.port)
                    if seen == thumbprint:
                        print(json.dumps({"version": version, "node_id": node_id, "thumbprint": thumbprint}))
                        return 0
                    why = (f"{args.address}:{args.port} presents certificate {seen}, not the one "
                           f"container {args.container} logged ({thumbprint}): another process answers there")
        except (OSError, ValueError, KeyError, http.client.HTTPException) as exc:
            why = f"{args.address}:{args.port}: {exc}"
        time.sleep(1)
    tail = "\n".join(logs.splitlines()[-15:])
    print(f"the agent did not answer within {args.timeout:g} s: {why}\nlast lines of its log:\n{tail}",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
