"""Projects (with their resource limits) and environments, and project secrets."""
from flask import current_app
from sqlalchemy import delete as delete_rows
from sqlalchemy import func, select

from app.extensions import db
from app.models import Deployment, Environment, Project, ProjectSecret
from app.services import audit
from app.services.errors import Conflict, NotFound, ValidationFailed
from app.services.names import (
    DNS_LABEL_HINT,
    DNS_LABEL_PATTERN,
    DNS_NAME_HINT,
    DNS_NAME_MAX,
    DNS_NAME_PATTERN,
    SECRET_NAME_HINT,
    SECRET_NAME_PATTERN,
    check,
)

SECRET_MAX_BYTES = 64 * 1024
SECRET_CONTEXT = ProjectSecret.__encrypted__["value_ciphertext"]
CLEANUP_MINUTES_MIN = 5
CLEANUP_MINUTES_MAX = 365 * 24 * 60
# What each deployment of a project may use (and admission reserves on a node for it).
PROJECT_CPUS_RANGE = (0.05, 256)
PROJECT_MEMORY_MB_RANGE = (16, 4 * 1024 * 1024)
# How far an environment's CPU limits may add up beyond its nodes' CPUs (admission).
CPU_OVERCOMMIT_RANGE = (1, 64)


def _check_base_domain(value):
    if isinstance(value, str) and len(value) > DNS_NAME_MAX:
        value = None  # too long: the same message as any other bad name
    return check("base_domain", value, DNS_NAME_PATTERN, DNS_NAME_HINT)


def _check_cleanup_minutes(value):
    if (isinstance(value, bool) or not isinstance(value, int)
            or not CLEANUP_MINUTES_MIN <= value <= CLEANUP_MINUTES_MAX):
        hint = (f"a whole number of minutes from {CLEANUP_MINUTES_MIN} to {CLEANUP_MINUTES_MAX} "
                "(a year); 10080 is a week")
        raise ValidationFailed(f"cleanup_minutes is invalid: use {hint}", {"cleanup_minutes": f"use {hint}"})
    return value


def _check_limit(field, value, bounds, integer):
    low, high = bounds
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        hint = f"{'a whole number' if integer else 'a number'} from {low} to {high}"
        raise ValidationFailed(f"{field} is invalid: use {hint}", {field: f"use {hint}"})
    return value if integer else float(value)


def _check_project_cpus(value):
    return _check_limit("cpus", value, PROJECT_CPUS_RANGE, integer=False)


def _check_project_memory_mb(value):
    return _check_limit("memory_mb", value, PROJECT_MEMORY_MB_RANGE, integer=True)


def _check_cpu_overcommit(value):
    return _check_limit("cpu_overcommit", value, CPU_OVERCOMMIT_RANGE, integer=False)


def _check_project_cleanup_minutes(value):
    """None: the environment's cleanup_minutes applies."""
    return None if value is None else _check_cleanup_minutes(value)


# Per-model settings beyond name and description, each with its check.
_SETTINGS = {
    Project: {"cpus": _check_project_cpus, "memory_mb": _check_project_memory_mb,
              "cleanup_minutes": _check_project_cleanup_minutes},
    Environment: {"base_domain": _check_base_domain, "cleanup_minutes": _check_cleanup_minutes,
                  "cpu_overcommit": _check_cpu_overcommit},
}
# Settings where None is a value (not "leave it as it is") when given to update().
_NULLABLE = {(Project, "cleanup_minutes")}


def _checked_settings(model, settings):
    rules = _SETTINGS.get(model, {})
    unknown = settings.keys() - rules.keys()
    if unknown:
        raise TypeError(f"{model.__name__} has no settings {sorted(unknown)}")
    return {key: rules[key](value) for key, value in settings.items()}


def _kind(model):
    return model.__tablename__.rstrip("s")


def _check_unique(model, name, obj_id=None):
    existing = db.session.scalar(select(model).where(model.name == name))
    if existing is not None and existing.id != obj_id:
        raise Conflict(
            f"a {_kind(model)} named {name!r} exists; choose another name", {"name": "already taken"}
        )


def create(actor, model, name, description="", **settings):
    """A project or an environment. `settings` are the model's own (projects: cpus, memory_mb,
    cleanup_minutes; environments: base_domain, cleanup_minutes); left out, the model's
    defaults apply."""
    check("name", name, DNS_LABEL_PATTERN, DNS_LABEL_HINT)
    settings = _checked_settings(model, settings)
    _check_unique(model, name)
    obj = model(name=name, description=description or "", **settings)
    db.session.add(obj)
    db.session.flush()
    audit.record(actor, f"{_kind(model)}.create", _kind(model), obj,
                 {key: getattr(obj, key) for key in _SETTINGS.get(model, {})} or None)
    db.session.commit()
    return obj


