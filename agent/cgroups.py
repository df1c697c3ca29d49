"""A deployment's CPU and memory limits hold all its containers together, services and running
plugins alike (issue 18 item 1).

The agent picks one way at start (probe()):
- cgroup v1 with the engine's cgroupfs driver (DeploymentCgroups): a cgroup per deployment,
  `/<root>/<node>/<deployment>`, made under the cpu and memory hierarchies before the
  deployment's first container and removed after its last, carries the limits; the engine makes
  each container's cgroup under it (Docker's `cgroup_parent`), the kernel holds their sum.
  Measured on a 2-core host: two containers spinning without limits of their own under a parent
  of 0.5 CPU used 0.485 CPU together.
- cgroup v2 with the cgroupfs driver (DeploymentCgroupsV2): the same parent in the unified
  hierarchy, with `cpu.max` and `memory.max`, the cpu and memory controllers enabled down to it.
- otherwise (no writable /sys/fs/cgroup, the systemd driver, a rootless engine) SplitLimits:
  each container gets a share so that the shares sum to the deployment's limits; the agent says
  so at start. Never unlimited.
"""
import errno
import logging
import os
import time

from agent.errors import EngineError

log = logging.getLogger("nullops.agent.cgroups")

PERIOD_US = 100_000
MIB = 1024 * 1024
# A share never goes below these (Docker refuses a memory limit under 6 MiB).
MIN_SHARE_MB = 6
MIN_SHARE_CPUS = 0.01


class DeploymentCgroups:
    """cgroup v1 (the engine's cgroupfs driver)."""

    version = 1

    def __init__(self, node_id, mount="/sys/fs/cgroup", root="nullops"):
        self.node_id = node_id
        self.mount = mount
        self.root = root

    def describe(self):
        return (f"cgroup v{self.version}: each deployment's containers run under "
                f"{self.mount}/…/{self.root}/{self.node_id}/<deployment> with its limits")

    def parent(self, deployment_id):
        """The cgroup_parent Docker takes: a path from each hierarchy's root."""
        return f"/{self.root}/{self.node_id}/{deployment_id}"

    def container_limits(self, spec, step, default=None):
        """Its own limits, never above the deployment's: the kernel refuses a child cgroup a CPU
        quota above its parent's (EINVAL), and the parent holds their sum anyway."""
        limits = spec.get("limits") or {}
        own = own_limits(spec, step, default)
        return {key: min(value, limits[key]) if value and limits.get(key) else value
                for key, value in own.items()}

    def _dir(self, controller, deployment_id):
        return os.path.join(self.mount, controller, self.parent(deployment_id).lstrip("/"))

    def _refused(self, exc, deployment_id):
        return EngineError("engine_error", f"cannot set the limits of deployment {deployment_id} "
                           f"on its cgroup ({exc.strerror}: {exc.filename}); the agent needs the "
                           f"host's /sys/fs/cgroup (cgroup v{self.version}) writable")

    def ensure(self, deployment_id, cpus, memory_mb):
        """Make the deployment's parent (again) with its limits; returns its cgroup_parent."""
        try:
            cpu = self._dir("cpu", deployment_id)
            os.makedirs(cpu, exist_ok=True)
            _write(cpu, "cpu.cfs_period_us", PERIOD_US)
            _write(cpu, "cpu.cfs_quota_us", max(1000, int(cpus * PERIOD_US)))
            memory = self._dir("memory", deployment_id)
            os.makedirs(memory, exist_ok=True)
            _write(memory, "memory.limit_in_bytes", int(memory_mb) * MIB)
        except OSError as exc:
            raise self._refused(exc, deployment_id) from None
        return self.parent(deployment_id)

    def check_writable(self):
        """Make the node's cgroup where deployments' go, then remove it again when empty;
        OSError when it cannot be made."""
        for controller in ("cpu", "memory"):
            hierarchy = os.path.join(self.mount, controller)
            if not os.path.isdir(hierarchy):   # never made here: it is the kernel's mount
                raise FileNotFoundError(errno.ENOENT, "no such hierarchy", hierarchy)
            node = os.path.join(hierarchy, self.root, self.node_id)
            os.makedirs(node, exist_ok=True)
            _remove_empty(node, os.path.dirname(node))

    def remove(self, deployment_id):
        """Remove the deployment's cgroup from every hierarchy (the engine makes it in all of
        them, blkio to pids, for the containers' own), then the node's when empty; one missing
        is removed already. Returns what could not be removed (still busy)."""
        left = []
        for hierarchy in self._hierarchies():
            path = os.path.join(hierarchy, self.parent(deployment_id).lstrip("/"))
            _rmdir_waiting(path, left)
            # The node's, then the root's, once nothing is left in them.
            _remove_empty(os.path.dirname(path), os.path.dirname(os.path.dirname(path)))
        return left

    def _hierarchies(self):
        """Each mounted hierarchy once (cpu and cpuacct may be links to cpu,cpuacct)."""
        seen, found = set(), []
        try:
            names = sorted(os.listdir(self.mount))
        except OSError:
            return found
        for name in names:
            real = os.path.realpath(os.path.join(self.mount, name))
            if real not in seen and os.path.isdir(real):
                seen.add(real)
                found.append(real)
        return found


