"""Everything the agent does to the Docker engine for a deployment.

Every object carries the labels of `agent.labels` and is found again only through server-side
label filters (node + deployment), the way docker-compose 1.29 `project.containers()` does:
teardown and orphan removal never walk a config, so objects that left a spec are not leaked
(compose issue #3408), and objects of another node sharing the engine are never touched.

Only structured SDK arguments are used; nothing from a spec is ever put into a shell string.
Resolved `env` and `command` may hold secrets: they are never logged.
"""
import hashlib
import ipaddress
import json
import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor

from docker.errors import APIError, NotFound
from docker.types import IPAMConfig, IPAMPool, LogConfig, Mount
from docker.utils import parse_repository_tag

from agent import labels as L
from agent import secret_files
from agent.cgroups import own_limits
from agent.errors import UNAVAILABLE, AgentError, EngineError, ImageError, engine_call, engine_error
from agent.spec import FORBIDDEN, SpecError

log = logging.getLogger(__name__)

NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
SERVICE_LOG_CONFIG = {"type": "json-file", "config": {"max-size": "10m", "max-file": "2"}}
PARALLEL = 8                 # concurrent stop/remove/stats calls against one engine
MAX_SUBNET_REFUSALS = 32     # engine refusals (a concurrent agent took the subnet) before giving up
ACTIVE_STATES = ("running", "restarting", "paused")

# HostConfig keys that would give a container power over the node. The spec validator refuses
# the matching spec keys; this is the last line of defence, checked on what is sent to Docker.
_EMPTY_HOST_KEYS = ("Privileged", "CapAdd", "Devices", "DeviceRequests", "Binds", "Mounts",
                    "VolumesFrom", "PidMode", "IpcMode", "UTSMode", "UsernsMode",
                    "CgroupParent", "Sysctls")
# Every container NullOps starts (services and plugins): no setuid/file-capability privilege
# gain inside it, and a process cap, so a fork bomb in a selectable tag stays in its container
# instead of taking the node down (issue 17 item 2). The only security option ever sent.
SECURITY_OPT = ["no-new-privileges:true"]
SERVICE_PIDS_LIMIT = 4096    # databases and app servers fork workers; far below a node's pid_max


def refuse_forbidden(step):
    """Defence in depth: the validator refuses these keys upstream, refuse them here too."""
    bad = sorted(key for key in step if key in FORBIDDEN)
    if bad:
        raise SpecError(f"step {step.get('id')}: {FORBIDDEN[bad[0]]}", refused=True)


def secrets_mount(folder):
    """The one bind mount a service may get: its own secret files folder, read-only."""
    return Mount(target=secret_files.TARGET, source=folder, type="bind", read_only=True)


def check_confined(host_config, network_mode, cgroup_parent=None, secrets_folder=None):
    """Refuse to send a HostConfig that escapes the container's confinement; the one cgroup
    parent allowed is the deployment's own (agent/cgroups.py), the one mount the container's
    own secret files folder (agent/secret_files.py)."""
    allowed = {"CgroupParent": cgroup_parent,
               "Mounts": [secrets_mount(secrets_folder)] if secrets_folder else None}
    loose = [key for key in _EMPTY_HOST_KEYS if host_config.get(key)
             and not (allowed.get(key) and host_config[key] == allowed[key])]
    if host_config.get("NetworkMode") != network_mode:
        loose.append("NetworkMode")
    if host_config.get("SecurityOpt") != SECURITY_OPT:
        loose.append("SecurityOpt")
    if not host_config.get("PidsLimit") or host_config["PidsLimit"] < 1:
        loose.append("PidsLimit")
    if loose:
        raise RuntimeError(f"refusing to create a container with {loose} set (or missing)")


