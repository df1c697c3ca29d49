"""How long history is kept (issue #14.8): without it deployment events, audit entries, done
node commands and deleted deployments grow for ever; a QA installation makes thousands of
deployments a month, each with dozens of events.

Kept, by default: a deleted deployment (with its history) for NULLOPS_RETENTION_DAYS after its
deletion; a live deployment's events for as long, except its "created" event (who deployed
what and when stays for its whole life); audit entries for NULLOPS_AUDIT_RETENTION_DAYS; done
node commands for a week (only the node page's last results read them). The controller runs
`prune` every hour; deletes go in batches so no statement holds a table long."""
from datetime import timedelta

from flask import current_app
from sqlalchemy import delete, select

from app.extensions import db
from app.models import AuditEntry, Deployment, DeploymentEvent, NodeCommand
from app.models.types import utcnow

BATCH = 1000
DONE_COMMANDS_KEPT = timedelta(days=7)


def _in_batches(model, condition):
    """Delete the rows of `model` matching `condition` a batch at a time; returns how many."""
    removed = 0
    while True:
        ids = db.session.scalars(select(model.id).where(condition).limit(BATCH)).all()
        if not ids:
            return removed
        db.session.execute(delete(model).where(model.id.in_(ids)))
        db.session.commit()
        removed += len(ids)


def prune(now=None):
    """Remove what is past its retention; returns {what: how many}."""
    now = now or utcnow()
    history = now - timedelta(days=current_app.config["NULLOPS_RETENTION_DAYS"])
    audit = now - timedelta(days=current_app.config["NULLOPS_AUDIT_RETENTION_DAYS"])
    return {
        # Their events, kept spec and clone links go with them (foreign keys).
        "deleted_deployments": _in_batches(Deployment, (Deployment.deleted_at.is_not(None))
                                           & (Deployment.deleted_at < history)),
        "deployment_events": _in_batches(DeploymentEvent, (DeploymentEvent.at < history)
                                         & (DeploymentEvent.kind != "created")),
        "audit_entries": _in_batches(AuditEntry, AuditEntry.at < audit),
        "node_commands": _in_batches(NodeCommand, (NodeCommand.done_at.is_not(None))
                                     & (NodeCommand.done_at < now - DONE_COMMANDS_KEPT)),
    }