class DeploymentCgroupsV2(DeploymentCgroups):
    """cgroup v2, the unified hierarchy (the engine's cgroupfs driver): one tree, `cpu.max` and
    `memory.max`; a controller works in a cgroup only when its parent lists it in
    `cgroup.subtree_control`, so the agent enables cpu and memory from the root down."""

    version = 2

    def _path(self, *parts):
        return os.path.join(self.mount, *parts)

    def _enable(self, parts):
        """Make each level and enable cpu and memory for the level below it (the root's are
        enabled by the system; a level with processes of its own cannot: not ours)."""
        for depth in range(len(parts) + 1):
            directory = self._path(*parts[:depth])
            os.makedirs(directory, exist_ok=True)
            if depth < len(parts):
                current = _read(directory, "cgroup.subtree_control").split()
                missing = [name for name in ("cpu", "memory") if name not in current]
                if missing:
                    _write(directory, "cgroup.subtree_control", " ".join(f"+{m}" for m in missing))

    def ensure(self, deployment_id, cpus, memory_mb):
        parts = [self.root, self.node_id, deployment_id]
        try:
            self._enable(parts)
            directory = self._path(*parts)
            _write(directory, "cpu.max", f"{max(1000, int(cpus * PERIOD_US))} {PERIOD_US}")
            _write(directory, "memory.max", int(memory_mb) * MIB)
            if os.path.exists(os.path.join(directory, "memory.swap.max")):  # swap accounting on
                _write(directory, "memory.swap.max", 0)   # held to its memory, not pushed to swap
        except OSError as exc:
            raise self._refused(exc, deployment_id) from None
        return self.parent(deployment_id)

    def check_writable(self):
        controllers = _read(self.mount, "cgroup.controllers").split()
        missing = [name for name in ("cpu", "memory") if name not in controllers]
        if missing:
            raise OSError(errno.ENOTSUP, f"controller(s) {', '.join(missing)} not available",
                          os.path.join(self.mount, "cgroup.controllers"))
        self._enable([self.root, self.node_id])
        _remove_empty(self._path(self.root, self.node_id), self._path(self.root))

    def remove(self, deployment_id):
        left = []
        path = self._path(self.root, self.node_id, deployment_id)
        _rmdir_waiting(path, left)
        _remove_empty(os.path.dirname(path), os.path.dirname(os.path.dirname(path)))
        return left


class SplitLimits:
    """The fallback without deployment cgroups: each container of a deployment gets a share of
    its limits and the shares sum to them. Services that declare limits keep them; the rest is
    split evenly between the services that declare none and every plugin (a plugin takes its
    own limit when smaller than its share). A share is at least MIN_SHARE_MB / MIN_SHARE_CPUS."""

    version = None

    def __init__(self, reason):
        self.reason = reason

    def describe(self):
        return (f"no deployment cgroups ({self.reason}): each container gets a share of its "
                "deployment's limits, the shares sum to them")

    def parent(self, deployment_id):
        return None

    def ensure(self, deployment_id, cpus, memory_mb):
        return None

    def remove(self, deployment_id):
        return []

    def container_limits(self, spec, step, default=None):
        return split_limits(spec, default).get(step["id"]) or {"cpus": MIN_SHARE_CPUS,
                                                               "memory_mb": MIN_SHARE_MB}


