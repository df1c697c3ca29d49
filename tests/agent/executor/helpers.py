"""Small helpers shared by the executor tests: specs, test services, timings."""
import calendar
import socket
import time
import uuid

# Test services trap SIGTERM (a shell or Python as PID 1 ignores it otherwise), so graceful
# stops in teardown take milliseconds, not the whole grace period.
TCP_SERVICE = """
import signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
time.sleep(float(sys.argv[1]))
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", 9000))
server.listen(64)
print("ready at", repr(time.time()), flush=True)
while True:
    server.accept()[0].close()
"""


def tcp_service(delay_s=1.0):
    """A Python TCP service on port 9000 that listens after `delay_s` and then logs
    "ready at <unix time>" (run on the base image)."""
    return ["python3", "-c", TCP_SERVICE, str(delay_s)]


def httpd_service(delay_s=1):
    """busybox httpd on port 8080 serving "ok" at / after `delay_s` seconds."""
    script = ('trap "exit 0" TERM; mkdir -p /www; echo ok > /www/index.html; '
              f'sleep {delay_s}; httpd -f -p 8080 -h /www & wait')
    return ["sh", "-c", script]


def idle_service(before="true"):
    """busybox: run `before`, then idle until stopped."""
    return ["sh", "-c", f'trap "exit 0" TERM; {before}; sleep 3600 & wait']


def spec_for(deployment_id, *steps, cpus=1.0, memory_mb=512):
    return {"deployment_id": deployment_id, "name": deployment_id, "pipeline_version": 1,
            "limits": {"cpus": cpus, "memory_mb": memory_mb}, "steps": list(steps)}


def service(step_id, image, **fields):
    return {"id": step_id, "kind": "service", "image": image, **fields}


def plugin(step_id, image, **fields):
    return {"id": step_id, "kind": "plugin", "image": image, **fields}


def dep_id():
    return f"dep-{uuid.uuid4().hex[:6]}"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def started_at(container):
    """The container's State.StartedAt as a UNIX time (the engine keeps nanoseconds)."""
    container.reload()
    stamp = container.attrs["State"]["StartedAt"]  # 2024-01-02T03:04:05.123456789Z
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{fraction or 0}")
