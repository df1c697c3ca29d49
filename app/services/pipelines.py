"""Pipelines: a project's graph of services and plugin steps, saved as immutable versions.

The definition an admin writes (JSON through the API, YAML for export and import):

    nodes:
      - id: db                      # a DNS label: the service's host name in the deployment
        service: postgres           # a catalog service by name...
        env: {POSTGRES_PASSWORD_FILE: /run/secrets/db_password}  # merged over the service's env
        secret_files: {db_password: "${secrets.DB_PASSWORD}"}  # files on a tmpfs, not in env
      - id: mkdb
        plugin: postgres-database   # ...or a catalog plugin by name
        params: {host: "${services.db.host}"}   # checked against the plugin's params_schema
        position: {x: 120, y: 40}   # for the visual editor only
    edges:
      - {from: db, to: mkdb}

Saving checks everything, then copies the catalog in (`resolved`, app/services/specs.py has
its format), so later catalog changes reach only later versions. The agent's own checks
(agent/spec.py) decide what a graph and a reference are, so a saved version is one the agent
runs: the last check compiles a trial spec and validates it exactly as the agent will.
"""
import copy
import json
import math
from types import SimpleNamespace

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry as SchemaRegistry
from referencing.exceptions import Unresolvable
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload

from agent import spec as agent_spec
from app.extensions import db
from app.models import PipelineVersion, Plugin, ProjectSecret, Service
from app.services import audit
from app.services.errors import Conflict, NotFound, ServiceError, ValidationFailed
from app.services.specs import compile_spec

MAX_BYTES = 256 * 1024          # a definition as JSON, and an imported YAML text
MAX_NODES = 200                 # what the agent accepts in one spec
MAX_EDGES = 2000
MAX_DEPTH = 32
MAX_VALUES = 50_000             # after YAML aliases are expanded
COMMENT_MAX = 500
TOP_KEYS = ("nodes", "edges")
NODE_KEYS = ("id", "service", "plugin", "env", "secret_files", "params", "cpus", "memory_mb",
             "position")  # export order
NODE_KEYS_HINT = ("a node has id, service or plugin, env and secret_files (services), params (plugins), "
                  "cpus and memory_mb (optional, its own limits) and position")
# A node's own limits (issue 18 item 1), as the agent takes a step's (agent/spec.py).
NODE_CPUS_RANGE = (0.01, 256)
NODE_MEMORY_MB_RANGE = (6, 4 * 1024 * 1024)
SERVICE_ATTRIBUTES = ("host", "port", "url")
TRIAL_TAG = "trial"


class TooLarge(ServiceError):
    status = 413
    code = "too_large"


class _Problems:
    """Every problem found at one stage, by field, so the editor can mark them all at once."""

    def __init__(self):
        self.fields = {}

    def add(self, field, hint):
        self.fields.setdefault(field, hint)

    def check(self):
        if self.fields:
            field, hint = next(iter(self.fields.items()))
            more = len(self.fields) - 1
            tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
            raise ValidationFailed(f"{field}: {hint}{tail}", dict(self.fields))


# --- plain JSON, size and structure ---------------------------------------------------------------
def _check_plain(value):
    """Only JSON values (YAML also makes dates, sets and bytes), finite numbers, no NUL
    characters, bounded depth and size even where YAML aliases repeat a value."""
    problems, todo, count = _Problems(), [(value, "", 0)], 0
    while todo:
        item, path, depth = todo.pop()
        count += 1
        if count > MAX_VALUES or depth > MAX_DEPTH:
            why = (f"more than {MAX_VALUES} values" if count > MAX_VALUES
                   else f"nested deeper than {MAX_DEPTH} levels")
            raise ValidationFailed(f"the pipeline is too large: {why}",
                                   {path or "definition": "make the pipeline smaller"})
        if isinstance(item, dict):
            for key, sub in item.items():
                inner = f"{path}.{key}" if path else str(key)
                if not isinstance(key, str):
                    problems.add(inner, f"the key {key!r} must be text: quote it in YAML")
                else:
                    todo.append((sub, inner, depth + 1))
        elif isinstance(item, list):
            todo.extend((sub, f"{path}[{i}]", depth + 1) for i, sub in enumerate(item))
        elif isinstance(item, str):
            if "\x00" in item:
                problems.add(path or "definition", "contains a NUL character: remove it")
        elif isinstance(item, float) and not math.isfinite(item):
            problems.add(path or "definition", "must be a finite number")
        elif item is not None and not isinstance(item, (bool, int, float)):
            problems.add(path or "definition",
                         f"YAML read this as a {type(item).__name__}: quote it to make it text")
    problems.check()
    if len(json.dumps(value)) > MAX_BYTES:
        raise TooLarge(f"the pipeline is larger than {MAX_BYTES // 1024} KiB",
                       {"definition": "make the pipeline smaller"})


