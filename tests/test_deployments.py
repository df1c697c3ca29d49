"""The deployment lifecycle service: create, clone, retry, extend, delete, auto-cleanup. Every
refusal writes nothing; tags of selectable steps are checked against a real registry."""
import socket
from datetime import timedelta

import pytest

from app.extensions import db
from app.models import AuditEntry, Deployment, DeploymentEvent
from app.models.types import utcnow
from app.services import catalog, deployments, registries
from app.services.errors import Conflict, Forbidden, NotFound, ServiceError, ValidationFailed
from app.services.registries import RegistryDenied, RegistryUnreachable
from tests.access.deployments import (
    add_deployment,
    add_node,
    pipeline_version,
    plugin_step,
    push_tags,
    registry,
    service_step,
)
from tests.dockertools import htpasswd_registry

USER, PASSWORD = "puller", "registry-secret-PW-987"


@pytest.fixture(autouse=True)
def _fresh_tag_cache():
    registries.clear_cache()
    yield
    registries.clear_cache()


@pytest.fixture
def ex(spec_example):
    return spec_example


@pytest.fixture
def version(ex):
    """shop's pipeline: web pinned to 1.4 (exposed), db pinned to 15, a plugin after db."""
    return pipeline_version(ex["project"], [service_step("web", tag="1.4"),
                                            service_step("db", tag="15", exposed=[]),
                                            plugin_step("mkdb", depends_on=["db"])])


@pytest.fixture
def node(ex):
    return add_node(ex["environment"], "node-1", cpus=4, memory_mb=8192)


def counts():
    return tuple(db.session.scalar(db.select(db.func.count()).select_from(model))
                 for model in (Deployment, DeploymentEvent, AuditEntry))


def events(deployment):
    return db.session.scalars(db.select(DeploymentEvent).where(
        DeploymentEvent.deployment_id == deployment.id).order_by(DeploymentEvent.id)).all()


def refused(error, call, *args):
    """Run a service call that must fail with `error`, writing nothing; returns the error."""
    before = counts()
    with pytest.raises(error) as caught:
        call(*args)
    db.session.rollback()
    assert counts() == before
    return caught.value


# --- create -------------------------------------------------------------------------------------
def test_create_writes_a_pending_deployment_with_pinned_tags_limits_event_and_audit(ex, version, node):
    ex["project"].cpus, ex["project"].memory_mb = 1.5, 1536
    db.session.commit()
    deployment = deployments.create(ex["writer"], ex["project"], ex["environment"], "feature-1", {})
    assert (deployment.status, deployment.node_id, deployment.pipeline_version_id) == (
        "pending", node.id, version.id)
    assert deployment.tags == {"web": "1.4", "db": "15"}
    assert (deployment.cpus, deployment.memory_mb) == (1.5, 1536)
    assert abs((utcnow() - deployment.last_activity_at).total_seconds()) < 5
    [created] = events(deployment)
    assert (created.kind, created.actor_id) == ("created", ex["writer"].id)
    assert created.message == "created by se-bob on node-1 from pipeline version 1"
    entry = db.session.scalar(db.select(AuditEntry).where(AuditEntry.action == "deployment.create"))
    assert (entry.actor_username, entry.target_id, entry.details["tags"]) == (
        "se-bob", deployment.id, {"web": "1.4", "db": "15"})


def test_create_uses_the_latest_pipeline_version(ex, version, node):
    newer = pipeline_version(ex["project"], [service_step("web", tag="1.5")])
    deployment = deployments.create(ex["admin"], ex["project"], ex["environment"], "d1", {})
    assert deployment.pipeline_version_id == newer.id and deployment.tags == {"web": "1.5"}


@pytest.mark.parametrize("name", ["Feature-1", "-feature", "feature-", "a" * 64, "", "$(reboot)",
                                  "a;b", "web\nx", "feature_1", None, 7])
