"""The first-party images (images/postgres, plugins/*) as the tests use them: built FROM the
local base image and tagged nullops-test/..., exactly as scripts/build-test-images.sh builds
them, so `make test` builds each once and pytest finds it up to date.

An image is rebuilt only when its inputs changed. The inputs hash, computed the same way by
the script (`docker_inputs_hash` there), is the SHA-256 of the line "base <base image id>"
followed by the `sha256sum` listing of the folder's files (relative paths in byte order,
caches left out), and is kept in the image's HASH_LABEL.
"""
import hashlib
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
}
# sql-script after postgres-database: it then reuses the psycopg2 layer they share.
WAVES = (("postgres", "postgres-database", "http-wait"), ("sql-script",))


def _files(folder):
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.is_file() and "__pycache__" not in rel.parts and path.suffix != ".pyc":
            yield rel.as_posix()


def inputs_hash(folder, base_id):
    listing = "".join(f"{hashlib.sha256((folder / rel).read_bytes()).hexdigest()}  {rel}\n"
                      for rel in sorted(_files(folder), key=str.encode))
    return hashlib.sha256(f"base {base_id}\n{listing}".encode()).hexdigest()


def build(client, name, base_image):
    """The test tag of image `name`, built now if its inputs changed."""
    folder, tag = IMAGES[name]
    inputs = inputs_hash(ROOT / folder, client.images.get(base_image).id)
    try:
        old = client.images.get(tag)
    except NotFound:
        old = None
    if old is not None and old.labels.get(HASH_LABEL) == inputs:
        return tag
    image, _ = client.images.build(path=str(ROOT / folder), tag=tag, buildargs={"BASE_IMAGE": base_image},
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
