"""The Docker engine and the local test images do what the rest of NullOps relies on:
images run Python, trust the host's CA certificates, user-defined networks isolate
containers from each other, and a container can be fed JSON on stdin with stdout and
stderr read back apart (the recipe in /work/shared/NOTES.md)."""

import glob
import json
import re
import socket
import ssl
import textwrap
import time
import uuid

import pytest

pytestmark = pytest.mark.docker

WAIT = 30  # seconds; generous, a container here starts in well under a second


def run(client, image, command, labels, **kwargs):
    """Run a container to completion; return (exit code, stdout, stderr)."""
    container = client.containers.run(image, command, detach=True, labels=labels, **kwargs)
    code = container.wait(timeout=WAIT)["StatusCode"]
    out = container.logs(stdout=True, stderr=False).decode()
    err = container.logs(stdout=False, stderr=True).decode()
    return code, out, err


def test_base_image_runs_python(docker_client, base_image, test_labels):
    code, out, err = run(
        docker_client,
        base_image,
        ["python3", "-c", "import sys; print('hello', sys.version_info[:2], sys.stdout.encoding, 'π')"],
        test_labels,
    )
    assert (code, err) == (0, "")
    # Python 3.11 from bookworm, and UTF-8 output thanks to ENV LANG=C.UTF-8.
    assert out == "hello (3, 11) utf-8 π\n"


def _pem_blocks_to_der(text):
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)
    return {ssl.PEM_cert_to_DER_cert(block) for block in blocks}


def test_base_image_trusts_host_ca_certificates(docker_client, base_image, test_labels):
    program = textwrap.dedent("""
        import ssl, sys
        # What an HTTPS client in the image trusts by default.
        print(len(ssl.create_default_context().get_ca_certs()), file=sys.stderr)
        sys.stdout.write(open("/etc/ssl/certs/ca-certificates.crt").read())
    """)
    code, bundle, err = run(docker_client, base_image, ["python3", "-c", program], test_labels)
    assert code == 0, err
    assert bundle.strip(), "/etc/ssl/certs/ca-certificates.crt is empty"
    assert int(err) > 100  # Debian's roots are there

    # The proxy's CAs the host trusts must be in the image's bundle too.
    in_image = _pem_blocks_to_der(bundle)
    for path in glob.glob("/usr/local/share/ca-certificates/*.crt"):
        with open(path) as f:
            host_certs = _pem_blocks_to_der(f.read())
        assert host_certs and host_certs <= in_image, f"{path} is not in the image's CA bundle"


def test_networks_isolate_containers(docker_client, busybox_image, test_labels):
    suffix = uuid.uuid4().hex[:8]
    net_a = docker_client.networks.create(
        f"nullops-test-a-{suffix}", driver="bridge", labels=test_labels, check_duplicate=True
    )
    net_b = docker_client.networks.create(
        f"nullops-test-b-{suffix}", driver="bridge", labels=test_labels, check_duplicate=True
    )

    server_name = f"nullops-test-web-{suffix}"
    server = docker_client.containers.run(
        busybox_image,
        [
            "sh",
            "-c",
            "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 8080 -h /www",
        ],
        name=server_name,
        network=net_a.name,
        labels=test_labels,
        detach=True,
    )
    server.reload()
    server_ip = server.attrs["NetworkSettings"]["Networks"][net_a.name]["IPAddress"]
    assert server_ip

    # Same network: reachable by container name (Docker's DNS). Retry briefly while
    # httpd starts. (Never `wget -T`: Debian's static busybox segfaults with it; the
    # `timeout` applet bounds each attempt instead. It execs the command in its own
    # process, so that must not be PID 1, which ignores SIGTERM: hence `sh -c "...; exit $?"`,
    # which sh cannot replace by an exec.)
    fetch = (
        f"for i in $(seq 50); do timeout 2 wget -q -O - http://{server_name}:8080/"
        f" && exit 0; sleep 0.1; done; exit 1"
    )
    code, out, err = run(docker_client, busybox_image, ["sh", "-c", fetch], test_labels, network=net_a.name)
    assert (code, out) == (0, "hello-from-web\n"), err

    # Other network: the name does not resolve there ...
    code, out, err = run(
        docker_client,
        busybox_image,
        ["sh", "-c", f"timeout 3 wget -O - http://{server_name}:8080/; exit $?"],
        test_labels,
        network=net_b.name,
    )
    assert code != 0 and out == "", err
    assert "bad address" in err

    # ... and its address cannot be reached either: the engine drops traffic between
    # bridge networks, so the connection hangs until `timeout` ends it (not refused,
    # not answered by anything).
    started = time.monotonic()
    code, out, err = run(
        docker_client,
        busybox_image,
        ["sh", "-c", f"timeout 3 wget -O - http://{server_ip}:8080/; exit $?"],
        test_labels,
        network=net_b.name,
    )
    elapsed = time.monotonic() - started
    assert code != 0 and out == "", err
    assert "refused" not in err and "server returned" not in err, err
    assert 2.5 < elapsed < 15, f"wget ended after {elapsed:.1f} s: {err}"

    # The server itself was fine all along.
    server.reload()
    assert server.status == "running"


DOUBLER = textwrap.dedent("""
    import json, sys
    data = json.load(sys.stdin)
    print(f"read {len(data)} keys", file=sys.stderr)
    json.dump({key: value * 2 for key, value in data.items()}, sys.stdout)
""")


def run_with_stdin(client, image, cmd, payload, labels, network):
    """The NOTES.md recipe: JSON in on stdin, stdout and stderr back apart."""
    api = client.api
    host_config = api.create_host_config(mem_limit="64m", nano_cpus=500_000_000, network_mode=network)
    # stdin_open + attach before start => StdinOnce: the program sees end of input when
    # we close our side.
    cid = api.create_container(
        image, cmd, stdin_open=True, tty=False, labels=labels, host_config=host_config
    )["Id"]
    sock = api.attach_socket(cid, params={"stdin": 1, "stream": 1})
    api.start(cid)
    sock._sock.sendall(payload)
    sock._sock.shutdown(socket.SHUT_WR)
    sock.close()
    code = api.wait(cid, timeout=WAIT)["StatusCode"]
    out = api.logs(cid, stdout=True, stderr=False).decode()
    err = api.logs(cid, stdout=False, stderr=True).decode()
    return code, out, err


def test_json_on_stdin_stdout_and_stderr_apart(docker_client, base_image, test_labels):
    network = docker_client.networks.create(
        f"nullops-test-stdin-{uuid.uuid4().hex[:8]}",
        driver="bridge",
        labels=test_labels,
        check_duplicate=True,
    )
    # Big enough to need several socket writes and reads on both ends.
    data = {"n": 21, "s": "ab", "items": [1, 2, 3], "big": "x" * 200_000}
    code, out, err = run_with_stdin(
        docker_client,
        base_image,
        ["python3", "-c", DOUBLER],
        json.dumps(data).encode(),
        test_labels,
        network.name,
    )
    assert code == 0, err
    assert json.loads(out) == {"n": 42, "s": "abab", "items": [1, 2, 3, 1, 2, 3], "big": "x" * 400_000}
    assert err == "read 4 keys\n"

    # A program that fails: non-zero exit, the traceback on stderr only.
    code, out, err = run_with_stdin(
        docker_client, base_image, ["python3", "-c", DOUBLER], b"not json", test_labels, network.name
    )
    assert code == 1
    assert out == ""
    assert "JSONDecodeError" in err