def _is_id(value):
    return isinstance(value, str) and agent_spec.ID_PATTERN.match(value) is not None


def _check_secret_files(node, where, problems):
    """Files a service reads under /run/secrets (issue 17 item 8), kept off `docker inspect`."""
    files = node["secret_files"]
    if "plugin" in node:
        problems.add(f"{where}.secret_files", "plugins get their secrets on stdin: use params")
    elif not isinstance(files, dict):
        problems.add(f"{where}.secret_files", "must map file names to text, e.g. "
                                              "{db_password: \"${secrets.DB_PASSWORD}\"}")
    elif len(files) > agent_spec.MAX_SECRET_FILES:
        problems.add(f"{where}.secret_files", f"at most {agent_spec.MAX_SECRET_FILES} files")
    else:
        for name, value in files.items():
            if not agent_spec.SECRET_FILE_NAME.match(name):
                problems.add(f"{where}.secret_files.{name}", "use letters, digits, '_', '.' and '-', not "
                                                             "starting with '.' or '-' (at most 128): it "
                                                             "becomes /run/secrets/<name>")
            elif not isinstance(value, str):
                problems.add(f"{where}.secret_files.{name}", "must be text: quote it in YAML")


def _check_node(node, where, problems):
    if not isinstance(node, dict):
        problems.add(where, "must be an object with id and service or plugin")
        return
    for key in node:
        if key not in NODE_KEYS:
            problems.add(f"{where}.{key}", f"unknown key: remove it ({NODE_KEYS_HINT})")
    if not _is_id(node.get("id")):
        problems.add(f"{where}.id", "use a DNS label: 1-63 lowercase letters, digits or '-', "
                                    "not starting or ending with '-' (it becomes a host name)")
    if ("service" in node) == ("plugin" in node):
        problems.add(where, "give either service: NAME (a container to run) or plugin: NAME (a step)"
                     if "service" not in node else "give service or plugin, not both")
    for key in ("service", "plugin"):
        if key in node and (not isinstance(node[key], str) or not node[key]):
            problems.add(f"{where}.{key}", f"name a catalog {key}")
    if "env" in node:
        env = node["env"]
        if "plugin" in node:
            problems.add(f"{where}.env", "plugins take params, not env: move these into params")
        elif not isinstance(env, dict):
            problems.add(f"{where}.env", "must map variable names to text values")
        else:
            for name, value in env.items():
                if not agent_spec.ENV_NAME.match(name):
                    problems.add(f"{where}.env.{name}", "use letters, digits and '_', not starting "
                                                        "with a digit (at most 128)")
                elif not isinstance(value, str):
                    problems.add(f"{where}.env.{name}", "must be text: quote it in YAML (\"8080\", \"true\")")
    if "secret_files" in node:
        _check_secret_files(node, where, problems)
    if "params" in node:
        if "service" in node:
            problems.add(f"{where}.params", "services take env, not params: move these into env")
        elif not isinstance(node["params"], dict):
            problems.add(f"{where}.params", "must be an object of the plugin's parameters")
    for key, (low, high), integer in (("cpus", NODE_CPUS_RANGE, False),
                                      ("memory_mb", NODE_MEMORY_MB_RANGE, True)):
        value = node.get(key)
        if key in node and (isinstance(value, bool) or not isinstance(value, int if integer else (int, float))
                            or not low <= value <= high):
            what = "a whole number of MB" if integer else "a number of CPUs"
            problems.add(f"{where}.{key}", f"use {what} from {low} to {high}, or leave it out to "
                                           "share the project's limits")
    if "position" in node:
        position = node["position"]
        if (not isinstance(position, dict) or set(position) != {"x", "y"}
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           for v in position.values())):
            problems.add(f"{where}.position", "must be {x: number, y: number}")