def test_a_name_that_is_not_a_dns_label_is_refused(ex, version, node, name):
    error = refused(ValidationFailed, deployments.create, ex["writer"], ex["project"],
                    ex["environment"], name, {})
    assert "name" in error.fields and "DNS label" in error.message


@pytest.mark.parametrize("tags,field,message", [
    ({"web": "1.5"}, "tags.web", "web is pinned to 1.4; leave it out"),
    ({"cache": "7"}, "tags.cache",
     "tags.cache: pipeline version 1 has no service step 'cache'; steps with a tag to choose: none"),
    ({"mkdb": "1.0"}, "tags.mkdb",
     "tags.mkdb: pipeline version 1 has no service step 'mkdb'; steps with a tag to choose: none"),
    ("1.4", "tags", "tags is invalid: give an object {step id: tag}"),
])
def test_tags_for_pinned_or_unknown_steps_are_refused(ex, version, node, tags, field, message):
    error = refused(ValidationFailed, deployments.create, ex["writer"], ex["project"],
                    ex["environment"], "d1", tags)
    assert error.message == message and field in error.fields


def test_a_secret_deleted_since_the_pipeline_was_saved_is_named_before_anything_is_written(
        ex, node):
    web = service_step("web", tag="1.4")
    web["env"] = {"DB_PASSWORD": "${secrets.DB_PASSWORD}", "KEY": "${secrets.API_KEY}"}
    version = pipeline_version(ex["project"], [web])
    catalog.put_secret(ex["admin"], ex["project"], "DB_PASSWORD", "s3cret-value")
    failed = add_deployment(version, ex["environment"], node, "d1", status="failed")
    for call, args in ((deployments.create, (ex["writer"], ex["project"], ex["environment"], "d2", {})),
                       (deployments.retry, (ex["writer"], failed))):
        error = refused(Conflict, call, *args)
        assert error.message == ("pipeline version 1 of shop uses the secret API_KEY, which the "
                                 "project no longer has: add it under the project's secrets, or "
                                 "save the pipeline without it")
        assert error.fields == {"secrets": "missing: API_KEY"}
    catalog.put_secret(ex["admin"], ex["project"], "API_KEY", "another-value")
    assert deployments.create(ex["writer"], ex["project"], ex["environment"], "d2", {}).status == "pending"


def test_a_project_without_pipeline_is_refused(ex, node):
    error = refused(ValidationFailed, deployments.create, ex["writer"], ex["project"],
                    ex["environment"], "d1", {})
    assert error.message.startswith("the project has no pipeline yet")


def test_a_name_is_unique_among_live_deployments_and_free_again_once_deleted(ex, version, node):
    first = deployments.create(ex["writer"], ex["project"], ex["environment"], "feature-1", {})
    error = refused(Conflict, deployments.create, ex["writer"], ex["project"], ex["environment"],
                    "feature-1", {})
    assert error.fields == {"name": "already taken in staging"}
    deployments.request_delete(ex["writer"], first)
    refused(Conflict, deployments.create, ex["writer"], ex["project"], ex["environment"], "feature-1", {})
    first.status, first.deleted_at = "deleted", utcnow()  # as the controller leaves it
    db.session.commit()
    again = deployments.create(ex["writer"], ex["project"], ex["environment"], "feature-1", {})
    assert again.id != first.id


def test_a_concurrent_create_of_the_same_name_is_a_conflict_from_the_index(ex, version, node,
                                                                            monkeypatch):
    deployments.create(ex["writer"], ex["project"], ex["environment"], "feature-1", {})
    # The other request checked the name before this one was written.
    monkeypatch.setattr(deployments, "_check_name", lambda environment, name, version: name)
    error = refused(Conflict, deployments.create, ex["writer"], ex["project"], ex["environment"],
                    "feature-1", {})
    assert error.fields == {"name": "already taken in staging"}


def test_a_name_too_long_for_the_service_urls_is_refused(ex, node):
    pipeline_version(ex["project"], [service_step("w" * 63)])
    ex["environment"].base_domain = ("x" * 60 + ".") * 2 + "example.com"
    db.session.commit()
    error = refused(ValidationFailed, deployments.create, ex["writer"], ex["project"],
                    ex["environment"], "a" * 63, {})
    assert error.message == "name is too long for its service URLs in staging: use at most 47 characters"


