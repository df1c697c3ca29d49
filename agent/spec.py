"""The deployment spec an agent runs, its validation and its `${...}` references.

A spec (sent in `deployment.apply`, stored on disk without secrets):

    {"deployment_id": "dep-42", "name": "shop-1", "pipeline_version": 3,
     "limits": {"cpus": 2.0, "memory_mb": 2048},
     "urls": {"web": "http://web.shop-1.staging.example.com"},
     "steps": [
       {"id": "db", "kind": "service", "image": "postgres:15",
        "env": {"POSTGRES_PASSWORD_FILE": "/run/secrets/db_password"},
        "secret_files": {"db_password": "${secrets.DB_PASSWORD}"},   # agent/secret_files.py
        "ports": [5432], "readiness": {"type": "tcp", "port": 5432}},
       {"id": "mkdb", "kind": "plugin", "image": "nullops/postgres-database:1.0",
        "depends_on": ["db"], "params": {"host": "${services.db.host}"}, "network": true,
        "rollback": true, "timeout_s": 300},
       {"id": "web", "kind": "service", "image": "shop:1.4", "depends_on": ["mkdb"],
        "env": {"DATABASE_URL": "${steps.mkdb.outputs.url}"}, "ports": [8000],
        "expose": [8000], "readiness": {"type": "http", "port": 8000, "path": "/health"}}]}

Everything not listed here is refused, and the keys that would give a container power over
the node (privileged, capabilities, devices, host namespaces, mounts) are refused by name:
the agent refuses them even when the control plane sends them (ARCHITECTURE.md, security).
"""
import json
import re

ID_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")
REFERENCE = re.compile(r"\$\{([a-z]+)\.([A-Za-z0-9_-]+)(?:\.([A-Za-z0-9_]+))?(?:\.([A-Za-z0-9_]+))?\}")

DEFAULT_PLUGIN_TIMEOUT_S = 300
DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024
DEFAULT_READINESS_TIMEOUT_S = 120

FORBIDDEN = {
    "privileged": "privileged containers are not allowed",
    "cap_add": "adding capabilities is not allowed",
    "capabilities": "adding capabilities is not allowed",
    "devices": "host devices are not allowed",
    "network_mode": "host or container network modes are not allowed",
    "pid_mode": "sharing the host PID namespace is not allowed",
    "ipc_mode": "sharing the host IPC namespace is not allowed",
    "volumes": "host mounts are not allowed",
    "mounts": "host mounts are not allowed",
    "binds": "host mounts are not allowed",
    "security_opt": "changing security options is not allowed",
    "userns_mode": "changing the user namespace is not allowed",
    "user": "choosing the container user is not allowed",
}

TOP_KEYS = {"deployment_id", "name", "pipeline_version", "limits", "urls", "steps"}
SERVICE_KEYS = {"id", "kind", "image", "env", "secret_files", "command", "ports", "expose", "readiness",
                "cpus", "memory_mb", "depends_on", "registry"}
# secret_files: {file name: text}, files under /run/secrets on a tmpfs (agent/secret_files.py).
SECRET_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
MAX_SECRET_FILES = 32
PLUGIN_KEYS = {"id", "kind", "image", "params", "timeout_s", "cpus", "memory_mb", "network",
               "rollback", "depends_on", "registry", "max_output_bytes"}
READINESS = {
    "running": set(),
    "tcp": {"port"},
    "http": {"port", "path", "status"},
    "log": {"pattern"},
    "exec": {"command"},
}


class SpecError(Exception):
    """A spec the agent will not run. `refused` marks a security refusal."""

    def __init__(self, message, refused=False):
        super().__init__(message)
        self.message = message
        self.refused = refused


def _fail(where, message, refused=False):
    raise SpecError(f"{where}: {message}", refused)


def _keys(obj, allowed, where):
    if not isinstance(obj, dict):
        _fail(where, "must be a JSON object")
    for key in obj:
        if key in FORBIDDEN:
            _fail(where, FORBIDDEN[key], refused=True)
        if key not in allowed:
            _fail(where, f"unknown field {key!r}")


def _number(value, where, low, high, integer=False):
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        _fail(where, f"must be a {'whole ' if integer else ''}number from {low} to {high}")
    return value


def _ports(value, where):
    if not isinstance(value, list) or len(value) > 32:
        _fail(where, "must be a list of at most 32 ports")
    for port in value:
        _number(port, where, 1, 65535, integer=True)
    if len(set(value)) != len(value):
        _fail(where, "lists a port twice")
    return value


def _strings(value, where, limit=256):
    if not isinstance(value, list) or len(value) > limit or not all(isinstance(v, str) for v in value):
        _fail(where, f"must be a list of at most {limit} strings")
    return value


def _limits(obj, where):
    _keys(obj, {"cpus", "memory_mb"}, where)
    _number(obj.get("cpus"), f"{where}.cpus", 0.01, 256)
    _number(obj.get("memory_mb"), f"{where}.memory_mb", 6, 4 * 1024 * 1024, integer=True)


