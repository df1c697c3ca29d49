"""Services: the container images a project's pipeline runs, and how each one runs.

Admins describe a service once; saving a pipeline copies it into the pipeline version's
`resolved` graph (app/services/specs.py), so a change here reaches only versions saved later.
Every field is checked here, not only in the API schema: the UI and the CLI call these
functions directly. Env values may hold `${...}` references; pipelines check those when they
are saved, because only a pipeline knows its secrets and steps.

The checks shared with plugins (name, registry, image, tag) live here too.
"""
import re

from sqlalchemy import select

from agent.spec import ENV_NAME, SpecError, check_readiness
from app.extensions import db
from app.models import Registry, Service
from app.models.catalog import TAG_MODES
from app.services import audit, registries
from app.services.errors import Conflict, ValidationFailed
from app.services.names import DNS_LABEL_HINT, DNS_LABEL_PATTERN

DESCRIPTION_MAX = 500
# A Docker tag as the engine accepts it.
TAG_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"
TAG_HINT = ("a Docker tag: 1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-' "
            "(e.g. 1.25 or v2.0.1)")
PORTS_MAX = 32
ENV_MAX = 200
ENV_VALUE_MAX_BYTES = 4 * 1024
COMMAND_MAX = 256
ARGUMENT_MAX_BYTES = 4 * 1024
FIELDS = ("name", "description", "registry_id", "image", "tag_mode", "tag", "tag_pattern", "ports",
          "exposed_ports", "env", "command", "health_check")


class Problems:
    """Collects {field: hint} so one answer names every bad field, not only the first."""

    def __init__(self, what):
        self.what = what
        self.fields = {}

    def add(self, field, hint):
        self.fields.setdefault(field, hint)

    def raise_any(self):
        if self.fields:
            listed = "; ".join(f"{field}: {hint}" for field, hint in self.fields.items())
            raise ValidationFailed(f"the {self.what} is invalid: {listed}", dict(self.fields))


# --- checks shared with plugins ----------------------------------------------------------------
def check_name(problems, name):
    if not isinstance(name, str) or not re.fullmatch(DNS_LABEL_PATTERN, name):
        problems.add("name", f"use {DNS_LABEL_HINT}")


def check_description(problems, description):
    if not isinstance(description, str) or len(description) > DESCRIPTION_MAX:
        problems.add("description", f"give text of at most {DESCRIPTION_MAX} characters")


def check_registry(problems, registry_id):
    """The registry row, or None with a problem noted."""
    if isinstance(registry_id, bool) or not isinstance(registry_id, int):
        problems.add("registry_id", "give the id of a registry (GET /api/v1/registries lists them)")
        return None
    # Out of the database's integer range no row can match (SQLite would overflow on the query).
    registry = db.session.get(Registry, registry_id) if 0 < registry_id < 2 ** 63 else None
    if registry is None:
        problems.add("registry_id", f"no registry has id {registry_id}; GET /api/v1/registries lists them")
    return registry


def check_image(problems, image):
    if isinstance(image, str) and (":" in image or "@" in image):
        problems.add("image", "give the repository only (e.g. team/app): the registry comes from "
                              "registry_id and the tag from its own field")
        return
    try:
        registries.check_repository(image)
    except ValidationFailed as exc:
        problems.add("image", exc.fields["repository"])


def check_tag(problems, tag, field="tag"):
    if not isinstance(tag, str) or not re.fullmatch(TAG_PATTERN, tag):
        problems.add(field, f"use {TAG_HINT}")


def check_unique(model, name, obj_id=None):
    existing = db.session.scalar(select(model).where(model.name == name))
    if existing is not None and existing.id != obj_id:
        kind = model.__tablename__.rstrip("s")
        raise Conflict(f"a {kind} named {name!r} exists; choose another name", {"name": "already taken"})


# --- service fields ------------------------------------------------------------------------------
def _ports(problems, field, ports):
    """The ports, or None when they are unusable (a problem is noted)."""
    if not isinstance(ports, list) or len(ports) > PORTS_MAX:
        problems.add(field, f"give a list of at most {PORTS_MAX} port numbers")
        return None
    if any(isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535 for p in ports):
        problems.add(field, "use whole numbers from 1 to 65535")
        return None
    if len(set(ports)) != len(ports):
        problems.add(field, "list each port once")
    return ports


def _env(problems, env):
    if not isinstance(env, dict) or len(env) > ENV_MAX:
        problems.add("env", f"give an object of at most {ENV_MAX} NAME: value pairs")
        return
    for name, value in env.items():
        if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
            problems.add("env", f"{str(name)[:64]!r} is not a variable name: use letters, digits and "
                                "'_', not starting with a digit, at most 128 characters")
            return
        if not isinstance(value, str) or "\0" in value or len(value.encode()) > ENV_VALUE_MAX_BYTES:
            problems.add("env", f"the value of {name} must be text of at most {ENV_VALUE_MAX_BYTES} bytes "
                                "without NUL characters")
            return


