from datetime import UTC

from flask_login import current_user

from app import access
from app.api.core import operation, paginate
from app.api.schemas import AuditOut, AuditQuery, Page
from app.services import audit


def _utc(value):
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)  # a time without zone is read as UTC


@operation("GET", "/audit", summary="The audit log, newest first (admins)", tag="audit",
           query=AuditQuery, response=Page[AuditOut])
def list_audit(params):
    access.require_admin(current_user, "read the audit log")
    stmt = audit.query(params.actor, params.action, params.target_type, params.target_id,
                       _utc(params.since), _utc(params.until))
    return paginate(stmt, params, AuditOut)