def _readiness(obj, ports, where):
    if obj is None:
        return
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str) or obj["type"] not in READINESS:
        _fail(where, f"type must be one of {', '.join(sorted(READINESS))}")
    kind = obj["type"]
    _keys(obj, READINESS[kind] | {"type", "timeout_s"}, where)
    for key in READINESS[kind] - {"path", "status"}:
        if key not in obj:
            _fail(where, f"{kind} readiness needs {key!r}")
    if "timeout_s" in obj:
        _number(obj["timeout_s"], f"{where}.timeout_s", 1, 3600)
    if "port" in obj:
        _number(obj["port"], f"{where}.port", 1, 65535, integer=True)
    if kind == "http":
        if not str(obj.get("path", "/")).startswith("/"):
            _fail(where, "path must start with '/'")
        if "status" in obj:
            _number(obj["status"], f"{where}.status", 100, 599, integer=True)
    if kind == "log":
        try:
            re.compile(obj["pattern"])
        except (re.error, TypeError):
            _fail(where, "pattern must be a regular expression")
    if kind == "exec":
        _strings(obj["command"], f"{where}.command", 64)


def check_secret_files(files, where):
    """A service's secret_files: at most 32 file names (letters, digits, '_', '.', '-', not
    starting with '.' or '-') mapped to text."""
    if not isinstance(files, dict) or len(files) > MAX_SECRET_FILES or not all(
            isinstance(k, str) and SECRET_FILE_NAME.match(k) and isinstance(v, str)
            for k, v in files.items()):
        _fail(where, f"must map at most {MAX_SECRET_FILES} file names (letters, digits, '_', '.', '-') "
                     "to text")
    return files


def check_readiness(obj, where):
    """A service's readiness check (None: none), by the rules `validate` applies; the control
    plane uses it to refuse a health check before it could reach an agent. Raises SpecError."""
    _readiness(obj, None, where)
    return obj


def validate(spec):
    """Check a spec completely; return it. Raises SpecError naming the first problem."""
    _keys(spec, TOP_KEYS, "spec")
    dep_id = spec.get("deployment_id")
    if not isinstance(dep_id, str) or not ID_PATTERN.match(dep_id):
        _fail("deployment_id", "must be a DNS label (lowercase letters, digits, '-')")
    _limits(spec.get("limits"), "limits")
    urls = spec.get("urls", {})
    if not isinstance(urls, dict) or not all(isinstance(v, str) for v in urls.values()):
        _fail("urls", "must map step ids to URLs")
    steps = spec.get("steps")
    if not isinstance(steps, list) or not 1 <= len(steps) <= 200:
        _fail("steps", "must be a list of 1 to 200 steps")
    ids = []
    for index, step in enumerate(steps):
        where = f"steps[{index}]"
        if not isinstance(step, dict):
            _fail(where, "must be a JSON object")
        kind = step.get("kind")
        if kind not in ("service", "plugin"):
            _fail(where, "kind must be 'service' or 'plugin'")
        _keys(step, SERVICE_KEYS if kind == "service" else PLUGIN_KEYS, where)
        step_id = step.get("id")
        if not isinstance(step_id, str) or not ID_PATTERN.match(step_id):
            _fail(f"{where}.id", "must be a DNS label")
        where = f"step {step_id}"
        if step_id in ids:
            _fail(where, "id is used twice")
        ids.append(step_id)
        if not isinstance(step.get("image"), str) or not IMAGE.match(step["image"]):
            _fail(f"{where}.image", "must be an image reference like registry/name:tag")
        for key in ("cpus", "memory_mb"):
            if key in step:
                _limits({**spec["limits"], key: step[key]}, where)
        _strings(step.get("depends_on", []), f"{where}.depends_on", 200)
        if "registry" in step and not isinstance(step["registry"], str):
            _fail(f"{where}.registry", "must name a registry credential of the run")
        if kind == "service":
            env = step.get("env", {})
            if not isinstance(env, dict) or not all(
                isinstance(k, str) and ENV_NAME.match(k) and isinstance(v, str) for k, v in env.items()
            ):
                _fail(f"{where}.env", "must map NAME to string values")
            check_secret_files(step.get("secret_files", {}), f"{where}.secret_files")
            if step.get("command") is not None:
                _strings(step["command"], f"{where}.command")
            ports = _ports(step.get("ports", []), f"{where}.ports")
            expose = _ports(step.get("expose", []), f"{where}.expose")
            if not set(expose) <= set(ports):
                _fail(f"{where}.expose", "may only list ports that are also in 'ports'")
            _readiness(step.get("readiness"), ports, f"{where}.readiness")
        else:
            if not isinstance(step.get("params", {}), dict):
                _fail(f"{where}.params", "must be a JSON object")
            if "timeout_s" in step:
                _number(step["timeout_s"], f"{where}.timeout_s", 1, 24 * 3600)
            if "max_output_bytes" in step:
                _number(step["max_output_bytes"], f"{where}.max_output_bytes", 1, 64 * 1024 * 1024,
                        integer=True)
            for flag in ("network", "rollback"):
                if not isinstance(step.get(flag, False), bool):
                    _fail(f"{where}.{flag}", "must be true or false")
    by_id = {s["id"]: s for s in steps}
    for step in steps:
        for dep in step.get("depends_on", []):
            if dep not in by_id:
                _fail(f"step {step['id']}.depends_on", f"refers to a missing step {dep!r}")
            if dep == step["id"]:
                _fail(f"step {step['id']}.depends_on", "a step cannot depend on itself")
    order = topological_order(steps)
    _check_references(steps, order)
    return spec