def _node_where(node, index, seen):
    node_id = node.get("id") if isinstance(node, dict) else None
    return f"nodes.{node_id}" if _is_id(node_id) and node_id not in seen else f"nodes[{index}]"


def _check_structure(definition):
    if not isinstance(definition, dict):
        raise ValidationFailed("the pipeline must be an object with nodes and edges",
                               {"definition": "give {nodes: [...], edges: [...]}"})
    problems = _Problems()
    for key in definition:
        if key not in TOP_KEYS:
            problems.add(key, "unknown key: a pipeline has nodes and edges only")
    nodes, edges = definition.get("nodes"), definition.get("edges", [])
    if not isinstance(nodes, list) or not nodes or len(nodes) > MAX_NODES:
        problems.add("nodes", f"give a list of 1 to {MAX_NODES} nodes, each {{id, service or plugin}}")
        nodes = []
    if not isinstance(edges, list) or len(edges) > MAX_EDGES:
        problems.add("edges", f"give a list of at most {MAX_EDGES} edges, each {{from: ID, to: ID}}")
        edges = []
    seen = set()
    for index, node in enumerate(nodes):
        where = _node_where(node, index, seen)
        _check_node(node, where, problems)
        if isinstance(node, dict) and _is_id(node.get("id")):
            if node["id"] in seen:
                problems.add(f"{where}.id", f"another node is already {node['id']!r}: node ids are unique")
            seen.add(node["id"])
    pairs = set()
    for index, edge in enumerate(edges):
        where = f"edges[{index}]"
        if not isinstance(edge, dict) or set(edge) != {"from", "to"}:
            problems.add(where, "must be {from: ID, to: ID} and nothing else")
            continue
        for end in ("from", "to"):
            if not isinstance(edge[end], str) or edge[end] not in seen:
                problems.add(f"{where}.{end}", f"no node {edge[end]!r}: name a node id of this pipeline")
        pair = (edge["from"], edge["to"])
        if not all(isinstance(p, str) for p in pair):
            continue
        if pair[0] == pair[1]:
            problems.add(where, f"{pair[0]!r} cannot depend on itself: remove this edge")
        elif pair in pairs:
            problems.add(where, f"repeats the edge {pair[0]} -> {pair[1]}: remove it")
        pairs.add(pair)
    problems.check()
    return {"nodes": [{k: copy.deepcopy(n[k]) for k in NODE_KEYS if k in n} for n in nodes],
            "edges": [{"from": e["from"], "to": e["to"]} for e in edges]}


# --- catalog and graph ---------------------------------------------------------------------------
def _by_name(model, names):
    if not names:
        return {}
    return {row.name: row for row in db.session.scalars(select(model).where(model.name.in_(names)))}


def _cycle_members(steps):
    """Names the nodes for the message only: agent_spec.topological_order decides acyclicity."""
    after = {s["id"]: set() for s in steps}
    for step in steps:
        for dep in step["depends_on"]:
            after[dep].add(step["id"])

    def reaches_itself(start):
        seen, todo = set(), list(after[start])
        while todo:
            current = todo.pop()
            if current == start:
                return True
            if current not in seen:
                seen.add(current)
                todo.extend(after[current])
        return False

    return sorted(n for n in after if reaches_itself(n))


