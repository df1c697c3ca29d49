"""Run one plugin step: a container that reads a JSON object on stdin, writes a JSON object on
stdout, exits 0 on success, and whose stderr is the step's log (spec glossary, "plugin").

stdin, stdout and stderr go through ONE attach socket opened before the container starts
(NOTES.md, "Feeding a container JSON on stdin"); a reader thread demultiplexes the engine's
frames itself, so that
- stdout is capped at `max_output_bytes`: past it the container is killed and the rest is
  drained and dropped, never held in memory;
- the container can use `log_config={"type": "none"}`: plugin outputs (often secrets, a
  database URL) are never written to the node's disk by Docker, and nothing can read them back.

Known secret values of the input are redacted from the step's log and from error messages.
"""
import json
import logging
import socket
import struct
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from docker.errors import APIError, NotFound
from docker.types import LogConfig

from agent import labels as L
from agent.docker_exec import SECURITY_OPT, check_confined, refuse_forbidden
from agent.errors import UNAVAILABLE, Cancelled, PluginError, engine_call, engine_error
from agent.redaction import redact
from agent.spec import DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_PLUGIN_TIMEOUT_S

log = logging.getLogger(__name__)

DEFAULT_CPUS = 0.5
DEFAULT_MEMORY_MB = 256
PIDS_LIMIT = 1024            # a runaway fork loop in a plugin stays inside its container
MAX_LOG_LINES = 2000
MAX_LINE_CHARS = 4096
TRUNCATED = " [line truncated]"
PREVIEW_CHARS = 200          # of a bad output shown in the error
FAILURE_TAIL_LINES = 10      # stderr lines quoted when a plugin fails
TICK_S = 0.02                # how often the run looks at cancel, the timeout and the output cap

_HEADER = struct.Struct(">BxxxL")  # engine attach frame: stream (1 stdout, 2 stderr), size
STDOUT, STDERR = 1, 2


@dataclass
class PluginResult:
    output: dict
    log: list[str] = field(default_factory=list)


def _secret_values(input_obj):
    secrets = input_obj.get("secrets") if isinstance(input_obj, dict) else None
    values = [v for v in (secrets or {}).values() if isinstance(v, str) and v]
    return sorted(set(values), key=len, reverse=True)  # longest first: no partial leftovers


class _Lines:
    """stderr as lines: each cut to MAX_LINE_CHARS, only the last MAX_LOG_LINES kept."""

    def __init__(self):
        self.lines = deque(maxlen=MAX_LOG_LINES)
        self.total = 0
        self._partial = bytearray()
        self._cut = False

    def feed(self, data):
        start = 0
        while True:
            end = data.find(b"\n", start)
            self._extend(data[start:] if end < 0 else data[start:end])
            if end < 0:
                return
            self._finish()
            start = end + 1

    def _extend(self, chunk):
        room = MAX_LINE_CHARS * 4 - len(self._partial)  # bytes; cut to characters at the end
        if room > 0:
            self._partial += chunk[:room]
        if len(chunk) > room:
            self._cut = True

    def _finish(self):
        line = self._partial.decode("utf-8", errors="replace").rstrip("\r")
        if self._cut or len(line) > MAX_LINE_CHARS:
            line = line[:MAX_LINE_CHARS - len(TRUNCATED)] + TRUNCATED
        self.lines.append(line)
        self.total += 1
        self._partial.clear()
        self._cut = False

    def close(self):
        if self._partial or self._cut:
            self._finish()

    def result(self, secrets):
        total, kept = self.total, list(self.lines)  # list(): one atomic copy while the reader runs
        lines = [redact(line, secrets) for line in kept]
        if total > len(kept):
            lines.insert(0, f"[{total - len(kept)} earlier log lines dropped; the last {len(kept)} are kept]")
        return lines


