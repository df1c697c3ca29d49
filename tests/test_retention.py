"""History past its retention goes (issue #14.8): deleted deployments with their events, old
events of live deployments but their "created" line, old audit entries, done node commands."""
from datetime import timedelta

from app.extensions import db
from app.models import AuditEntry, Deployment, DeploymentEvent, NodeCommand
from app.models.types import utcnow
from app.services import retention
from tests.access.deployments import add_deployment, add_node, pipeline_version, service_step


def _event(deployment, kind, age_days):
    db.session.add(DeploymentEvent(deployment_id=deployment.id, kind=kind, message=kind,
                                   at=utcnow() - timedelta(days=age_days)))


def test_history_past_its_retention_is_pruned_and_the_rest_kept(spec_example, app):
    app.config.update(NULLOPS_RETENTION_DAYS=30, NULLOPS_AUDIT_RETENTION_DAYS=60)
    ex = spec_example
    node = add_node(ex["environment"], "node-1")
    version = pipeline_version(ex["project"], [service_step("web")])
    live = add_deployment(version, ex["environment"], node, "live")
    old_deleted = add_deployment(version, ex["environment"], node, "gone", status="deleted")
    old_deleted.deleted_at = utcnow() - timedelta(days=31)
    recent_deleted = add_deployment(version, ex["environment"], node, "gone2", status="deleted")
    for deployment in (live, old_deleted):
        _event(deployment, "created", 40)
        _event(deployment, "status", 40)
        _event(deployment, "step", 1)
    db.session.add_all([
        AuditEntry(actor_username="a", action="old", target_type="x", at=utcnow() - timedelta(days=61)),
        AuditEntry(actor_username="a", action="recent", target_type="x", at=utcnow() - timedelta(days=59)),
        NodeCommand(node_id=node.id, kind="reconnect", done_at=utcnow() - timedelta(days=8)),
        NodeCommand(node_id=node.id, kind="reconnect", done_at=utcnow() - timedelta(days=1)),
        NodeCommand(node_id=node.id, kind="reconnect"),  # not done yet: kept whatever its age
    ])
    db.session.commit()
    ids = {"live": live.id, "old": old_deleted.id, "recent": recent_deleted.id}

    removed = retention.prune()
    assert removed == {"deleted_deployments": 1, "deployment_events": 1, "audit_entries": 1,
                       "node_commands": 1}
    db.session.expire_all()
    assert db.session.get(Deployment, ids["old"]) is None
    assert db.session.get(Deployment, ids["recent"]) is not None
    kinds = db.session.scalars(db.select(DeploymentEvent.kind).where(
        DeploymentEvent.deployment_id == ids["live"]).order_by(DeploymentEvent.id)).all()
    assert kinds == ["created", "step"]  # the 40-day-old status line went, "created" stays
    assert db.session.scalar(db.select(db.func.count()).select_from(DeploymentEvent).where(
        DeploymentEvent.deployment_id == ids["old"])) == 0
    assert db.session.scalars(db.select(AuditEntry.action).where(
        AuditEntry.action.in_(["old", "recent"]))).all() == ["recent"]
    assert db.session.scalar(db.select(db.func.count()).select_from(NodeCommand)) == 2
    assert retention.prune() == dict.fromkeys(removed, 0)  # nothing more


def test_the_active_controller_schedules_the_pruning(app):
    from app.controller import Controller

    controller = Controller(app, poll_s=0.2)
    controller.start()
    try:
        assert controller.active.wait(20)
        job = controller.scheduler.get_job("retention")
        assert job is not None and job.trigger.interval == timedelta(hours=1)
    finally:
        controller.stop()