def _lookup(definition):
    """(services, plugins, graph steps, ancestors) or the problems of catalog and graph."""
    problems = _Problems()
    nodes = definition["nodes"]
    services = _by_name(Service, {n["service"] for n in nodes if "service" in n})
    plugins = _by_name(Plugin, {n["plugin"] for n in nodes if "plugin" in n})
    for node in nodes:
        kind = "service" if "service" in node else "plugin"
        row = (services if kind == "service" else plugins).get(node[kind])
        if row is None:
            problems.add(f"nodes.{node['id']}.{kind}",
                         f"no {kind} named {node[kind]!r} in the catalog: add it or fix the name")
        elif kind == "service" and row.tag_mode == "pinned" and not row.tag:
            problems.add(f"nodes.{node['id']}.service",
                         f"service {row.name!r} is pinned but has no tag: set its tag in the catalog")
    steps = [{"id": n["id"], "depends_on": sorted({e["from"] for e in definition["edges"]
                                                    if e["to"] == n["id"]})} for n in nodes]
    upstream = None
    try:
        upstream = agent_spec.ancestors(steps)   # runs topological_order: refuses cycles
    except agent_spec.SpecError:
        problems.add("edges", f"the edges form a cycle through {', '.join(_cycle_members(steps))}: "
                              "remove one of the edges between them")
    problems.check()
    return services, plugins, {s["id"]: s["depends_on"] for s in steps}, upstream


def _own_limits(node):
    return {key: float(node[key]) if key == "cpus" else node[key]
            for key in ("cpus", "memory_mb") if key in node}


def _resolve_step(node, row, depends_on):
    if "service" in node:
        return {**_own_limits(node), "id": node["id"], "kind": "service", "service": row.name,
                "registry_id": row.registry_id, "image": row.image, "tag_mode": row.tag_mode,
                "tag": row.tag, "tag_pattern": row.tag_pattern,
                "ports": list(row.ports or []), "exposed_ports": list(row.exposed_ports or []),
                "env": {**copy.deepcopy(row.env or {}), **node.get("env", {})},
                **({"secret_files": dict(node["secret_files"])} if node.get("secret_files") else {}),
                "command": copy.deepcopy(row.command), "health_check": copy.deepcopy(row.health_check),
                "depends_on": depends_on}
    return {"id": node["id"], "kind": "plugin", "plugin": row.name, "registry_id": row.registry_id,
            "image": row.image, "tag": row.tag, "params": copy.deepcopy(node.get("params", {})),
            "cpus": row.cpus, "memory_mb": row.memory_mb, **_own_limits(node), "timeout_s": row.timeout_s,
            "network": bool(row.network), "rollback": bool(row.rollback), "depends_on": depends_on}


# --- references and parameters -------------------------------------------------------------------
def _reference_problem(ref, node_id, by_id, upstream, secrets, project):
    scope, name, attr, key = ref
    if scope == "secrets":
        if attr is not None:
            return f"write ${{secrets.{name}}}: secrets have no attributes"
        if name not in secrets:
            return (f"project {project.name} has no secret {name!r}: add it to the project's "
                    "secrets or fix the name")
    elif scope == "services":
        target = by_id.get(name)
        if target is None or target["kind"] != "service":
            return f"${{services.{name}...}} names no service node: use the id of a service node"
        if attr not in SERVICE_ATTRIBUTES:
            return f"services.{name} has host, port and url, not {attr!r}"
        if attr == "port" and not target["ports"]:
            return f"service node {name!r} listens on no port: use host or url"
    elif scope == "steps":
        target = by_id.get(name)
        if target is None or target["kind"] != "plugin":
            return f"${{steps.{name}...}} names no plugin node: use the id of a plugin node"
        if attr != "outputs" or key is None:
            return f"write ${{steps.{name}.outputs.KEY}}"
        if name not in upstream[node_id]:
            return (f"uses outputs of {name!r}, which does not run before {node_id!r}: "
                    f"add edges so that {name} comes before {node_id}")
    else:
        return f"unknown reference ${{{scope}...}}: use secrets, services or steps"
    return None


def _sources(node, step):
    """(field, value, note) for every value references may sit in, with where it came from."""
    where = f"nodes.{step['id']}"
    if step["kind"] == "plugin":
        return [(f"{where}.params.{k}", v, "") for k, v in step["params"].items()]
    mine = node.get("env", {})
    catalog = f" (from service {step['service']!r} in the catalog: override it here or fix the service)"
    found = [(f"{where}.env.{k}", v, "" if k in mine else catalog) for k, v in step["env"].items()]
    found += [(f"{where}.secret_files.{k}", v, "") for k, v in step.get("secret_files", {}).items()]
    if step["command"]:
        found.append((f"{where}.command", step["command"], catalog))
    return found


