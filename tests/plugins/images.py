"""The first-party images (images/postgres, plugins/*) as the tests use them: built FROM the
local base image and tagged nullops-test/..., exactly as scripts/build-test-images.sh builds
them, so `make test` builds each once and pytest finds it up to date.

An image is rebuilt only when its inputs changed. The inputs hash, computed the same way by
the script (`docker_inputs_hash` there), is the SHA-256 of the line "base <base image id>"
followed by the `sha256sum` listing of the folder's files (relative paths in byte order,
caches left out), and is kept in the image's HASH_LABEL.
"""
import hashlib
import io
import tarfile
import threading
from pathlib import Path

from docker.errors import APIError, NotFound

from tests.dockertools import HASH_LABEL

ROOT = Path(__file__).resolve().parents[2]
# name: (folder, test tag); the same list is in scripts/build-test-images.sh.
IMAGES = {
    "postgres": ("images/postgres", "nullops-test/postgres:15"),
    "postgres-database": ("plugins/postgres-database", "nullops-test/postgres-database:latest"),
    "sql-script": ("plugins/sql-script", "nullops-test/sql-script:latest"),
    "http-wait": ("plugins/http-wait", "nullops-test/http-wait:latest"),
    # A managed Debian host for the Ansible roles' Molecule scenarios and provisioning tests.
    "ansible-host": ("images/ansible-host", "nullops-test/ansible-host:bookworm"),
    # FROM ansible-host (build it first; scripts/build-test-images.sh leaves it to the test that
    # uses it): a node host reached over SSH only (tests/provisioning/test_ssh_host.py).
    "ssh-node": ("images/ssh-node", "nullops-test/ssh-node:bookworm"),
    # FROM ansible-host: systemd as PID 1, for roles that install units (nullops_control_plane).
    "systemd-host": ("images/systemd-host", "nullops-test/systemd-host:bookworm"),
    # FROM systemd-host, with requirements.txt in its context (EXTRA_FILES): the control plane
    # role's packages and virtualenv installed ahead, for its fast Molecule scenario.
    "control-plane-host": ("images/control-plane-host", "nullops-test/control-plane-host:bookworm"),
}
# Files of the repository an image's build needs besides its folder, put beside its Dockerfile.
EXTRA_FILES = {"control-plane-host": ("requirements.txt",)}
# sql-script after postgres-database: it then reuses the psycopg2 layer they share.
WAVES = (("postgres", "postgres-database", "http-wait"), ("sql-script",))


def _files(folder):
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.is_file() and "__pycache__" not in rel.parts and path.suffix != ".pyc":
            yield rel.as_posix()


def inputs_hash(folder, base_id, extras=()):
    listing = "".join(f"{hashlib.sha256((folder / rel).read_bytes()).hexdigest()}  {rel}\n"
                      for rel in sorted(_files(folder), key=str.encode))
    listing += "".join(f"{hashlib.sha256((ROOT / extra).read_bytes()).hexdigest()}  {extra}\n"
                       for extra in extras)
    return hashlib.sha256(f"base {base_id}\n{listing}".encode()).hexdigest()


def _context(folder, extras):
    """The build context as a tar: the folder's files, then each extra file at its top."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for rel in _files(folder):
            tar.add(folder / rel, arcname=rel)
        for extra in extras:
            tar.add(ROOT / extra, arcname=Path(extra).name)
    buffer.seek(0)
    return buffer


def build(client, name, base_image):
    """The test tag of image `name`, built now if its inputs changed."""
    folder, tag = IMAGES[name]
    extras = EXTRA_FILES.get(name, ())
    inputs = inputs_hash(ROOT / folder, client.images.get(base_image).id, extras)
    try:
        old = client.images.get(tag)
    except NotFound:
        old = None
    if old is not None and old.labels.get(HASH_LABEL) == inputs:
        return tag
    where = ({"fileobj": _context(ROOT / folder, extras), "custom_context": True} if extras
             else {"path": str(ROOT / folder)})
    image, _ = client.images.build(**where, tag=tag, buildargs={"BASE_IMAGE": base_image},
                                   labels={HASH_LABEL: inputs}, forcerm=True, rm=True, pull=False)
    if old is not None and old.id != image.id:
        try:
            client.images.remove(old.id)
        except APIError:
            pass  # still used by a container, or already gone
    return tag


def build_all(client, base_image):
    """{name: test tag} of every image; independent builds run side by side."""
    tags, errors = {}, []

    def one(name):
        try:
            tags[name] = build(client, name, base_image)
        except Exception as exc:  # reported below, with the image's name
            errors.append(f"{name}: {exc}")

    for wave in WAVES:
        threads = [threading.Thread(target=one, args=(name,)) for name in wave]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors, f"building first-party images failed: {errors}"
    return tags