def test_who_may_deploy(ex, version, node, make_user):
    refused(Forbidden, deployments.create, ex["reader"], ex["project"], ex["environment"], "d1", {})
    refused(NotFound, deployments.create, ex["outsider"], ex["project"], ex["environment"], "d1", {})
    refused(NotFound, deployments.create, ex["writer"], ex["other_project"], ex["environment"], "d1", {})


def test_no_room_is_refused_with_the_free_figures(ex, version, node):
    ex["project"].cpus = 8
    db.session.commit()
    error = refused(ServiceError, deployments.create, ex["writer"], ex["project"], ex["environment"],
                    "d1", {})
    assert (error.status, error.code) == (409, "insufficient_resources")
    assert error.message == ("no online node in staging has 8 CPUs and 1024 MB free: "
                             "node-1 has 4 CPUs and 8192 MB free")


# --- selectable tags against a real registry ----------------------------------------------------
@pytest.fixture
def tagged(ex, tmp_path, node):
    """A real registry holding team/web:v1.0, v1.1 and features-login; shop's pipeline lets
    users choose web's tag among v*."""
    with htpasswd_registry(tmp_path, USER, PASSWORD) as address:
        push_tags(address, USER, PASSWORD, "team/web", ["v1.0", "v1.1", "features-login"])
        local = registry("local", f"http://{address}", USER, PASSWORD)
        pipeline_version(ex["project"], [
            service_step("web", mode="selectable", pattern="v*", registry_id=local.id),
            service_step("db", tag="15", exposed=[])])
        yield local


def test_a_selectable_step_takes_a_tag_that_exists_and_matches(ex, tagged):
    deployment = deployments.create(ex["writer"], ex["project"], ex["environment"], "d1",
                                    {"web": "v1.1"})
    assert deployment.tags == {"web": "v1.1", "db": "15"}


@pytest.mark.parametrize("tags,message", [
    ({}, "web needs a tag: choose one matching v*"),
    ({"web": "features-login"}, "tag features-login of web does not match its pattern v*; "
                                "choose one of the step's tags"),
    ({"web": "v9.9"}, "tag v9.9 of web does not exist in team/web on registry local; "
                      "choose one of the step's tags"),
    ({"web": "-v1"}, "tags.web is invalid: use 1-128 letters, digits, '_', '.' or '-', "
                     "not starting with '.' or '-'"),
    ({"web": "v1;reboot"}, "tags.web is invalid: use 1-128 letters, digits, '_', '.' or '-', "
                           "not starting with '.' or '-'"),
])
def test_a_selectable_tag_that_is_missing_mismatched_or_unknown_is_refused(ex, tagged, tags, message):
    error = refused(ValidationFailed, deployments.create, ex["writer"], ex["project"],
                    ex["environment"], "d1", tags)
    assert error.message == message and list(error.fields) == ["tags.web"]