def update(actor, obj, name=None, description=None, **settings):
    """Change what is given; None leaves a field as it is, except a project's cleanup_minutes,
    which None sets back to the environment's default."""
    model = type(obj)
    settings = _checked_settings(model, {k: v for k, v in settings.items()
                                         if v is not None or (model, k) in _NULLABLE})
    changes = {}
    if name is not None and name != obj.name:
        check("name", name, DNS_LABEL_PATTERN, DNS_LABEL_HINT)
        _check_unique(model, name, obj.id)
        changes["name"] = [obj.name, name]
        obj.name = name
    if description is not None and description != obj.description:
        obj.description = changes["description"] = description
    if model is Project:
        _check_latest_version_fits(obj, settings.get("cpus", obj.cpus),
                                   settings.get("memory_mb", obj.memory_mb))
    for key, value in settings.items():
        if value != getattr(obj, key):
            changes[key] = [getattr(obj, key), value]
            setattr(obj, key, value)
    if changes:
        audit.record(actor, f"{_kind(model)}.update", _kind(model), obj, changes)
    db.session.commit()
    return obj


def _check_latest_version_fits(project, cpus, memory_mb):
    """Lowered limits must still hold what the project's latest pipeline version declares (the
    version new deployments get; issue 18): else the save is refused with the numbers. Older
    versions are not checked: nothing new is deployed from them; live deployments keep the
    limits they were created with (docs/deployments.md "Limits")."""
    if cpus >= project.cpus and memory_mb >= project.memory_mb:
        return
    from app.services.pipelines import latest_version, limits_overruns  # pipelines is above catalog

    version = latest_version(project)
    if version is None:
        return
    overruns = limits_overruns(version.definition, project.name, cpus, memory_mb)
    if overruns:
        fields = {key: f"pipeline version {version.number} declares more; lower its nodes' limits "
                       "in a new version first, or keep this limit"
                  for key in ("cpus", "memory_mb") if any(f.endswith(key) for f, _h in overruns)}
        raise ValidationFailed(
            f"project {project.name}'s new limits would not hold its latest pipeline version "
            f"{version.number}, which new deployments get: "
            + "; ".join(f"{field}: {hint}" for field, hint in overruns)
            + f". Save a pipeline version within {cpus:g} CPU{'' if cpus == 1 else 's'} and {memory_mb} MB "
            "first", fields)


def delete(actor, obj):
    """A project or environment. Refused while it has live deployments (they hold resources on
    nodes); the rows of its deleted deployments go with it, their history stays in the audit log."""
    column = Deployment.project_id if isinstance(obj, Project) else Deployment.environment_id
    live = db.session.scalar(select(func.count(Deployment.id)).where(
        column == obj.id, Deployment.status != "deleted"))
    if live:
        raise Conflict(f"{_kind(type(obj))} {obj.name} has {live} deployment(s) that are not deleted "
                       "yet: delete them first", {"deployments": f"{live} not deleted"})
    audit.record(actor, f"{_kind(type(obj))}.delete", _kind(type(obj)), obj)
    ours = select(Deployment.id).where(column == obj.id)
    db.session.execute(Deployment.__table__.update().where(Deployment.cloned_from_id.in_(ours))
                       .values(cloned_from_id=None))
    db.session.execute(delete_rows(Deployment).where(column == obj.id))
    db.session.delete(obj)
    db.session.commit()


def keyring():
    return current_app.extensions["nullops_keyring"]


def put_secret(actor, project, name, value):
    """Create or replace a secret. Values are write-only: nothing returns them to a caller."""
    check("name", name, SECRET_NAME_PATTERN, SECRET_NAME_HINT)
    if not isinstance(value, str) or not value or len(value.encode()) > SECRET_MAX_BYTES:
        raise ValidationFailed(
            f"value must be a non-empty string of at most {SECRET_MAX_BYTES} bytes",
            {"value": "give a non-empty string up to 64 KiB"},
        )
    secret = db.session.scalar(
        select(ProjectSecret).where(ProjectSecret.project_id == project.id, ProjectSecret.name == name)
    )
    created = secret is None
    if created:
        secret = ProjectSecret(project_id=project.id, name=name)
        db.session.add(secret)
    secret.value_ciphertext = keyring().encrypt(value, SECRET_CONTEXT)
    audit.record(actor, "secret.create" if created else "secret.update", "project", project,
                 {"name": name})  # not "secret": that key is redacted, and the name is no secret
    db.session.commit()
    return secret, created


def delete_secret(actor, project, name):
    secret = db.session.scalar(
        select(ProjectSecret).where(ProjectSecret.project_id == project.id, ProjectSecret.name == name)
    )
    if secret is None:
        raise NotFound(f"project {project.name!r} has no secret named {name!r}")
    db.session.delete(secret)
    audit.record(actor, "secret.delete", "project", project, {"name": name})
    db.session.commit()


def reveal_secret(secret):
    """Decrypt for the one moment a value is sent to an agent. Never return it from the API."""
    return keyring().decrypt(secret.value_ciphertext, SECRET_CONTEXT)