def topological_order(steps):
    """Step ids in an order where every step follows its dependencies; refuses cycles."""
    pending = {s["id"]: set(s.get("depends_on", [])) for s in steps}
    order = []
    while pending:
        ready = sorted(i for i, deps in pending.items() if not deps)
        if not ready:
            _fail("steps", f"dependencies form a cycle among {', '.join(sorted(pending))}")
        for step_id in ready:
            order.append(step_id)
            del pending[step_id]
        for deps in pending.values():
            deps.difference_update(ready)
    return order


def levels(steps):
    """Step ids grouped by depth: every step's dependencies are in earlier groups."""
    depth = {}
    for step_id in topological_order(steps):
        deps = next(s for s in steps if s["id"] == step_id).get("depends_on", [])
        depth[step_id] = 1 + max((depth[d] for d in deps), default=-1)
    deepest = max(depth.values(), default=-1)
    return [sorted(i for i, d in depth.items() if d == level) for level in range(deepest + 1)]


def ancestors(steps):
    """{step id: set of every step it depends on, directly or not}."""
    direct = {s["id"]: set(s.get("depends_on", [])) for s in steps}
    result = {}
    for step_id in topological_order(steps):
        result[step_id] = set(direct[step_id])
        for dep in direct[step_id]:
            result[step_id] |= result[dep]
    return result


def _walk_strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk_strings(item)


def references(step):
    """Every `${...}` reference in a step's env, secret files, command and params, as tuples."""
    found = []
    for text in _walk_strings([step.get("env", {}), step.get("secret_files", {}), step.get("command") or [],
                               step.get("params", {})]):
        found.extend(m.groups() for m in REFERENCE.finditer(text))
    return found


def secret_names(spec):
    return {ref[1] for step in spec["steps"] for ref in references(step) if ref[0] == "secrets"}


def _check_references(steps, order):
    by_id = {s["id"]: s for s in steps}
    upstream = ancestors(steps)
    for step in steps:
        where = f"step {step['id']}"
        for scope, name, attr, key in references(step):
            if scope == "secrets":
                if attr is not None:
                    _fail(where, f"${{secrets.{name}}} takes no attribute")
            elif scope == "services":
                target = by_id.get(name)
                if target is None or target["kind"] != "service":
                    _fail(where, f"refers to a missing service {name!r}")
                if attr not in ("host", "port", "url"):
                    _fail(where, f"services.{name} has host, port and url, not {attr!r}")
            elif scope == "steps":
                if name not in by_id or by_id[name]["kind"] != "plugin":
                    _fail(where, f"refers to a missing plugin step {name!r}")
                if attr != "outputs" or key is None:
                    _fail(where, f"write ${{steps.{name}.outputs.KEY}}")
                if name not in upstream[step["id"]]:
                    _fail(where, f"uses outputs of {name!r}, which does not run before it")
            else:
                _fail(where, f"unknown reference scope {scope!r} (secrets, services, steps)")


def service_address(spec, service_id):
    """host, port and url of a service as the deployment's own containers reach it."""
    step = next(s for s in spec["steps"] if s["id"] == service_id)
    port = (step.get("ports") or [None])[0]
    internal = f"http://{service_id}:{port}" if port else f"http://{service_id}"
    return {"host": service_id, "port": port, "url": spec.get("urls", {}).get(service_id, internal)}


def resolve(value, spec, secrets, outputs):
    """Replace `${...}` references in strings (recursively). Missing values raise SpecError."""
    if isinstance(value, dict):
        return {k: resolve(v, spec, secrets, outputs) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, spec, secrets, outputs) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match):
        scope, name, attr, key = match.groups()
        if scope == "secrets":
            if name not in secrets:
                raise SpecError(f"secret {name!r} was not sent with the run")
            return secrets[name]
        if scope == "services":
            return str(service_address(spec, name)[attr])
        step_outputs = outputs.get(name, {})
        if key not in step_outputs:
            raise SpecError(f"step {name!r} did not output {key!r}")
        return output_text(step_outputs[key])

    return REFERENCE.sub(substitute, value)


def output_text(item):
    """A step output as it is substituted into a string: a string as it is, anything else as the
    JSON it came in (a plugin's outputs are JSON; str() gave services Python's repr, such as
    {'rows_affected': 3} or True, which no JSON parser takes)."""
    if isinstance(item, str):
        return item
    return json.dumps(item, separators=(",", ":"), ensure_ascii=False)