def config_hash(image_id, env, command, ports, expose, limits, extra=None):
    """sha256 of the sorted JSON of everything that makes a service container what it is."""
    doc = {"image": image_id, "env": env or {}, "command": command, "ports": sorted(ports),
           "expose": sorted(expose), "limits": limits, "extra": extra or {}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# The engine (20.10) reports a registry's authentication refusal as a plain HTTP 500 whose text
# is all there is ("no basic auth credentials", "unauthorized: authentication required",
# "denied: requested access to the resource is denied"); the SDK gives it no type. This is the
# one place where the agent reads an error's text, and only to choose between two ImageError codes.
_AUTH_REFUSAL = re.compile(r"\b(unauthorized|no basic auth credentials|denied|authentication required)\b",
                           re.IGNORECASE)


def _auth_refusal(exc):
    return exc.status_code == 500 and bool(_AUTH_REFUSAL.search(str(exc.explanation or "")))


def _host_routes():
    """Subnets the host itself uses (routes and DNS servers), so a deployment network never
    shadows them. Best effort: inside a container these are the container's own."""
    found = []
    try:
        with open("/proc/net/route") as f:
            next(f)
            for line in f:
                fields = line.split()
                # Little-endian hex: destination and mask of each route.
                dest, mask = (ipaddress.IPv4Address(int(fields[i], 16).to_bytes(4, "little")) for i in (1, 7))
                net = ipaddress.ip_network(f"{dest}/{mask}", strict=False)
                if net.prefixlen:  # the default route overlaps everything
                    found.append(net)
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    try:
        with open("/etc/resolv.conf") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "nameserver":
                    try:
                        found.append(ipaddress.ip_network(fields[1]))
                    except ValueError:
                        pass
    except OSError:
        pass
    return found


class Executor:
    """The Docker side of one node agent. Thread-safe; one instance per agent."""

    def __init__(self, client, node_id, *, subnet_pool="10.240.0.0/12", subnet_prefix=24,
                 publish_host="0.0.0.0", stop_grace_s=2, labels=None, cgroups=None, secrets_dir=None):
        if not isinstance(node_id, str) or not NODE_ID.match(node_id):
            raise ValueError("node_id must be letters, digits, '.', '_' or '-' (at most 63)")
        self.client = client
        self.node_id = node_id
        self.pool = ipaddress.ip_network(subnet_pool)
        if not self.pool.prefixlen <= subnet_prefix <= self.pool.max_prefixlen - 3:
            raise ValueError(f"subnet_prefix /{subnet_prefix} does not fit in {subnet_pool}")
        self.subnet_prefix = subnet_prefix
        self.publish_host = publish_host
        self.stop_grace_s = stop_grace_s
        self.extra_labels = dict(labels or {})  # e.g. test ownership labels; never overrides ours
        self._network_lock = threading.Lock()
        self._cpu_samples = {}  # container id -> (container cpu ns, system cpu ns)
        # agent.cgroups (probe()): DeploymentCgroups(V2) hold all a deployment's containers to
        # its limits, SplitLimits gives each a share of them; None: each container gets the
        # deployment's (executor tests only; the agent always probes).
        self.cgroups = cgroups
        # Folders on a tmpfs for services' secret files (issue 17 item 8); None: none offered.
        self.secret_files = secret_files.SecretFiles(secrets_dir, node_id)

    # --- names and labels ------------------------------------------------------------------
    def network_name(self, deployment_id):
        return f"nullops-{self.node_id}-{deployment_id}"

    def container_name(self, deployment_id, step_id):
        return f"nullops-{self.node_id}-{deployment_id}-{step_id}"

    def labels_for(self, deployment_id, role, **extra):
        labels = dict(self.extra_labels)
        labels.update({L.NODE: self.node_id, L.DEPLOYMENT: deployment_id, L.ROLE: role})
        for key, value in extra.items():
            labels[f"{L.PREFIX}.{key}"] = str(value)
        return labels

    def _filters(self, deployment_id=None, role=None):
        selectors = L.for_node(self.node_id) if deployment_id is None else L.for_deployment(
            self.node_id, deployment_id)
        if role:
            selectors.append(f"{L.ROLE}={role}")
        return {"label": selectors}  # several label filters: the engine ANDs them

    # --- networks --------------------------------------------------------------------------
    def find_network(self, deployment_id):
        with engine_call("listing networks"):
            found = self.client.networks.list(filters=self._filters(deployment_id, L.ROLE_NETWORK))
        if not found:
            return None
        found.sort(key=lambda n: n.attrs.get("Created", ""))
        for extra in found[1:]:
            # Left by a create whose answer was lost: a second network with the same name
            # makes `start` fail with "network ... is ambiguous".
            try:
                extra.remove()
            except (NotFound, APIError):
                pass
        return found[0]

    def _taken_subnets(self):
        with engine_call("listing networks"):
            networks = self.client.api.networks()  # every network: other agents, other software
        taken = list(_host_routes())
        for net in networks:
            for config in (net.get("IPAM") or {}).get("Config") or []:
                try:
                    taken.append(ipaddress.ip_network(config.get("Subnet", ""), strict=False))
                except ValueError:
                    pass
        return [net for net in taken if net.version == self.pool.version]

    def ensure_network(self, deployment_id):
        """The deployment's bridge network, created with a subnet from the agent's pool."""
        network = self.find_network(deployment_id)
        if network is not None:
            return network
        with self._network_lock:
            network = self.find_network(deployment_id)
            if network is not None:
                return network
            return self._create_network(deployment_id)

    def _create_network(self, deployment_id):
        name = self.network_name(deployment_id)
        taken = self._taken_subnets()
        refusals = 0
        for candidate in self.pool.subnets(new_prefix=self.subnet_prefix):
            if any(candidate.overlaps(net) for net in taken):
                continue
            labels = self.labels_for(deployment_id, L.ROLE_NETWORK, subnet=candidate)
            ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=str(candidate))])
            try:
                # Not internal: deployments may call external APIs.
                return self.client.networks.create(name, driver="bridge", ipam=ipam, labels=labels,
                                                   check_duplicate=True, internal=False)
            except APIError as exc:
                if exc.status_code in (400, 403):
                    # "Pool overlaps with other one on this address space" (403 on 20.10): a
                    # concurrent agent or other software took it since we listed. Next one.
                    refusals += 1
                    taken.append(candidate)
                    if refusals >= MAX_SUBNET_REFUSALS:
                        raise engine_error(exc, f"creating network {name}") from exc
                    continue
                if exc.status_code == 409:
                    # The name exists: a concurrent call of ours made it, or it is not ours.
                    network = self.find_network(deployment_id)
                    if network is not None:
                        return network
                    raise EngineError("engine_error", f"a network named {name} exists that node "
                                      f"{self.node_id} did not create") from exc
                raise engine_error(exc, f"creating network {name}") from exc
            except UNAVAILABLE as exc:
                raise engine_error(exc, f"creating network {name}") from exc
        raise EngineError("engine_error", f"no free /{self.subnet_prefix} subnet left in {self.pool} "
                          f"for network {name}")

    # --- images ----------------------------------------------------------------------------
    def pull(self, image, auth=None):
        """Make `image` present locally; a no-op when it is. `auth`: {"username", "password"}."""
        try:
            self.client.images.get(image)
            return
        except NotFound:
            pass
        except (APIError, *UNAVAILABLE) as exc:
            raise engine_error(exc, f"looking up image {image}") from exc
        repository, tag = parse_repository_tag(image)
        try:
            for item in self.client.api.pull(repository, tag=tag or "latest", stream=True, decode=True,
                                             auth_config=auth):
                # A failure after the pull started (a layer download) arrives as an item.
                if isinstance(item, dict) and item.get("error"):
                    raise ImageError("pull_failed", f"pulling image {image} failed: {item['error']}")
        except NotFound as exc:  # ImageNotFound too: manifest or repository unknown
            raise ImageError("image_not_found", f"image {image} was not found in its registry "
                             f"(or these credentials cannot see it): {exc.explanation}") from exc
        except APIError as exc:
            if exc.status_code in (401, 403) or _auth_refusal(exc):
                raise ImageError("pull_denied", f"the registry refused to let this node pull image "
                                 f"{image}: {exc.explanation}") from exc
            raise ImageError("pull_failed", f"could not pull image {image} (registry unreachable or "
                             f"failing): {exc.explanation}") from exc
        except UNAVAILABLE as exc:
            raise engine_error(exc, f"pulling image {image}") from exc
        try:
            self.client.images.get(image)
        except NotFound as exc:
            raise ImageError("pull_failed", f"image {image} is still missing after its pull") from exc

    # --- services --------------------------------------------------------------------------
    def container_limits(self, spec, step, default=None):
        """A container's own CPU and memory limits: its declared ones, else `default` (a
        plugin's), else the deployment's; a share of the deployment's under SplitLimits."""
        if self.cgroups is not None:
            return self.cgroups.container_limits(spec, step, default)
        return own_limits(spec, step, default)

    def cgroup_parent(self, spec):
        """The deployment's cgroup, made with its limits, or None without deployment cgroups."""
        if self.cgroups is None or self.cgroups.version is None:
            return None
        limits = spec.get("limits") or {}
        return self.cgroups.ensure(spec["deployment_id"], limits["cpus"], limits["memory_mb"])

    def start_service(self, spec, step, env, command, run_id, files=None):
        """Create and start a service container, or keep the running one whose config hash
        matches (compose's ConvergencePlan: noop versus recreate). `files`: {name: resolved
        text}, the step's secret files, mounted at /run/secrets from a tmpfs."""
        refuse_forbidden(step)
        deployment_id, step_id, image = spec["deployment_id"], step["id"], step["image"]
        command = list(command) if command else None  # None: the image's own CMD
        self.pull(image)
        with engine_call(f"inspecting image {image}"):
            image_id = self.client.images.get(image).id
        network = self.ensure_network(deployment_id)
        limits = self.container_limits(spec, step)
        cgroup_parent = self.cgroup_parent(spec)
        ports, expose = list(step.get("ports", [])), list(step.get("expose", []))
        # The confinement is part of the hash: containers made before it are recreated with it.
        extra = {"stop_grace_s": self.stop_grace_s, "publish_host": self.publish_host,
                 "pids_limit": SERVICE_PIDS_LIMIT, "security_opt": SECURITY_OPT}
        if cgroup_parent is not None:  # only then: turning deployment cgroups on recreates
            extra["cgroup_parent"] = cgroup_parent
        if files:  # only then, likewise; a changed secret recreates the container
            extra["secret_files"] = dict(files)
        digest = config_hash(image_id, env, command, ports, expose, limits, extra)
        name = self.container_name(deployment_id, step_id)

        existing = self._get_container(name)
        if existing is not None:
            if existing.labels.get(L.NODE) != self.node_id:
                raise EngineError("engine_error", f"a container named {name} exists that node "
                                  f"{self.node_id} did not create")
            if existing.labels.get(L.CONFIG_HASH) == digest and existing.status == "running":
                return existing
            self._remove(existing)

        api = self.client.api
        network_mode = network.name
        folder = self.secret_files.prepare(deployment_id, step_id) if files else None
        host_config = api.create_host_config(
            network_mode=network_mode,
            port_bindings={port: (self.publish_host, None) for port in expose},
            mem_limit=f"{limits['memory_mb']}m" if limits["memory_mb"] else None,
            nano_cpus=int(limits["cpus"] * 1e9) if limits["cpus"] else None,
            cgroup_parent=cgroup_parent,
            log_config=LogConfig(**SERVICE_LOG_CONFIG),
            init=False,
            privileged=False,
            pids_limit=SERVICE_PIDS_LIMIT,
            security_opt=list(SECURITY_OPT),
            mounts=[secrets_mount(folder)] if folder else None,
        )
        check_confined(host_config, network_mode, cgroup_parent, folder)
        labels = self.labels_for(deployment_id, L.ROLE_SERVICE, step=step_id, run=run_id)
        labels[L.CONFIG_HASH] = digest
        networking = api.create_networking_config(
            {network_mode: api.create_endpoint_config(aliases=[step_id])})
        with engine_call(f"creating container {name}"):
            container_id = api.create_container(
                image, command=command, name=name, environment=dict(env or {}), labels=labels,
                host_config=host_config, networking_config=networking, ports=ports or None,
                stop_timeout=self.stop_grace_s, detach=True, use_config_proxy=False)["Id"]
        try:
            if folder:
                # Written after the create (the image's /etc/passwd names its user) and before
                # the start (the service reads them as it starts).
                with engine_call(f"inspecting image {image}"):
                    user = (self.client.images.get(image).attrs.get("Config") or {}).get("User")
                uid, gid = secret_files.owner(user, secret_files.container_file(api, container_id))
                self.secret_files.write(folder, files, uid, gid)
            with engine_call(f"starting container {name}"):
                api.start(container_id)
                return self.client.containers.get(container_id)
        except AgentError:
            self._remove_quietly(container_id)
            if folder:
                self.secret_files.remove(deployment_id, step_id)
            raise

    def _get_container(self, name_or_id):
        try:
            return self.client.containers.get(name_or_id)
        except NotFound:
            return None
        except (APIError, *UNAVAILABLE) as exc:
            raise engine_error(exc, f"inspecting container {name_or_id}") from exc

    def _remove(self, container):
        """Force-remove with anonymous volumes (images with VOLUME make unlabelled ones), and
        its secret files."""
        try:
            container.remove(force=True, v=True)
        except NotFound:
            pass
        except (APIError, *UNAVAILABLE) as exc:
            raise engine_error(exc, f"removing container {container.name}") from exc
        deployment_id, step_id = container.labels.get(L.DEPLOYMENT), container.labels.get(L.STEP)
        if deployment_id and step_id:
            self.secret_files.remove(deployment_id, step_id)

    def _remove_quietly(self, container_id):
        try:
            self.client.api.remove_container(container_id, force=True, v=True)
        except (APIError, *UNAVAILABLE):
            pass

    def published_ports(self, container):
        """{container port: host port} of the published (`expose`) ports."""
        with engine_call(f"inspecting container {container.name}"):
            container.reload()
        result = {}
        for key, bindings in (container.attrs["NetworkSettings"].get("Ports") or {}).items():
            if bindings:
                result[int(key.split("/")[0])] = int(bindings[0]["HostPort"])
        return result

    def service_containers(self, deployment_id):
        with engine_call("listing containers"):
            found = self.client.containers.list(
                all=True, filters=self._filters(deployment_id, L.ROLE_SERVICE), ignore_removed=True)
        return {c.labels.get(L.STEP): c for c in found}

    def remove_services(self, deployment_id, step_ids):
        """Stop (with the grace) and remove the named service containers of a deployment."""
        present = self.service_containers(deployment_id)
        containers = [present[step_id] for step_id in step_ids if step_id in present]
        self._parallel(self._stop, containers)
        for container in containers:
            self._remove(container)

    def restart_dead(self, deployment_id):
        """Start again the service containers that exist but have exited. Returns their steps."""
        started = []
        for step_id, container in sorted(self.service_containers(deployment_id).items()):
            if container.status not in ("exited", "created"):
                continue
            if self._lost_secret_files(container):
                # A reboot emptied the tmpfs: the container cannot start again. Removed, it is
                # missing, and the reconcile recreates it with its files (the run's memory or the
                # control plane's next sync holds the secrets).
                self._remove(container)
                continue
            try:
                with engine_call(f"starting container {container.name}"):
                    container.start()
                started.append(step_id)
            except EngineError as exc:
                log.warning("restarting %s failed: %s", container.name, exc.message)
        return started

    def _lost_secret_files(self, container):
        return any(m.get("Destination") == secret_files.TARGET and not os.path.isdir(m.get("Source", ""))
                   for m in container.attrs.get("Mounts") or [])

    # --- teardown --------------------------------------------------------------------------
    def _parallel(self, function, items):
        items = list(items)
        if len(items) <= 1:
            return [function(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(PARALLEL, len(items))) as pool:
            return list(pool.map(function, items))

    def _stop(self, container):
        try:
            container.stop(timeout=self.stop_grace_s)
        except (APIError, *UNAVAILABLE) as exc:  # NotFound included: removal follows anyway
            log.info("stopping %s: %s", container.name, exc)

    def _levels(self, containers, order):
        """Stop groups: containers not named in `order` first (plugins, unknown steps), then each
        entry of `order` (a step id or a list of step ids stopped together), dependents first."""
        by_step = {}
        for container in containers:
            by_step.setdefault(container.labels.get(L.STEP), []).append(container)
        levels, named = [], set()
        for entry in order:
            group = [entry] if isinstance(entry, str) else list(entry)
            named.update(group)
            levels.append([c for step_id in group for c in by_step.get(step_id, [])])
        first = [c for step_id, group in by_step.items() if step_id not in named for c in group]
        return [level for level in [first, *levels] if level]

    def teardown(self, deployment_id, order=None, graceful=True):
        """Remove every container, network and volume of this node's deployment, found by label.
        Returns {"containers": n, "networks": n, "volumes": n}."""
        filters = self._filters(deployment_id)
        with engine_call("listing containers"):
            containers = self.client.containers.list(all=True, filters=filters, ignore_removed=True)
        failures = []

        def remove_container(container):
            try:
                container.remove(force=True, v=True)
            except NotFound:
                pass
            except (APIError, *UNAVAILABLE) as exc:
                failures.append(f"container {container.name}: {exc}")

        with ThreadPoolExecutor(max_workers=PARALLEL) as removals:
            if graceful:
                running = [c for c in containers if c.status in ACTIVE_STATES]
                levels = self._levels(running, order) if order else [running]
                stopped = set()
                for level in levels:
                    self._parallel(self._stop, level)
                    # A stopped level is removed while the next level stops: only the stops
                    # need the dependency order.
                    for container in level:
                        stopped.add(container.id)
                        removals.submit(remove_container, container)
                rest = [c for c in containers if c.id not in stopped]
            else:
                rest = containers
            for container in rest:
                removals.submit(remove_container, container)
        with engine_call("listing networks"):
            networks = self.client.networks.list(filters=filters)
        for network in networks:
            self._remove_network(network, failures)
        with engine_call("listing volumes"):
            volumes = self.client.volumes.list(filters=filters)
        for volume in volumes:
            try:
                volume.remove(force=True)
            except NotFound:
                pass
            except (APIError, *UNAVAILABLE) as exc:
                failures.append(f"volume {volume.name}: {exc}")
        if not failures:  # the folders go once no container can still mount them
            self.secret_files.remove(deployment_id)
        if self.cgroups is not None and not failures:
            failures += self.cgroups.remove(deployment_id)
        if failures:
            raise EngineError("engine_error", f"teardown of {deployment_id} left objects behind: "
                              + "; ".join(failures[:5]))
        return {"containers": len(containers), "networks": len(networks), "volumes": len(volumes)}

    def _remove_network(self, network, failures):
        try:
            network.remove()
            return
        except NotFound:
            return
        except APIError as exc:
            if exc.status_code not in (403, 409):
                failures.append(f"network {network.name}: {exc}")
                return
        except UNAVAILABLE as exc:
            failures.append(f"network {network.name}: {exc}")
            return
        # "has active endpoints": something else is still attached (the agent's own container
        # during a probe, or a container someone connected by hand). Detach it, never remove it.
        try:
            network.reload()
            for container_id in (network.attrs.get("Containers") or {}):
                try:
                    network.disconnect(container_id, force=True)
                except (NotFound, APIError):
                    pass
            network.remove()
        except NotFound:
            pass
        except (APIError, *UNAVAILABLE) as exc:
            failures.append(f"network {network.name}: {exc}")

    def deployment_ids(self):
        """Ids of the deployments that have containers, networks or volumes of this node."""
        filters = self._filters()
        with engine_call("listing objects"):
            # ignore_removed: the SDK inspects each listed container, and a concurrent delete may
            # remove one in between (40 deletes at once did; benchmarks/deploy_vs_compose.py).
            found = [c.labels for c in self.client.containers.list(all=True, filters=filters,
                                                                     ignore_removed=True)]
            found += [n.attrs.get("Labels") or {} for n in self.client.networks.list(filters=filters)]
            found += [v.attrs.get("Labels") or {} for v in self.client.volumes.list(filters=filters)]
        return {labels[L.DEPLOYMENT] for labels in found if labels.get(L.DEPLOYMENT)}

    def remove_orphans(self, active_ids):
        """Tear down (at once, no grace) every deployment of this node that is not active;
        `active_ids` may be a callable, asked after the engine's listing."""
        found = self.deployment_ids()
        active = set(active_ids() if callable(active_ids) else active_ids)
        orphans = sorted(found - active)
        for deployment_id in orphans:
            self.teardown(deployment_id, graceful=False)
        # Secret files whose containers are gone (an agent killed between the two removals).
        for deployment_id in self.secret_files.deployment_ids() - active - set(orphans):
            self.secret_files.remove(deployment_id)
        return orphans

    # --- logs ------------------------------------------------------------------------------
    def _step_container(self, deployment_id, step_id):
        container = self.service_containers(deployment_id).get(step_id)
        if container is None:
            raise AgentError("not_found", f"deployment {deployment_id} has no service {step_id!r} here")
        return container

    def logs(self, deployment_id, step_id, tail=200):
        container = self._step_container(deployment_id, step_id)
        with engine_call(f"reading logs of {container.name}"):
            raw = container.logs(stdout=True, stderr=True, tail=tail)
        return raw.decode("utf-8", errors="replace").splitlines()

    def follow_logs(self, deployment_id, step_id, stop, tail=0):
        """Yield log lines as they come until `stop` (a threading.Event) is set or the
        container ends."""
        container = self._step_container(deployment_id, step_id)
        with engine_call(f"following logs of {container.name}"):
            stream = container.logs(stdout=True, stderr=True, stream=True, follow=True, tail=tail)
        yield from iter_lines(stream, stop)

    # --- stats and health ------------------------------------------------------------------
    def container_stats(self, deployment_id=None):
        """One sample per running container of this node, taken in parallel. One-shot stats
        take one engine sample instead of two (the default costs about 2 s per container); the
        engine's collector ticks once a second, so a round costs at most about a second. CPU
        percent is the difference with this executor's previous sample (None the first time)."""
        with engine_call("listing containers"):
            containers = self.client.containers.list(filters=self._filters(deployment_id))

        def sample(container):
            try:
                stats = self.client.api.stats(container.id, stream=False, one_shot=True)
            except (APIError, *UNAVAILABLE):
                return None
            cpu = stats.get("cpu_stats") or {}
            total = (cpu.get("cpu_usage") or {}).get("total_usage")
            system = cpu.get("system_cpu_usage")
            online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or [1])
            percent = None
            previous = self._cpu_samples.get(container.id)
            if previous and total is not None and system is not None and system > previous[1]:
                percent = round(max(0.0, (total - previous[0]) / (system - previous[1]) * online * 100), 2)
            if total is not None and system is not None:
                self._cpu_samples[container.id] = (total, system)
            memory = stats.get("memory_stats") or {}
            usage = memory.get("usage")
            if usage is not None:  # like `docker stats`: page cache is not the service's memory
                usage -= (memory.get("stats") or {}).get("cache", 0)
            return {"id": container.id, "name": container.name,
                    "deployment_id": container.labels.get(L.DEPLOYMENT),
                    "step_id": container.labels.get(L.STEP), "role": container.labels.get(L.ROLE),
                    "cpu_percent": percent, "memory_usage": usage, "memory_limit": memory.get("limit")}

        results = [r for r in self._parallel(sample, containers) if r is not None]
        alive = {c.id for c in containers}
        for container_id in list(self._cpu_samples):
            if container_id not in alive and deployment_id is None:
                self._cpu_samples.pop(container_id, None)
        return results

    def engine_health(self):
        """{"ok", "server_version", "api_version", "containers_running", "error"}; never raises."""
        try:
            self.client.ping()
            version = self.client.version()
            info = self.client.info()
        except (APIError, *UNAVAILABLE) as exc:
            return {"ok": False, "server_version": None, "api_version": None,
                    "containers_running": None, "error": str(engine_error(exc, "checking the engine"))}
        return {"ok": True, "server_version": version.get("Version"),
                "api_version": version.get("ApiVersion"),
                "containers_running": info.get("ContainersRunning"), "error": None}


def iter_lines(stream, stop):
    """Lines (str) of a docker log stream until `stop` is set or the stream ends. A watcher
    closes the stream when `stop` is set, which unblocks the read in progress."""
    done = threading.Event()

    def watch():
        while not done.is_set():
            if stop.wait(0.05):
                stream.close()
                return

    watcher = threading.Thread(target=watch, name="log-follow-stop", daemon=True)
    watcher.start()
    pending = b""
    try:
        for chunk in stream:
            if stop.is_set():
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode("utf-8", errors="replace")
        if pending and not stop.is_set():
            yield pending.decode("utf-8", errors="replace")
    except (APIError, *UNAVAILABLE, OSError, ValueError, AttributeError):
        # The stream was closed under the read by the watcher (any of these, depending on
        # where the read was), or the engine went away: either way, the following ends.
        if not stop.is_set():
            raise
    finally:
        done.set()
        stream.close()