def _command(problems, command):
    if command is None:
        return
    if (not isinstance(command, list) or len(command) > COMMAND_MAX
            or not all(isinstance(a, str) and "\0" not in a and len(a.encode()) <= ARGUMENT_MAX_BYTES
                       for a in command)):
        problems.add("command", f"give a list of at most {COMMAND_MAX} strings (each at most "
                                f"{ARGUMENT_MAX_BYTES} bytes, no NUL), or null for the image's own")


def _health_check(problems, health_check, ports):
    try:
        check_readiness(health_check, "health_check")
    except SpecError as exc:
        problems.add("health_check", exc.message.removeprefix("health_check: ")
                     + ' (e.g. {"type": "http", "port": 8000, "path": "/health"})')
        return
    port = (health_check or {}).get("port")
    if port is not None and ports is not None and port not in ports:
        problems.add("health_check", f"port {port} is not one of the service's ports; add it to ports "
                                     "or check another port")


def _tags(problems, values):
    mode = values["tag_mode"]
    if mode not in TAG_MODES:
        problems.add("tag_mode", "use pinned (one fixed tag) or selectable (users choose a tag)")
        return
    if mode == "pinned":
        if values["tag"] is None:
            problems.add("tag", f"a pinned service needs its tag: {TAG_HINT}")
        else:
            check_tag(problems, values["tag"])
        if values["tag_pattern"] is not None:
            problems.add("tag_pattern", "applies to selectable services only; leave it out or null")
        return
    if values["tag"] is not None:
        problems.add("tag", "must be null for a selectable service: users choose the tag when they deploy")
    try:
        values["tag_pattern"] = registries.check_pattern(values["tag_pattern"])
    except ValidationFailed as exc:
        problems.add("tag_pattern", exc.fields["pattern"])


def _checked(values, service_id=None):
    """All fields of a service checked together; returns them normalised or raises."""
    problems = Problems("service")
    check_name(problems, values["name"])
    check_description(problems, values["description"])
    check_registry(problems, values["registry_id"])
    check_image(problems, values["image"])
    _tags(problems, values)
    ports = _ports(problems, "ports", values["ports"])
    exposed = _ports(problems, "exposed_ports", values["exposed_ports"])
    if ports is not None and exposed is not None and not set(exposed) <= set(ports):
        problems.add("exposed_ports", "may only list ports that are also in ports")
    _env(problems, values["env"])
    if values["command"] == []:
        values["command"] = None  # no arguments: the image's own command, as null says
    _command(problems, values["command"])
    _health_check(problems, values["health_check"], ports)
    problems.raise_any()
    check_unique(Service, values["name"], service_id)
    return values


def _details(values):
    """What an audit entry keeps of a service: env by variable names (values may be long)."""
    return {key: (sorted(value) if key == "env" else value) for key, value in values.items()
            if key not in ("name", "description")}


def create(actor, name, registry_id, image, *, description="", tag_mode="pinned", tag=None,
           tag_pattern=None, ports=(), exposed_ports=(), env=None, command=None, health_check=None):
    values = _checked({
        "name": name, "description": description, "registry_id": registry_id, "image": image,
        "tag_mode": tag_mode, "tag": tag, "tag_pattern": tag_pattern, "ports": list(ports),
        "exposed_ports": list(exposed_ports), "env": {} if env is None else env,
        "command": command, "health_check": health_check,
    })
    service = Service(**values)
    db.session.add(service)
    db.session.flush()
    audit.record(actor, "service.create", "service", service, _details(values))
    db.session.commit()
    return service


def update(actor, service, **changes):
    """Change the fields given (None clears tag, tag_pattern, command and health_check).
    Switching tag_mode drops the other mode's tag or pattern unless the change sets it."""
    unknown = changes.keys() - set(FIELDS)
    if unknown:
        raise TypeError(f"a service has no fields {sorted(unknown)}")
    current = {key: getattr(service, key) for key in FIELDS}
    values = {**current, **changes}
    if "tag_mode" in changes and changes["tag_mode"] != current["tag_mode"]:
        dropped = "tag_pattern" if changes["tag_mode"] == "pinned" else "tag"
        if dropped not in changes:
            values[dropped] = None
    values = _checked(values, service.id)
    changed = {key: [current[key], values[key]] for key in FIELDS if values[key] != current[key]}
    for key in changed:
        setattr(service, key, values[key])
    if changed:
        if "env" in changed:
            old, new = current["env"], values["env"]
            changed["env"] = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        audit.record(actor, "service.update", "service", service, changed)
    db.session.commit()
    return service


def delete(actor, service):
    audit.record(actor, "service.delete", "service", service, {"image": service.image})
    db.session.delete(service)
    db.session.commit()
