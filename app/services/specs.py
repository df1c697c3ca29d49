"""From a deployment row to what its agent runs: the spec of agent/spec.py, the secrets it
references and the registry credentials its images need.

The pipeline version's `resolved` graph (app/services/pipelines.py writes it) has one entry
per step:

    {"id": "db", "kind": "service", "service": "postgres", "registry_id": 1,
     "image": "postgres", "tag_mode": "pinned", "tag": "15", "tag_pattern": null,
     "ports": [5432], "exposed_ports": [], "env": {"POSTGRES_PASSWORD": "${secrets.DB_PASSWORD}"},
     "command": null, "health_check": {"type": "tcp", "port": 5432}, "depends_on": []}
    {"id": "mkdb", "kind": "plugin", "plugin": "postgres-database", "registry_id": 1,
     "image": "nullops/postgres-database", "tag": "1.0", "params": {...}, "cpus": 0.5,
     "memory_mb": 256, "timeout_s": 300, "network": true, "rollback": false, "depends_on": ["db"]}

A deployment's `tags` hold the tag of every service step (pinned ones copied in at creation).
Secrets are decrypted here, only when the controller is about to send them to the agent.
"""
import secrets
from urllib.parse import urlsplit

from flask import current_app
from sqlalchemy import select

from app.extensions import db
from app.models import DeploymentSpec, PipelineVersion, ProjectSecret, Registry
from app.models.registries import DOCKER_HUB_URL
from app.services.catalog import keyring, reveal_secret
from app.services.registries import reveal_password


def image_reference(registry, image, tag):
    """What `docker pull` takes: Docker Hub images by their short name, others prefixed with
    the registry's host (and port)."""
    host = urlsplit(registry.url).netloc
    if host == urlsplit(DOCKER_HUB_URL).netloc:
        return f"{image}:{tag}"
    return f"{host}/{image}:{tag}"


def host_name(step_id, deployment_name, environment_name, base_domain):
    return f"{step_id}.{deployment_name}.{environment_name}.{base_domain}"


def service_urls(deployment, resolved=None):
    """{step id: stable URL} of the services the ingress exposes (those with exposed ports)."""
    environment = deployment.environment
    return exposed_urls(exposed_ports(resolved or deployment.pipeline_version.resolved),
                        deployment.name, environment.name, environment.base_domain)


DEFAULT_PORTS = {"http": 80, "https": 443}


def exposed_urls(ports, deployment_name, environment_name, base_domain):
    """service_urls() from plain values: `ports` as exposed_ports() gives them (the API's lists
    read columns and VERSION_PORTS, not objects)."""
    scheme, port = public_scheme_and_port()
    port = "" if port == DEFAULT_PORTS[scheme] else f":{port}"
    return {step_id: f"{scheme}://{host_name(step_id, deployment_name, environment_name, base_domain)}{port}"
            for step_id, exposed in ports.items() if exposed is not None}


def url_pattern(deployment_name="<deployment>", environment_name="<environment>",
                base_domain="<base domain>"):
    """A service URL with `<service>` for the step id, for hints: how deployments answer."""
    return exposed_urls({"<service>": True}, deployment_name, environment_name, base_domain)["<service>"]


def public_scheme_and_port():
    """How people reach the ingress: the configured public scheme and port, the port by default
    the one Caddy listens on (`nullops dev`'s 8081 belongs in the URLs it shows)."""
    config = current_app.config
    port = config["NULLOPS_INGRESS_PUBLIC_PORT"] or int(config["NULLOPS_INGRESS_LISTEN"].rsplit(":", 1)[-1])
    return config["NULLOPS_INGRESS_PUBLIC_SCHEME"], port


def exposed_ports(resolved):
    """{service step id: its first exposed port, or None when it exposes none}."""
    return {step["id"]: (step.get("exposed_ports") or [None])[0]
            for step in resolved["steps"] if step["kind"] == "service"}