def own_limits(spec, step, default=None):
    """A container's own limits: its declared ones, else `default` (a plugin's), else the
    deployment's."""
    limits, default = spec.get("limits") or {}, default or {}
    return {key: step.get(key, default.get(key, limits.get(key))) for key in ("cpus", "memory_mb")}


def split_limits(spec, plugin_default=None):
    """{step id: {"cpus", "memory_mb"}} for every service and plugin of `spec`, summing to its
    limits (SplitLimits)."""
    limits = spec.get("limits") or {}
    plugin_default = plugin_default or {}
    steps = [s for s in spec.get("steps", []) if s.get("kind") in ("service", "plugin")]
    shares = {s["id"]: {} for s in steps}
    for key, floor in (("cpus", MIN_SHARE_CPUS), ("memory_mb", MIN_SHARE_MB)):
        total = limits.get(key)
        if not total:
            for s in steps:
                shares[s["id"]][key] = s.get(key, plugin_default.get(key) if s["kind"] == "plugin" else None)
            continue
        declared = {s["id"]: s[key] for s in steps if s["kind"] == "service" and s.get(key)}
        scale = min(1.0, total / sum(declared.values())) if declared else 1.0  # limits lowered since
        declared = {sid: value * scale for sid, value in declared.items()}
        sharing = [s for s in steps if s["id"] not in declared]
        share = (total - sum(declared.values())) / len(sharing) if sharing else 0
        for s in steps:
            value = declared.get(s["id"], share)
            if s["kind"] == "plugin":
                value = min(value, s.get(key, plugin_default.get(key, value)))
            value = max(floor, value)
            shares[s["id"]][key] = int(value) if key == "memory_mb" else round(value, 3)
    return shares


def probe(client, node_id, mount="/sys/fs/cgroup", root="nullops"):
    """The way this host holds deployments to their limits: DeploymentCgroups(V2) when the
    engine's cgroup driver is cgroupfs and the agent can write the host's cgroups, else
    SplitLimits naming why."""
    try:
        info = client.info()
    except Exception as exc:  # noqa: BLE001 - any failure: the fallback says why
        return SplitLimits(f"the engine did not say its cgroup driver: {exc}")
    driver, version = info.get("CgroupDriver", ""), str(info.get("CgroupVersion") or "1")
    if driver != "cgroupfs":
        return SplitLimits(f"the engine's cgroup driver is {driver or 'unknown'}; deployment "
                           "cgroups need cgroupfs (dockerd --exec-opt native.cgroupdriver=cgroupfs)")
    cgroups = (DeploymentCgroupsV2 if version == "2" else DeploymentCgroups)(node_id, mount, root)
    try:
        cgroups.check_writable()
    except OSError as exc:
        return SplitLimits(f"cannot write the host's cgroup v{version} tree at {mount} "
                           f"({exc.strerror}: {exc.filename}); run the agent with "
                           f"-v /sys/fs/cgroup:/sys/fs/cgroup, as root")
    return cgroups


class CgroupsUnavailable(Exception):
    """--deployment-cgroups on, and this host cannot have them; the message says why."""


def choose(mode, client, node_id):
    """The agent's keeper of limits for `mode` (auto, on, off), said in its log at start."""
    if mode == "off":
        keeper = SplitLimits("turned off with --deployment-cgroups off")
    else:
        keeper = probe(client, node_id)
        if mode == "on" and keeper.version is None:
            raise CgroupsUnavailable(f"--deployment-cgroups on, but {keeper.reason}")
    if keeper.version is None:
        log.warning("deployment limits: %s", keeper.describe())
    else:
        log.info("deployment limits: %s", keeper.describe())
    return keeper


def _rmdir_waiting(path, left):
    # The engine removes its containers' own cgroups just after the containers: busy for a
    # moment at most.
    for attempt in range(20):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or attempt == 19:
                left.append(f"cgroup {path}: {exc.strerror}")
                return
            time.sleep(0.1)


def _remove_empty(*paths):
    for path in paths:
        try:
            os.rmdir(path)
        except OSError:
            return   # in use: deployments live there


def _read(directory, name):
    with open(os.path.join(directory, name)) as handle:
        return handle.read()


def _write(directory, name, value):
    with open(os.path.join(directory, name), "w") as handle:
        handle.write(str(value))
