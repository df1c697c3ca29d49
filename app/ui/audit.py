"""The audit log page (admins): who did what to which object, when and from where, newest
first, filtered like the API's GET /api/v1/audit and 50 entries a page. Times are UTC."""
from datetime import UTC, datetime

from flask import render_template, request
from flask_login import current_user
from sqlalchemy import distinct, func, select

from app import access
from app.extensions import db
from app.models import AuditEntry
from app.services import audit
from app.ui import bp

PER_PAGE = 50
TIME_HINT = "use a date and time such as 2026-12-03T14:30 (UTC)"
FILTERS = ("actor", "action", "target_type", "target", "since", "until")


def _moment(name, problems):
    text = (request.args.get(name) or "").strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        problems[name] = TIME_HINT
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@bp.get("/audit")
def audit_log():
    access.require_admin(current_user, "read the audit log")
    args = {key: (request.args.get(key) or "").strip() for key in FILTERS}
    problems = {}
    since, until = _moment("since", problems), _moment("until", problems)
    if since and until and until <= since:
        problems["until"] = "give a time after the start of the range"
    page = max(request.args.get("page", 1, type=int), 1)
    rows, total = [], 0
    if not problems:
        stmt = audit.query(args["actor"] or None, args["action"] or None,
                           args["target_type"] or None, since=since, until=until,
                           target_name=args["target"] or None)
        total = db.session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
        rows = db.session.scalars(stmt.limit(PER_PAGE).offset((page - 1) * PER_PAGE)).all()
    choices = {column: db.session.scalars(select(distinct(column)).order_by(column)).all()
               for column in (AuditEntry.action, AuditEntry.target_type)}
    return render_template(
        "admin/audit.html", entries=rows, total=total, page=page,
        pages=max(1, -(-total // PER_PAGE)), args={k: v for k, v in args.items() if v},
        filters=args, errors=problems, actions=choices[AuditEntry.action],
        target_types=choices[AuditEntry.target_type],
    ), 400 if problems else 200
