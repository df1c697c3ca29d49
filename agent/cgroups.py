"""One cgroup per deployment that holds every container of it, services and running plugins
alike, with the deployment's CPU and memory limits on it (issue 18 item 1): the engine makes
each container's cgroup under it (Docker's `cgroup_parent`), the kernel holds their sum.

cgroup v1 (the engine's cgroupfs driver): the parent is made under the cpu and memory
hierarchies before the deployment's first container and removed after its last. Measured on a
2-core host: two containers spinning without limits of their own under a parent of 0.5 CPU used
0.485 CPU together. The agent needs the host's /sys/fs/cgroup writable (docs/agent.md).
"""
import errno
import os
import time

from agent.errors import EngineError

PERIOD_US = 100_000
MIB = 1024 * 1024


class DeploymentCgroups:
    def __init__(self, node_id, mount="/sys/fs/cgroup", root="nullops"):
        self.node_id = node_id
        self.mount = mount
        self.root = root

    def parent(self, deployment_id):
        """The cgroup_parent Docker takes: a path from each hierarchy's root."""
        return f"/{self.root}/{self.node_id}/{deployment_id}"

    def _dir(self, controller, deployment_id):
        return os.path.join(self.mount, controller, self.parent(deployment_id).lstrip("/"))

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
            raise EngineError("engine_error", f"cannot set the limits of deployment {deployment_id} "
                              f"on its cgroup ({exc.strerror}: {exc.filename}); the agent needs "
                              "the host's /sys/fs/cgroup (cgroup v1) writable") from None
        return self.parent(deployment_id)

    def remove(self, deployment_id):
        """Remove the deployment's cgroup from every hierarchy (the engine makes it in all of
        them, blkio to pids, for the containers' own), then the node's when empty; one missing
        is removed already. Returns what could not be removed (still busy)."""
        left = []
        for hierarchy in self._hierarchies():
            path = os.path.join(hierarchy, self.parent(deployment_id).lstrip("/"))
            # The engine removes its containers' own cgroups just after the containers: busy
            # for a moment at most.
            for attempt in range(20):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or attempt == 19:
                        left.append(f"cgroup {path}: {exc.strerror}")
                        break
                    time.sleep(0.1)
            for upper in (os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
                try:
                    os.rmdir(upper)   # the node's, then the root's, once nothing is left in them
                except OSError:
                    break
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


def _write(directory, name, value):
    with open(os.path.join(directory, name), "w") as handle:
        handle.write(str(value))
