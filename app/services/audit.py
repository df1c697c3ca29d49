"""The audit log: one entry per mutating action, written in the same transaction."""
from flask import has_request_context, request
from sqlalchemy import select

from app.extensions import db
from app.models import AuditEntry

# Detail keys whose values are never stored, whatever a caller passes.
REDACTED_KEYS = frozenset({"password", "token", "value", "secret", "new_password", "current_password"})


def _redact(details):
    return {k: ("[redacted]" if k in REDACTED_KEYS else v) for k, v in (details or {}).items()}


def record(actor, action, target_type, target=None, details=None, target_name=None):
    """Add an entry to the session; the caller's commit makes it durable with the change."""
    address = (request.remote_addr or "") if has_request_context() else "cli"
    entry = AuditEntry(
        actor_id=getattr(actor, "id", None),
        actor_username=getattr(actor, "username", None) or "system",
        action=action,
        target_type=target_type,
        target_id=getattr(target, "id", None),
        target_name=target_name if target_name is not None else _name_of(target),
        address=address,
        details=_redact(details),
    )
    db.session.add(entry)
    return entry


def _name_of(target):
    if target is None:
        return ""
    return getattr(target, "name", None) or getattr(target, "username", None) or ""


def query(actor=None, action=None, target_type=None, target_id=None, since=None, until=None,
          target_name=None):
    """Entries newest first. `action` matches a prefix ("project" finds project.create and
    project.delete); `target_name` a part of the name, any case (the audit page's search)."""
    stmt = select(AuditEntry)
    if actor is not None:
        stmt = stmt.where(AuditEntry.actor_username == actor)
    if action is not None:
        stmt = stmt.where(AuditEntry.action.startswith(action))
    if target_type is not None:
        stmt = stmt.where(AuditEntry.target_type == target_type)
    if target_id is not None:
        stmt = stmt.where(AuditEntry.target_id == target_id)
    if target_name:
        stmt = stmt.where(AuditEntry.target_name.icontains(target_name, autoescape=True))
    if since is not None:
        stmt = stmt.where(AuditEntry.at >= since)
    if until is not None:
        stmt = stmt.where(AuditEntry.at < until)
    return stmt.order_by(AuditEntry.at.desc(), AuditEntry.id.desc())


def pipeline_savers(project_id, numbers):
    """{version number: who saved it} from the audit log, for the versions whose row does not
    say: the author's account was deleted (created_by is set to NULL) or NullOps saved it
    itself (the demo seed, the CLI; recorded as "system"). Versions whose entries the
    retention has pruned are missing."""
    wanted = set(numbers)
    if not wanted:
        return {}
    rows = db.session.execute(select(AuditEntry.actor_username, AuditEntry.details).where(
        AuditEntry.action == "pipeline.save", AuditEntry.target_type == "project",
        AuditEntry.target_id == project_id))
    return {details.get("version"): name for name, details in rows
            if (details or {}).get("version") in wanted}