class _Attachment:
    """The single attach socket: a writer thread feeds stdin then closes our sending side (the
    container sees end of input, StdinOnce), a reader thread splits stdout from stderr."""

    def __init__(self, api, container_id, payload, max_output):
        self.payload = payload
        self.max_output = max_output
        self.stdout = bytearray()
        self.stderr = _Lines()
        self.too_large = threading.Event()
        self.eof = threading.Event()
        self.error = None
        self._io = api.attach_socket(container_id, params={"stdin": 1, "stdout": 1, "stderr": 1,
                                                           "stream": 1})
        self._sock = getattr(self._io, "_sock", self._io)
        self._threads = []

    def start(self):
        for target, name in ((self._write, "plugin-stdin"), (self._read, "plugin-output")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _write(self):
        try:
            self._sock.sendall(self.payload)
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the plugin exited without reading its input: its exit code tells the rest

    def _take(self, kind, data):
        if kind == STDOUT:
            if self.too_large.is_set():
                return
            if len(self.stdout) + len(data) > self.max_output:
                self.too_large.set()
                self.stdout.clear()  # nothing of an oversized output is kept
            else:
                self.stdout += data
        elif kind == STDERR:
            self.stderr.feed(data)

    def _read(self):
        # Hot path: every byte a plugin writes passes here.
        buffer = bytearray()
        kind, left = None, 0
        try:
            while True:
                chunk = self._sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                while buffer:
                    if left == 0:
                        if len(buffer) < _HEADER.size:
                            break
                        kind, left = _HEADER.unpack_from(buffer)
                        del buffer[:_HEADER.size]
                        continue
                    piece = bytes(buffer[:left])
                    del buffer[:len(piece)]
                    left -= len(piece)
                    self._take(kind, piece)
        except OSError as exc:
            self.error = exc
        finally:
            self.stderr.close()
            self.eof.set()

    def close(self):
        for closer in (lambda: self._sock.shutdown(socket.SHUT_RDWR), self._sock.close, self._io.close):
            try:
                closer()
            except OSError:
                pass
        for thread in self._threads:
            thread.join(timeout=2)


def _kill(api, container_id):
    try:
        api.kill(container_id)
    except (APIError, *UNAVAILABLE):
        pass  # already gone or exited: removal in `finally` follows anyway


def run_plugin(executor, spec, step, input_obj, *, run_id, cancel, action="run", auth=None):
    """Run plugin `step` with `input_obj` on stdin; return its output object and log.
    Raises PluginError, ImageError (from `executor.pull`), EngineError or Cancelled."""
    refuse_forbidden(step)
    api = executor.client.api
    deployment_id, step_id, image = spec["deployment_id"], step["id"], step["image"]
    timeout_s = step.get("timeout_s", DEFAULT_PLUGIN_TIMEOUT_S)
    max_output = step.get("max_output_bytes", DEFAULT_MAX_OUTPUT_BYTES)
    limits = executor.container_limits(spec, step, {"cpus": DEFAULT_CPUS, "memory_mb": DEFAULT_MEMORY_MB})
    memory_mb, cpus = limits["memory_mb"], limits["cpus"]
    secrets = _secret_values(input_obj)
    payload = json.dumps(input_obj, separators=(",", ":")).encode()
    where = f"plugin step {step_id} ({image}, {action})"

    executor.pull(image, auth=auth)
    networking = None
    if step.get("network"):
        network_mode = executor.ensure_network(deployment_id).name
        networking = api.create_networking_config({network_mode: api.create_endpoint_config()})
    else:
        network_mode = "none"
    cgroup_parent = executor.cgroup_parent(spec)   # a plugin counts against the deployment's limits
    host_config = api.create_host_config(
        network_mode=network_mode, mem_limit=f"{memory_mb}m", nano_cpus=int(cpus * 1e9),
        cgroup_parent=cgroup_parent,
        log_config=LogConfig(type="none"), pids_limit=PIDS_LIMIT, init=False, privileged=False,
        security_opt=list(SECURITY_OPT))
    check_confined(host_config, network_mode, cgroup_parent)
    labels = executor.labels_for(deployment_id, L.ROLE_PLUGIN, step=step_id, run=run_id)
    name = f"{executor.container_name(deployment_id, step_id)}-{uuid.uuid4().hex[:8]}"

    container_id = attachment = None
    try:
        with engine_call(f"creating the container of {where}"):
            container_id = api.create_container(
                image, name=name, stdin_open=True, tty=False, labels=labels, host_config=host_config,
                networking_config=networking, use_config_proxy=False)["Id"]
            attachment = _Attachment(api, container_id, payload, max_output)
        try:
            api.start(container_id)
        except APIError as exc:
            if exc.status_code != 400:
                raise engine_error(exc, f"starting the container of {where}") from exc
            # 400: the image's entrypoint cannot run (missing binary, bad format): the plugin's fault.
            raise PluginError("plugin_failed", f"{where} could not start: {exc.explanation}") from exc
        except UNAVAILABLE as exc:
            raise engine_error(exc, f"starting the container of {where}") from exc
        attachment.start()
        end = time.monotonic() + timeout_s

        def stop(code, message):
            _kill(api, container_id)
            attachment.eof.wait(2)  # the last stderr lines, up to the kill
            raise PluginError(code, message, attachment.stderr.result(secrets))

        def watch(done):  # `done` waits up to TICK_S itself
            while not done():
                if cancel.is_set():
                    _kill(api, container_id)
                    raise Cancelled(f"{where} was cancelled")
                if attachment.too_large.is_set():
                    stop("plugin_output_too_large", f"{where} wrote more than {max_output} bytes to stdout; "
                         f"it was stopped")
                if time.monotonic() >= end:
                    stop("plugin_timeout", f"{where} did not finish within {timeout_s:g} s; it was stopped")

        watch(lambda: attachment.eof.wait(TICK_S))
        state = {}

        def exited():
            # The output streams close at exit; the engine records the exit a moment later.
            state.update(api.inspect_container(container_id)["State"])
            if state.get("Running"):
                time.sleep(TICK_S)
                return False
            return True

        with engine_call(f"inspecting the container of {where}"):
            watch(exited)
        return _outcome(where, state, attachment, secrets, max_output, memory_mb)
    finally:
        if attachment is not None:
            attachment.close()
        if container_id is not None:
            try:
                api.remove_container(container_id, force=True)
            except NotFound:
                pass
            except (APIError, *UNAVAILABLE) as exc:
                # Labelled: the next teardown or orphan sweep removes it.
                log.warning("removing plugin container %s failed: %s", name, exc)


def _outcome(where, state, attachment, secrets, max_output, memory_mb):
    lines = attachment.stderr.result(secrets)
    if attachment.too_large.is_set():
        raise PluginError("plugin_output_too_large", f"{where} wrote more than {max_output} bytes "
                          f"to stdout", lines)
    if state.get("OOMKilled"):
        raise PluginError("plugin_crashed", f"{where} was killed for running out of memory "
                          f"(limit {memory_mb} MB)", lines)
    code = state.get("ExitCode")
    if code != 0:
        tail = " | ".join(lines[-FAILURE_TAIL_LINES:])[-2000:]
        raise PluginError("plugin_failed", f"{where} exited with code {code}"
                          + (f": {tail}" if tail else " and wrote nothing to stderr"), lines)
    text = attachment.stdout.decode("utf-8", errors="replace")
    try:
        output = json.loads(text)
    except ValueError:
        output = None
    if not isinstance(output, dict):
        shown = redact(text, secrets)
        shown = repr(shown[:PREVIEW_CHARS]) + (" ..." if len(shown) > PREVIEW_CHARS else "")
        raise PluginError("plugin_bad_output", f"{where} must write one JSON object to stdout, "
                          f"it wrote {shown}", lines)
    check_secret_outputs(output, where, lines)
    return PluginResult(output=output, log=lines)


def check_secret_outputs(output, where, lines=()):
    """`secret_outputs` must list keys of the output. Given as a string ("url") it was iterated
    letter by letter and redacted nothing (issue 17 item 6): a plugin that means to hide a value
    and says so wrongly fails its step, naming the field, rather than leak the value."""
    keys = output.get("secret_outputs")
    if keys is None:
        return
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise PluginError("plugin_bad_output", f"{where}: secret_outputs must be a list of output "
                          f"keys (e.g. [\"url\"]), not {type(keys).__name__}", list(lines))
    unknown = sorted(set(keys) - set(output))
    if unknown:
        raise PluginError("plugin_bad_output", f"{where}: secret_outputs names keys the output "
                          f"does not have: {', '.join(unknown)[:200]}", list(lines))