def test_registry_failures_pass_on_with_the_registry_s_message(ex, tagged):
    registries.update(ex["admin"], tagged, password="wrong-password-1")
    error = refused(RegistryDenied, deployments.create, ex["writer"], ex["project"],
                    ex["environment"], "d1", {"web": "v1.1"})
    assert (error.status, error.message) == (502, "registry local refused the credentials (401)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    registries.update(ex["admin"], tagged, url=f"http://127.0.0.1:{closed}")
    error = refused(RegistryUnreachable, deployments.create, ex["writer"], ex["project"],
                    ex["environment"], "d1", {"web": "v1.1"})
    assert (error.status, error.message) == (503, "registry local is unreachable: connection refused")


def test_step_tags_lists_a_selectable_step_s_tags_and_refuses_a_pinned_one(ex, tagged):
    assert deployments.step_tags(ex["project"], "web") == {
        "step_id": "web", "pattern": "v*", "tags": ["v1.1", "v1.0"]}
    assert refused(ValidationFailed, deployments.step_tags, ex["project"], "db").message == (
        "db is pinned to 15: there is no tag to choose")
    refused(NotFound, deployments.step_tags, ex["project"], "cache")


def test_a_clone_keeps_the_source_s_tags_unless_changed(ex, tagged):
    source = deployments.create(ex["writer"], ex["project"], ex["environment"], "d1", {"web": "v1.0"})
    same = deployments.clone(ex["writer"], source, "d2")
    changed = deployments.clone(ex["writer"], source, "d3", {"web": "v1.1"})
    assert (same.tags, changed.tags) == ({"web": "v1.0", "db": "15"}, {"web": "v1.1", "db": "15"})
    assert refused(ValidationFailed, deployments.clone, ex["writer"], source, "d4",
                   {"web": "features-login"}).fields == {"tags.web": "must match v*"}


# --- clone --------------------------------------------------------------------------------------
def test_a_clone_uses_the_latest_pipeline_and_is_recorded_on_both(ex, version, node):
    source = add_deployment(version, ex["environment"], node, "source", status="failed")
    pipeline_version(ex["project"], [service_step("web", tag="2.0"), service_step("api", tag="3")])
    clone = deployments.clone(ex["writer"], source, "source-copy")
    assert (clone.project_id, clone.environment_id, clone.cloned_from_id) == (
        source.project_id, source.environment_id, source.id)
    assert clone.pipeline_version.number == 2 and clone.tags == {"web": "2.0", "api": "3"}
    assert [e.kind for e in events(source)] == ["cloned"]
    assert events(source)[0].data == {"clone_id": clone.id}
    assert events(clone)[0].message.startswith("created by se-bob as a clone of source on node-1")


def test_a_clone_is_validated_like_a_create(ex, version, node):
    source = add_deployment(version, ex["environment"], node, "source")
    refused(Conflict, deployments.clone, ex["writer"], source, "source")
    refused(ValidationFailed, deployments.clone, ex["writer"], source, "Bad Name")
    refused(ValidationFailed, deployments.clone, ex["writer"], source, "copy", {"web": "9"})
    refused(Forbidden, deployments.clone, ex["reader"], source, "copy")


# --- retry --------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", ["pending", "deploying", "ready", "degraded", "offline",
                                    "deleting", "cleanup_failed", "deleted"])
def test_only_a_failed_deployment_can_be_retried(ex, version, node, status):
    deployment = add_deployment(version, ex["environment"], node, "d1", status=status)
    error = refused(Conflict, deployments.retry, ex["writer"], deployment)
    assert error.message == f"only a failed deployment can be retried; d1 is {status}"


def test_a_retry_refreshes_pinned_tags_keeps_chosen_ones_and_starts_over(ex, node):
    old = pipeline_version(ex["project"], [service_step("web", mode="selectable", pattern="v*"),
                                           service_step("db", tag="14")])
    deployment = add_deployment(old, ex["environment"], node, "d1", status="failed", run_id="run-1",
                                idle_minutes=30, tags={"web": "v1.0", "db": "14"},
                                progress={"db": "failed"})
    latest = pipeline_version(ex["project"], [service_step("web", mode="selectable", pattern="v1.*"),
                                              service_step("db", tag="15")])
    deployments.retry(ex["writer"], deployment)
    assert (deployment.status, deployment.pipeline_version_id, deployment.run_id) == (
        "pending", latest.id, None)
    assert deployment.tags == {"web": "v1.0", "db": "15"} and deployment.progress == {}
    assert abs((utcnow() - deployment.last_activity_at).total_seconds()) < 5
    assert deployment.node_id == node.id
    assert [e.kind for e in events(deployment)] == ["retried"]