class VersionPorts:
    """exposed_ports() of pipeline versions, each read once per process: versions never change.
    Keyed by id and creation time, a guard from before migration 0009, when SQLite gave a deleted
    version's id to the next one; ids are never reused now."""

    def __init__(self):
        self._known = {}

    def of(self, versions):
        """{(version id, created_at): exposed_ports} covering `versions`, (id, created_at) pairs."""
        missing = {version for version in versions if version not in self._known}
        if missing:
            rows = db.session.execute(
                select(PipelineVersion.id, PipelineVersion.created_at, PipelineVersion.resolved)
                .where(PipelineVersion.id.in_({version_id for version_id, _ in missing})))
            for version_id, created_at, resolved in rows:
                self._known[(version_id, created_at)] = exposed_ports(resolved)
        return self._known


VERSION_PORTS = VersionPorts()


class Preloaded:
    """What apply_params reads for many deployments, read in a few statements for all of them:
    a fleet's state.sync after a controller restart sends every live deployment at once, and two
    statements per deployment (its kept spec, its project's secrets) took 7.5 ms each on a busy
    2-core host, 75 s for 10,000 deployments (benchmarks/agent_fleet.py, issue 19)."""

    CHUNK = 5000  # ids per IN list (SQLite takes at most 32,766 parameters)

    def __init__(self, deployments):
        ids = [deployment.id for deployment in deployments]
        project_ids = sorted({deployment.project_id for deployment in deployments})
        self.specs = {}     # deployment id -> DeploymentSpec
        for chunk in _chunks(ids, self.CHUNK):
            for row in db.session.scalars(
                    db.select(DeploymentSpec).where(DeploymentSpec.deployment_id.in_(chunk))):
                self.specs[row.deployment_id] = row
        self.secrets = {}   # project id -> {name: ProjectSecret}
        for chunk in _chunks(project_ids, self.CHUNK):
            for row in db.session.scalars(
                    db.select(ProjectSecret).where(ProjectSecret.project_id.in_(chunk))):
                self.secrets.setdefault(row.project_id, {})[row.name] = row
        self.registries = {r.id: r for r in db.session.scalars(db.select(Registry))}  # a handful
        self._values = {}   # (project id, name) -> decrypted value, for this batch only

    def secret_values(self, project_id, names):
        """secrets_for's answer, each secret decrypted once per batch (a project's deployments
        share them)."""
        values = {}
        for name, row in self.secrets.get(project_id, {}).items():
            if name in names:
                if (project_id, name) not in self._values:
                    self._values[(project_id, name)] = reveal_secret(row)
                values[name] = self._values[(project_id, name)]
        return values


def _chunks(items, size):
    return (items[start:start + size] for start in range(0, len(items), size))


def _registries(ids, preloaded=None):
    if preloaded is not None:
        return {i: preloaded.registries[i] for i in ids if i in preloaded.registries}
    return {r.id: r for r in db.session.scalars(db.select(Registry).where(Registry.id.in_(ids)))}


def compile_spec(deployment, preloaded=None):
    """(spec, secret names) for `deployment.apply`; registries come from `registry_credentials`."""
    resolved = deployment.pipeline_version.resolved
    registries = _registries({s["registry_id"] for s in resolved["steps"]}, preloaded)
    steps = []
    for step in resolved["steps"]:
        registry = registries[step["registry_id"]]
        tag = deployment.tags.get(step["id"]) if step["kind"] == "service" else step["tag"]
        out = {"id": step["id"], "kind": step["kind"],
               "image": image_reference(registry, step["image"], tag)}
        if registry.has_credentials:
            out["registry"] = registry.name
        if step.get("depends_on"):
            out["depends_on"] = sorted(step["depends_on"])
        if step["kind"] == "service":
            out["env"] = dict(step.get("env") or {})
            if step.get("secret_files"):   # versions saved before issue 17 item 8 have none
                out["secret_files"] = dict(step["secret_files"])
            if step.get("command"):
                out["command"] = list(step["command"])
            out["ports"] = list(step.get("ports") or [])
            out["expose"] = list(step.get("exposed_ports") or [])
            if step.get("health_check"):
                out["readiness"] = dict(step["health_check"])
            for key in ("cpus", "memory_mb"):   # its own limits; else it shares the deployment's
                if key in step:
                    out[key] = step[key]
        else:
            out["params"] = step.get("params") or {}
            out["cpus"] = step["cpus"]
            out["memory_mb"] = step["memory_mb"]
            out["timeout_s"] = step["timeout_s"]
            out["network"] = bool(step.get("network"))
            out["rollback"] = bool(step.get("rollback"))
        steps.append(out)
    spec = {
        "deployment_id": deployment.agent_id,
        "name": deployment.name,
        "pipeline_version": deployment.pipeline_version.number,
        "limits": {"cpus": deployment.cpus, "memory_mb": deployment.memory_mb},
        "urls": service_urls(deployment, resolved),
        "steps": steps,
    }
    return spec


