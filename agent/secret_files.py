"""Secrets a service takes as files (issue 17 item 8): `secret_files` of a service step.

An environment variable is part of the container's configuration: `docker inspect` on the node
shows it to anyone with the Docker socket. A secret file is written by the agent into a folder
on a tmpfs (memory only, never the node's disk), one folder per service container, bind-mounted
read-only at `/run/secrets` (where Docker's own secrets and images' `*_FILE` conventions look).
`docker inspect` then shows the folder's path, never the value. Each file is 0400 and owned by
the image's user, so the service reads it and nobody else in the container does; the folder is
removed with the container.

The folder's path is the same for the agent and for the Docker engine (a bind source is a host
path): an agent in a container mounts the host's tmpfs folder at the same path. A folder that is
not on a tmpfs is refused: the agent never writes a secret to disk.
"""
import io
import os
import re
import shutil
import tarfile

from docker.errors import APIError

from agent.errors import AgentError

TARGET = "/run/secrets"      # where the service sees its files
FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
MAX_FILES = 32
MAX_FILE_BYTES = 64 * 1024


class SecretFilesError(AgentError):
    codes = frozenset({"secret_files_unavailable", "secret_files_failed"})


def _unescape(field):
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def filesystem_type(path, mountinfo="/proc/self/mountinfo"):
    """The type of the filesystem `path` is on (the longest mount point above it), or None."""
    path = os.path.realpath(path)
    best, kind = "", None
    try:
        with open(mountinfo) as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5 or not right:
                    continue
                point = _unescape(fields[4])
                inside = path == point or path.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, kind = point, right.split()[0]
    except OSError:
        return None
    return kind


def _ids(text, name_to_ids):
    """uid and gid of a Docker `User` ("", "name", "uid", "uid:gid", "name:group")."""
    user, _, group = (text or "").partition(":")
    if user in ("", "root"):
        uid, gid = 0, 0
    elif user.isdigit():
        uid, gid = int(user), int(user)
    else:
        uid, gid = name_to_ids(user, "passwd")
    if group:
        gid = int(group) if group.isdigit() else name_to_ids(group, "group")[1]
    return uid, gid


def _lookup(read_file):
    """A name_to_ids for _ids() over the image's /etc/passwd and /etc/group."""
    tables = {}

    def find(name, table):
        if table not in tables:
            tables[table] = read_file(f"/etc/{table}") or b""
        for line in tables[table].decode(errors="replace").splitlines():
            fields = line.split(":")
            if len(fields) >= 4 and fields[0] == name:
                if table == "passwd":
                    return int(fields[2]), int(fields[3])
                return int(fields[2]), int(fields[2])
        what = "user" if table == "passwd" else "group"
        raise SecretFilesError("secret_files_failed",
                               f"the image has no {what} {name!r} to own its secret files")
    return find


def container_file(api, container_id):
    """read_file for _lookup(): one file of a created (not started) container, or None."""
    def read(path):
        try:  # NotFound (no such file) is an APIError: the name is then unknown
            stream, _ = api.get_archive(container_id, path)
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                member = tar.next()
                handle = tar.extractfile(member) if member is not None else None
                return handle.read() if handle is not None else None
        except (APIError, tarfile.TarError):
            return None
    return read


class SecretFiles:
    """The folders of one node's secret files: <root>/<node>/<deployment>/<step>."""

    def __init__(self, root, node_id):
        self.root = os.path.abspath(root) if root else None
        self.node_id = node_id

    def _node_dir(self):
        if self.root is None:
            raise SecretFilesError("secret_files_unavailable", "this agent has no secret files folder: "
                                   "set AGENT_SECRETS_DIR to a folder on a tmpfs")
        return os.path.join(self.root, self.node_id)

    def folder(self, deployment_id, step_id):
        return os.path.join(self._node_dir(), deployment_id, step_id)

    def prepare(self, deployment_id, step_id):
        """An empty folder for a container's files (made before the container: a bind source
        must exist); refused unless it is on a tmpfs."""
        node_dir = self._node_dir()
        os.makedirs(node_dir, mode=0o700, exist_ok=True)
        kind = filesystem_type(node_dir)
        if kind != "tmpfs":
            raise SecretFilesError(
                "secret_files_unavailable",
                f"the secret files folder {self.root} is on {kind or 'an unknown filesystem'}, not a tmpfs: "
                "set AGENT_SECRETS_DIR to a folder on a tmpfs (e.g. under /dev/shm or /run; an agent in a "
                "container mounts it at the same path)")
        os.chmod(self.root, 0o700)
        os.chmod(node_dir, 0o700)
        path = self.folder(deployment_id, step_id)
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, mode=0o700)
        return path

    def write(self, path, files, uid, gid):
        """Each file 0400 owned by uid:gid in a 0500 folder of the same owner."""
        try:
            for name, value in files.items():
                target = os.path.join(path, name)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
                try:
                    os.write(fd, value.encode())
                    os.fchown(fd, uid, gid)
                    os.fchmod(fd, 0o400)
                finally:
                    os.close(fd)
            os.chown(path, uid, gid)
            os.chmod(path, 0o500)
        except OSError as exc:  # the message names the folder, never a value
            raise SecretFilesError("secret_files_failed",
                                   f"writing secret files into {path} failed: {exc.strerror}") from None

    def remove(self, deployment_id, step_id=None):
        if self.root is None:
            return
        node_dir = os.path.join(self.root, self.node_id)
        path = os.path.join(node_dir, deployment_id, *([step_id] if step_id else []))
        shutil.rmtree(path, ignore_errors=True)

    def deployment_ids(self):
        try:
            return set(os.listdir(os.path.join(self.root, self.node_id))) if self.root else set()
        except OSError:
            return set()


def owner(user, read_file):
    """(uid, gid) that should own the files of a container whose image runs as `user`."""
    try:
        return _ids(user, _lookup(read_file))
    except ValueError:
        raise SecretFilesError("secret_files_failed", f"cannot tell who the image user {user!r} is") from None