def test_a_retry_is_refused_when_the_selectable_steps_changed(ex, node):
    old = pipeline_version(ex["project"], [service_step("web", tag="1.0")])
    deployment = add_deployment(old, ex["environment"], node, "d1", status="failed")
    pipeline_version(ex["project"], [service_step("web", tag="1.0"),
                                     service_step("api", mode="selectable")])
    error = refused(ValidationFailed, deployments.retry, ex["writer"], deployment)
    assert error.message == ("the pipeline changed since d1 was created (new steps with a tag to "
                             "choose: api); clone it with tags instead of retrying")


def test_a_retry_on_a_disabled_node_is_refused_with_the_way_out(ex, version, node):
    deployment = add_deployment(version, ex["environment"], node, "d1", status="failed")
    node.enabled = False
    db.session.commit()
    error = refused(Conflict, deployments.retry, ex["writer"], deployment)
    assert error.message == ("the node of d1, node-1, is disabled and takes no new deployments; "
                             "clone it to deploy it on another node")
    assert error.fields == {"node": "disabled"} and deployment.status == "failed"


def test_a_retry_on_a_node_that_is_away_stays_there_and_says_so(ex, version, node):
    deployment = add_deployment(version, ex["environment"], node, "d1", status="failed")
    node.status = "offline"
    db.session.commit()
    deployments.retry(ex["writer"], deployment)
    assert deployment.status_message == ("retry requested by se-bob; its node node-1 is offline: "
                                         "the retry stays on it and waits for it")
    gone = add_deployment(version, ex["environment"], None, "d2", status="failed")
    assert "clone it" in refused(Conflict, deployments.retry, ex["writer"], gone).message


# --- delete -------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", ["pending", "deploying", "ready", "degraded", "failed", "offline"])
def test_delete_moves_a_deployment_to_deleting_for_the_controller(ex, version, node, status):
    deployment = add_deployment(version, ex["environment"], node, "d1", status=status,
                                cleanup_attempts=3)
    deployments.request_delete(ex["writer"], deployment)
    assert (deployment.status, deployment.cleanup_attempts, deployment.deleted_at) == ("deleting", 0, None)
    assert deployment.delete_requested_at is not None
    assert deployment.status_message == "deletion requested by se-bob"
    [event] = events(deployment)
    assert (event.kind, event.actor_id, event.data) == ("delete_requested", ex["writer"].id,
                                                        {"status": status})
    entry = db.session.scalar(db.select(AuditEntry).where(AuditEntry.action == "deployment.delete"))
    assert entry.details == {"status": status}


@pytest.mark.parametrize("status", ["deleting", "cleanup_failed", "deleted"])
def test_delete_is_idempotent(ex, version, node, status):
    deployment = add_deployment(version, ex["environment"], node, "d1", status=status)
    before = counts()
    assert deployments.request_delete(ex["writer"], deployment).status == status
    assert counts() == before


def test_a_delete_on_a_node_that_is_away_says_what_it_waits_for(ex, version, node):
    deployment = add_deployment(version, ex["environment"], node, "d1", status="offline")
    node.status = "offline"
    deployments.request_delete(ex["writer"], deployment)
    assert (deployment.status, deployment.status_message) == (
        "deleting", "deletion requested by se-bob; its node node-1 is offline: it is removed and "
                    "checked when the node links again")


def test_a_deployment_whose_node_is_gone_is_deleted_at_once(ex, version):
    deployment = add_deployment(version, ex["environment"], None, "d1", status="ready")
    deployments.request_delete(ex["writer"], deployment)
    assert deployment.status == "deleted" and deployment.deleted_at is not None
    assert [e.kind for e in events(deployment)] == ["delete_requested", "deleted"]


# --- extend and auto-cleanup --------------------------------------------------------------------
def test_extend_resets_the_timer_completely(ex, version, node):
    deployment = add_deployment(version, ex["environment"], node, "d1", idle_minutes=600)
    ex["environment"].cleanup_minutes = 1440
    db.session.commit()
    assert deployments.remaining_seconds(deployment) == pytest.approx((1440 - 600) * 60, abs=5)
    deployments.extend(ex["writer"], deployment)
    assert deployments.remaining_seconds(deployment) == pytest.approx(1440 * 60, abs=5)
    assert [e.kind for e in events(deployment)] == ["extended"]