def secrets_for(deployment, names, preloaded=None):
    """{name: value} of the project's secrets a spec references (decrypted now, for the link)."""
    if not names:
        return {}
    if preloaded is not None:
        return preloaded.secret_values(deployment.project_id, names)
    rows = db.session.scalars(db.select(ProjectSecret).where(
        ProjectSecret.project_id == deployment.project_id, ProjectSecret.name.in_(names)))
    return {row.name: reveal_secret(row) for row in rows}


def registry_credentials(deployment, spec, preloaded=None):
    """{registry name as the spec has it: {"username", "password"}} for the steps that name a
    registry: today's credentials of the registry each step was resolved to (a kept spec may
    carry a name the registry no longer has)."""
    named = {step["id"]: step["registry"] for step in spec["steps"] if "registry" in step}
    if not named:
        return {}
    registry_ids = {step["id"]: step["registry_id"] for step in deployment.pipeline_version.resolved["steps"]}
    rows = _registries({registry_ids[step_id] for step_id in named}, preloaded)
    credentials = {}
    for step_id, name in named.items():
        registry = rows.get(registry_ids[step_id])
        if registry is not None and registry.has_credentials:
            credentials[name] = {"username": registry.username, "password": reveal_password(registry)}
    return credentials


OUTPUT_KEY_CONTEXT = DeploymentSpec.__encrypted__["output_key_ciphertext"]


def kept(deployment, preloaded=None):
    """The deployment's DeploymentSpec: the spec it was first sent with for this run and its
    output key, made now the first time (after creation, a retry, or an upgrade from before
    specs were kept); the caller commits."""
    if preloaded is not None:
        row = preloaded.specs.get(deployment.id)
    else:
        row = db.session.get(DeploymentSpec, deployment.id)
    if row is None:
        key = keyring().encrypt(secrets.token_hex(32), OUTPUT_KEY_CONTEXT)
        row = DeploymentSpec(deployment_id=deployment.id, spec=compile_spec(deployment, preloaded),
                             output_key_ciphertext=key)
        db.session.add(row)
    return row


def forget_spec(deployment):
    """A retry runs another pipeline version: its spec is compiled anew when next sent."""
    db.session.execute(db.delete(DeploymentSpec).where(DeploymentSpec.deployment_id == deployment.id))


def apply_params(deployment, preloaded=None):
    """The full `deployment.apply` / `state.sync` entry for a deployment: its kept spec, today's
    secret values and registry credentials (those may change without re-running anything).
    `preloaded`: Preloaded for a batch that includes this deployment."""
    from agent.spec import secret_names

    row = kept(deployment, preloaded)
    return {"deployment": row.spec, "secrets": secrets_for(deployment, secret_names(row.spec), preloaded),
            "registries": registry_credentials(deployment, row.spec, preloaded),
            "output_key": keyring().decrypt(row.output_key_ciphertext, OUTPUT_KEY_CONTEXT)}


def delete_params(deployment):
    """The `deployment.delete` params: with what its rollback plugins need (secrets, registry
    credentials, the key to its stored outputs) when it was ever sent to the agent."""
    params = {"deployment_id": deployment.agent_id}
    if db.session.get(DeploymentSpec, deployment.id) is None:
        return params  # never sent: no plugin ran, nothing to roll back
    full = apply_params(deployment)
    return {**params, "secrets": full["secrets"], "registries": full["registries"],
            "output_key": full["output_key"]}