def _check_references(definition, steps, upstream, project):
    problems = _Problems()
    secrets = set(db.session.scalars(
        select(ProjectSecret.name).where(ProjectSecret.project_id == project.id)))
    by_id = {s["id"]: s for s in steps}
    for node, step in zip(definition["nodes"], steps, strict=True):
        for field, value, note in _sources(node, step):
            # The agent's parser: references() reads strings anywhere in params.
            for ref in agent_spec.references({"params": {"value": value}}):
                problem = _reference_problem(ref, step["id"], by_id, upstream, secrets, project)
                if problem:
                    problems.add(field, problem + note)
    return problems


def _check_params(steps, plugins, problems):
    for step in steps:
        if step["kind"] != "plugin":
            continue
        where, schema = f"nodes.{step['id']}.params", plugins[step["plugin"]].params_schema or {}
        try:
            Draft202012Validator.check_schema(schema)
            # An empty registry: a remote $ref is refused, never fetched (jsonschema's default
            # would download it while an admin saves).
            validator = Draft202012Validator(schema, registry=SchemaRegistry())
            errors = sorted(validator.iter_errors(step["params"]),
                            key=lambda e: [str(p) for p in e.absolute_path])
        except (SchemaError, Unresolvable):
            problems.add(where, f"plugin {step['plugin']!r} has a params_schema that is not a usable "
                                "JSON Schema: fix the plugin in the catalog")
            continue
        for error in errors:
            field = ".".join([where, *(str(p) for p in error.absolute_path)])
            problems.add(field, f"{error.message[:300]} (the plugin's params_schema)")


def _trial(project, resolved, number):
    """What compile_spec makes of this version for a deployment; the agent's validate() judges it."""
    tags = {s["id"]: s["tag"] if s["tag_mode"] == "pinned" else TRIAL_TAG
            for s in resolved["steps"] if s["kind"] == "service"}
    deployment = SimpleNamespace(
        pipeline_version=SimpleNamespace(resolved=resolved, number=number), tags=tags,
        agent_id=TRIAL_TAG, name=TRIAL_TAG, cpus=project.cpus, memory_mb=project.memory_mb,
        environment=SimpleNamespace(name=TRIAL_TAG, base_domain="localhost"))
    try:
        spec = compile_spec(deployment)
    except (TypeError, ValueError, AttributeError):
        raise ValidationFailed("a service or plugin of this pipeline holds catalog data the agent "
                               "cannot use", {"pipeline": "fix the catalog entries it uses"}) from None
    try:
        agent_spec.validate(spec)
    except agent_spec.SpecError as exc:
        step = exc.message.split(":")[0].split(".")[0]
        field = f"nodes.{step[5:]}" if step.startswith("step ") else "pipeline"
        raise ValidationFailed(f"the agent would refuse this pipeline: {exc.message}",
                               {field: f"{exc.message}: fix the node or its catalog entry"}) from None


# --- saving --------------------------------------------------------------------------------------
def _check_comment(comment):
    if not isinstance(comment, str) or len(comment) > COMMENT_MAX or "\x00" in comment:
        raise ValidationFailed(f"comment must be text of at most {COMMENT_MAX} characters",
                               {"comment": f"give at most {COMMENT_MAX} characters of text"})
    return comment


def validate_definition(project, definition, number=None):
    """(definition as stored, resolved) or ValidationFailed naming every problem found."""
    _check_plain(definition)
    definition = _check_structure(definition)
    services, plugins, depends_on, upstream = _lookup(definition)
    steps = [_resolve_step(n, services[n["service"]] if "service" in n else plugins[n["plugin"]],
                           depends_on[n["id"]]) for n in definition["nodes"]]
    problems = _check_references(definition, steps, upstream, project)
    _check_params(steps, plugins, problems)
    _check_own_limits(definition, project, problems)
    problems.check()
    resolved = {"steps": steps}
    _trial(project, resolved, number or 1)
    return definition, resolved