@pytest.mark.parametrize("status", ["deleting", "cleanup_failed", "deleted"])
def test_a_deployment_being_deleted_cannot_be_extended(ex, version, node, status):
    deployment = add_deployment(version, ex["environment"], node, "d1", status=status)
    assert refused(Conflict, deployments.extend, ex["writer"], deployment).fields == {"status": status}


def test_the_cleanup_period_is_the_project_s_override_else_the_environment_s(ex, version, node):
    deployment = add_deployment(version, ex["environment"], node, "d1")
    ex["environment"].cleanup_minutes = 120
    db.session.commit()
    assert deployments.cleanup_minutes(deployment) == 120
    ex["project"].cleanup_minutes = 30
    db.session.commit()
    assert deployments.cleanup_minutes(deployment) == 30
    now = deployment.last_activity_at + timedelta(minutes=10)
    assert deployments.expires_at(deployment) == deployment.last_activity_at + timedelta(minutes=30)
    assert deployments.remaining_seconds(deployment, now) == 20 * 60
    assert deployments.remaining_seconds(deployment, now + timedelta(days=1)) == 0
    deployment.status = "deleting"
    assert deployments.expires_at(deployment) is None
    assert deployments.remaining_seconds(deployment, now) is None


def test_expire_due_deletes_what_was_inactive_for_its_period(ex, version, node):
    ex["environment"].cleanup_minutes = 60
    ex["project"].cleanup_minutes = None
    billing = pipeline_version(ex["other_project"], [service_step("web")])
    ex["other_project"].cleanup_minutes = 10
    db.session.commit()
    stale = add_deployment(version, ex["environment"], node, "stale", idle_minutes=61)
    fresh = add_deployment(version, ex["environment"], node, "fresh", idle_minutes=59)
    failed = add_deployment(version, ex["environment"], node, "failed", status="failed", idle_minutes=90)
    leaving = add_deployment(version, ex["environment"], node, "leaving", status="deleting",
                             idle_minutes=900)
    short = add_deployment(billing, ex["environment"], node, "short", idle_minutes=11)
    expired = deployments.expire_due()
    assert sorted(d.name for d in expired) == ["failed", "short", "stale"]
    assert (fresh.status, leaving.status) == ("ready", "deleting")
    assert stale.status_message == "auto-cleanup: inactive for 60 minutes"
    assert short.status_message == "auto-cleanup: inactive for 10 minutes"
    [event] = events(failed)
    assert (event.kind, event.actor_id, event.message) == (
        "delete_requested", None, "auto-cleanup: inactive for 60 minutes")
    entry = db.session.scalar(db.select(AuditEntry).where(AuditEntry.action == "deployment.delete",
                                                          AuditEntry.target_id == stale.id))
    assert (entry.actor_username, entry.details["reason"]) == (
        "system", "auto-cleanup: inactive for 60 minutes")
    assert deployments.expire_due() == []
    later = utcnow() + timedelta(minutes=2)
    assert [d.name for d in deployments.expire_due(later)] == ["fresh"]


def test_expire_due_spares_a_deployment_extended_since(ex, version, node):
    deployment = add_deployment(version, ex["environment"], node, "d1",
                                idle_minutes=ex["environment"].cleanup_minutes + 1)
    deployments.extend(ex["writer"], deployment)
    assert deployments.expire_due() == [] and deployment.status == "ready"


def test_expire_due_with_nothing_to_do(app):
    assert deployments.expire_due() == []


# --- the project and environment a deployment belongs to ----------------------------------------
def test_a_project_or_environment_with_live_deployments_cannot_be_deleted(ex, version, node):
    from app.services import catalog

    deployment = deployments.create(ex["writer"], ex["project"], ex["environment"], "pr-1", {})
    for target in (ex["project"], ex["environment"]):
        error = refused(Conflict, catalog.delete, ex["admin"], target)
        assert "1 deployment(s) that are not deleted" in error.message
    deployments.request_delete(ex["writer"], deployment)
    deployment_id = deployment.id
    row = db.session.get(Deployment, deployment_id)
    row.status, row.deleted_at = "deleted", utcnow()   # what the controller does once it checked
    db.session.commit()
    catalog.delete(ex["admin"], ex["project"])          # the deleted deployment's row goes with it
    assert db.session.get(Deployment, deployment_id) is None