def _check_own_limits(definition, project, problems):
    """A node's own limits stay within the project's (what its deployments get, all their
    containers together: docs/deployments.md "Limits"), and the services' together too: a
    service that declares none shares what the others leave."""
    for field, hint in limits_overruns(definition, project.name, project.cpus, project.memory_mb):
        problems.add(field, hint)


def limits_overruns(definition, project_name, cpus, memory_mb):
    """[(field, hint)] for each own limit of `definition` that limits of `cpus` and `memory_mb`
    per deployment cannot hold (a version's save; a project's limits lowered, app/services/
    catalog.py)."""
    def amount(key, value):
        return f"{value:g} {'MB' if key == 'memory_mb' else 'CPU' if value == 1 else 'CPUs'}"

    found = []
    for key, limit in (("cpus", cpus), ("memory_mb", memory_mb)):
        declared = [(n["id"], n[key]) for n in definition["nodes"]
                    if isinstance(n.get(key), int | float) and not isinstance(n.get(key), bool)]
        for node_id, value in declared:
            if value > limit + 1e-9:
                found.append((f"nodes.{node_id}.{key}",
                              f"{amount(key, value)} is more than project {project_name}'s limit of "
                              f"{amount(key, limit)} per deployment: lower it or raise the project's limit"))
        services = [(i, v) for i, v in declared
                    if any(n["id"] == i and "service" in n for n in definition["nodes"])]
        total = sum(v for _i, v in services)
        if len(services) > 1 and total > limit + 1e-9:
            found.append((f"nodes.{key}", f"the services' own {key} add up to {amount(key, total)} "
                          f"({', '.join(f'{i} {v:g}' for i, v in services)}), more than project "
                          f"{project_name}'s limit of {amount(key, limit)} per deployment"))
    return found


def _next_number(project_id):
    latest = db.session.scalar(select(func.max(PipelineVersion.number))
                               .where(PipelineVersion.project_id == project_id))
    return (latest or 0) + 1


def save_version(actor, project, definition, comment="", via="api"):
    """Version N+1 of the project's pipeline. Writes nothing unless everything is valid."""
    comment = _check_comment(comment)
    project_id = project.id
    definition, resolved = validate_definition(project, definition, _next_number(project_id))
    for _attempt in range(2):
        # A save at the same moment may take the number: the unique constraint tells, and
        # the rollback leaves nothing behind; one retry with the next free number.
        try:
            version = PipelineVersion(project_id=project_id, number=_next_number(project_id),
                                      comment=comment, definition=definition, resolved=resolved,
                                      created_by_id=getattr(actor, "id", None))
            db.session.add(version)
            audit.record(actor, "pipeline.save", "project", project,
                         {"version": version.number, "nodes": len(definition["nodes"]),
                          "comment": comment, "via": via})
            db.session.commit()
            return version
        except IntegrityError:
            db.session.rollback()
    raise Conflict(f"another version of project {project.name}'s pipeline was saved at the same "
                   "moment: reload it and save again", {"definition": "saved concurrently"})


def latest_version(project):
    """The version new deployments use, or None when the project has no pipeline yet."""
    return db.session.scalar(select(PipelineVersion).where(PipelineVersion.project_id == project.id)
                             .order_by(PipelineVersion.number.desc()).limit(1))


def get_version(project, number):
    version = db.session.scalar(select(PipelineVersion).where(
        PipelineVersion.project_id == project.id, PipelineVersion.number == number))
    if version is None:
        raise NotFound(f"project {project.name} has no pipeline version {number}")
    return version


def versions(project, stmt=None):
    """A select() of the project's versions (narrowing `stmt`, e.g. access.visible), newest first."""
    stmt = select(PipelineVersion) if stmt is None else stmt
    return (stmt.where(PipelineVersion.project_id == project.id)
            .options(selectinload(PipelineVersion.created_by))
            .order_by(PipelineVersion.number.desc()))