# --- the desired state (issue #14.3) ------------------------------------------------------------
def test_what_the_agent_is_sent_stays_as_first_sent_when_the_environment_registry_or_ingress_change(
        ex, node, app, monkeypatch):
    from app.services.specs import apply_params

    local = registry("private", "http://127.0.0.1:5000", USER, PASSWORD)
    version = pipeline_version(ex["project"], [service_step("web", tag="1.4", registry_id=local.id)])
    deployment = add_deployment(version, ex["environment"], node, "d1", status="ready")
    first = apply_params(deployment)
    db.session.commit()
    assert first["deployment"]["urls"]["web"].startswith("http://web.d1.")
    assert first["registries"] == {"private": {"username": USER, "password": PASSWORD}}

    # An admin's routine changes: base domain, the registry's address and name, public port.
    ex["environment"].base_domain = "elsewhere.example"
    local.url, local.name = "http://127.0.0.1:5001", "renamed"
    db.session.commit()
    monkeypatch.setitem(app.config, "NULLOPS_INGRESS_PUBLIC_PORT", 8443)
    db.session.expire_all()
    again = apply_params(db.session.get(Deployment, deployment.id))
    assert again["deployment"] == first["deployment"]  # the same spec: the agent re-runs nothing
    assert again["registries"] == first["registries"]  # credentials still found by the step's registry


def test_a_retry_sends_the_spec_of_the_version_it_retries_with(ex, node):
    from app.services.specs import apply_params

    local = registry("private", "http://127.0.0.1:5000")
    old = pipeline_version(ex["project"], [service_step("web", tag="1.4", registry_id=local.id)])
    deployment = add_deployment(old, ex["environment"], node, "d1", status="failed")
    assert apply_params(deployment)["deployment"]["steps"][0]["image"].endswith(":1.4")
    db.session.commit()
    pipeline_version(ex["project"], [service_step("web", tag="1.5", registry_id=local.id)])
    deployments.retry(ex["writer"], deployment)
    assert apply_params(deployment)["deployment"]["steps"][0]["image"].endswith(":1.5")


# --- ids ----------------------------------------------------------------------------------------
def test_a_deleted_deployment_s_id_and_agent_label_go_to_no_later_deployment_on_sqlite(sqlite_app):
    # SQLite gave the next row the highest id plus one, a deleted row's too: the next deployment
    # took the old one's label (dep-<id>), so a leftover of the old one (a failed cleanup) was
    # taken for the new one's, and the audit log put both under one id. Its pipeline version's
    # id went the same way.
    from app.models import Environment, PipelineVersion, Project
    from app.services import users
    from tests.conftest import STRONG_PASSWORD

    admin = users.create(None, "admin", STRONG_PASSWORD, role="admin")
    environment = catalog.create(admin, Environment, "staging")
    node = add_node(environment, "node-1")
    shop = catalog.create(admin, Project, "shop")
    old_version = pipeline_version(shop, [service_step("web")])
    old = add_deployment(old_version, environment, node, "pr-1", status="deleted")
    old_id, old_label, old_version_id = old.id, old.agent_id, old_version.id
    catalog.delete(admin, shop)   # the deleted deployment's row, and the version's, go with it
    assert db.session.get(Deployment, old_id) is None

    new_version = pipeline_version(catalog.create(admin, Project, "billing"), [service_step("web")])
    new = add_deployment(new_version, environment, node, "pr-1")
    assert new.id > old_id and new.agent_id != old_label
    assert new_version.id > old_version_id
    assert db.session.get(PipelineVersion, old_version_id) is None
