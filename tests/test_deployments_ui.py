"""Deployment pages through the test client: the create form (pinned and selectable tags, the
server's errors next to the form), the page of one deployment (live status, countdown, logs,
history, buttons) and who sees and may press what."""
import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import Deployment, DeploymentEvent
from app.models.types import utcnow
from app.services import deployments
from app.services import registries as registry_service
from tests.access.deployments import (
    add_deployment,
    add_node,
    pipeline_version,
    registry,
    service_step,
)
from tests.conftest import csrf_from


def _post(client, page_url, action, **fields):
    """Submit a form the way the browser does: CSRF token taken from the page it is on."""
    token = csrf_from(client.get(page_url).text)
    return client.post(action, data={"csrf_token": token, **fields})


def _flashes(html):
    return re.findall(r'<p class="flash flash-(\w+)"[^>]*>([^<]*)</p>', html)


def _count(model):
    db.session.expire_all()
    return db.session.scalar(select(func.count()).select_from(model))


def _buttons(html):
    """The page's submit buttons but the navigation's Log out."""
    return [b for b in re.findall(r'<button type="submit"[^>]*>([^<]+)</button>', html) if b != "Log out"]


@pytest.fixture
def shop(spec_example):
    """spec_example plus a pinned-only pipeline version of "shop" and an online node in staging."""
    ex = spec_example
    local = registry()
    version = pipeline_version(ex["project"], [
        service_step("web", tag="1.4", exposed=[8000], registry_id=local.id),
        service_step("db", tag="15", exposed=[], image="postgres", registry_id=local.id)])
    node = add_node(ex["environment"], "node-1")
    return {**ex, "version": version, "node": node, "registry": local}


@pytest.fixture
def selectable(shop, monkeypatch):
    """Version 2 of "shop": web's tag is chosen from the registry (tags listed by a stub)."""
    pipeline_version(shop["project"], [
        service_step("web", mode="selectable", pattern="features-*", exposed=[8000],
                     registry_id=shop["registry"].id),
        service_step("db", tag="15", exposed=[], image="postgres", registry_id=shop["registry"].id)])
    monkeypatch.setattr(registry_service, "list_tags", lambda registry, image, pattern=None: [
        t for t in ("features-login", "features-cart", "v1") if not pattern or t.startswith("features-")])
    return shop


def _deployment(**where):
    db.session.expire_all()
    return db.session.scalar(select(Deployment).filter_by(**where))


def test_writer_creates_a_deployment_through_the_form_and_watches_it(client, login, shop):
    login("se-bob")
    form = client.get(f"/deployments/new?project_id={shop['project'].id}")
    assert form.status_code == 200
    assert re.search(r"<strong>db</strong>: <code>postgres:15</code> <small>\(pinned\)</small>", form.text)
    assert ">staging</option>" in form.text and "billing" not in form.text
    assert "pipeline version 1 of shop" in form.text

    response = _post(client, "/deployments/new", "/deployments/new", project_id=shop["project"].id,
                     environment_id=shop["environment"].id, name="login-fix")
    deployment = _deployment(name="login-fix")
    assert response.status_code == 302
    assert response.headers["Location"] == f"/deployments/{deployment.id}"
    assert (deployment.status, deployment.tags) == ("pending", {"web": "1.4", "db": "15"})

    page = client.get(response.headers["Location"]).text
    assert ("ok", "Deployment login-fix created; it starts on node node-1.") in _flashes(page)
    assert (f'hx-get="/deployments/{deployment.id}/status" hx-trigger="deployment-changed from:body"'
            in page)
    assert f'data-live-url="/api/v1/deployments/{deployment.id}/live"' in page
    assert 'href="http://web.login-fix.staging.localhost"' in page
    assert 'data-testid="deployment-status">pending<' in page
    remaining = int(re.search(r'data-remaining="(\d+)"', page).group(1))
    assert 7 * 24 * 3600 - 60 <= remaining <= 7 * 24 * 3600
    assert _buttons(page) == ["Extend", "Cancel deployment", "Clone"]
    assert "created by se-bob" in page

    listed = client.get("/deployments").text
    row = re.search(r'<tr data-deployment="login-fix">(.*?)</tr>', listed, re.S).group(1)
    assert "shop" in row and "staging" in row and "se-bob" in row and "http://web.login-fix" in row


def test_bad_input_is_shown_next_to_the_form_with_the_servers_message(client, login, shop):
    login("se-bob")
    fields = {"project_id": shop["project"].id, "environment_id": shop["environment"].id}
    bad = _post(client, "/deployments/new", "/deployments/new", **fields, name="Login_Fix;rm")
    assert bad.status_code == 422
    assert 'data-testid="form-error">name is invalid: use a DNS label' in bad.text
    assert 'value="Login_Fix;rm"' in bad.text and 'aria-invalid="true"' in bad.text

    add_deployment(shop["version"], shop["environment"], shop["node"], "taken")
    taken = _post(client, "/deployments/new", "/deployments/new", **fields, name="taken")
    assert taken.status_code == 409
    assert "a deployment named &#39;taken&#39; exists in staging" in taken.text
    assert '<span class="field-error">already taken in staging</span>' in taken.text

    shop["node"].status = "offline"
    db.session.commit()
    full = _post(client, "/deployments/new", "/deployments/new", **fields, name="fresh")
    assert full.status_code == 409 and "no online node in staging takes new deployments" in full.text
    assert _count(Deployment) == 1


def test_selectable_steps_get_a_tag_select_fed_by_the_tags_route(client, login, selectable):
    ex = selectable
    login("se-bob")
    form = client.get("/deployments/new").text
    url = f"/api/v1/projects/{ex['project'].id}/steps/web/tags"
    assert re.search(rf'<select name="tag-web" data-tags-url="{url}"', form)
    assert "tags matching <code>features-*</code>" in form
    assert client.get(url).get_json()["tags"] == ["features-login", "features-cart"]

    fields = {"project_id": ex["project"].id, "environment_id": ex["environment"].id}
    missing = _post(client, "/deployments/new", "/deployments/new", **fields, name="no-tag")
    assert missing.status_code == 422 and "web needs a tag: choose one matching features-*" in missing.text
    assert 'class="tags-problem" role="alert">required: choose a tag<' in missing.text

    made = _post(client, "/deployments/new", "/deployments/new", **fields, name="cart",
                 **{"tag-web": "features-cart"})
    assert made.status_code == 302
    assert _deployment(name="cart").tags == {"web": "features-cart", "db": "15"}


def test_read_only_member_sees_deployments_but_no_change_buttons(client, login, shop):
    deployment = add_deployment(shop["version"], shop["environment"], shop["node"], "shared")
    login("qa-anna")
    listed = client.get("/deployments").text
    assert 'data-deployment="shared"' in listed and "New deployment" not in listed
    for url in (f"/deployments/{deployment.id}", f"/deployments/{deployment.id}/status"):
        page = client.get(url)
        assert page.status_code == 200 and ">shared <span" in page.text
        assert _buttons(page.text) == []
        assert "data-confirm" not in page.text and "/clone" not in page.text
    new = client.get("/deployments/new").text
    assert 'data-testid="no-deploy-rights"' in new and 'action="/deployments/new"' not in new


def test_read_only_member_cannot_change_a_deployment(client, login, shop):
    ready = add_deployment(shop["version"], shop["environment"], shop["node"], "shared")
    failed = add_deployment(shop["version"], shop["environment"], shop["node"], "broken",
                            status="failed", idle_minutes=30)
    login("qa-anna")
    for deployment, action, fields in ((ready, "extend", {}), (ready, "delete", {}),
                                       (failed, "retry", {}), (ready, "clone", {"name": "mine"})):
        page = f"/deployments/{deployment.id}"
        refused = _post(client, page, f"{page}/{action}", **fields)
        assert refused.status_code == 403, action
        if action != "clone":  # the refusal names what was asked, not "deploy" for a delete
            assert f"you may not {action} this deployment; ask an admin" in refused.text, action
    created = _post(client, "/deployments", "/deployments/new", project_id=shop["project"].id,
                    environment_id=shop["environment"].id, name="mine")
    assert created.status_code == 403 and "you may not deploy shop to staging" in created.text
    assert [(d.name, d.status) for d in db.session.scalars(select(Deployment).order_by(Deployment.id))] == [
        ("shared", "ready"), ("broken", "failed")]
    assert _count(DeploymentEvent) == 0
    assert _deployment(name="broken").last_activity_at < utcnow() - timedelta(minutes=29)


def test_outsider_gets_not_found_for_every_deployment_page(client, login, shop):
    deployment = add_deployment(shop["version"], shop["environment"], shop["node"], "shared")
    login("nobody")
    assert 'data-deployment="shared"' not in client.get("/deployments").text
    page = f"/deployments/{deployment.id}"
    assert client.get(page).status_code == 404
    assert client.get(f"{page}/status").status_code == 404
    for action in ("extend", "delete", "retry", "clone"):
        assert _post(client, "/deployments", f"{page}/{action}", name="x").status_code == 404
    assert _deployment(name="shared").status == "ready"


def test_writer_retries_extends_clones_and_deletes(client, login, shop):
    failed = add_deployment(shop["version"], shop["environment"], shop["node"], "broken",
                            status="failed", idle_minutes=60, status_message="db did not get ready")
    login("se-bob")
    page = f"/deployments/{failed.id}"
    html = client.get(page).text
    assert "db did not get ready" in html
    assert _buttons(html)[:3] == ["Extend", "Retry", "Delete"]
    assert 'data-testid="health-web" data-health="stopped"' in html

    _post(client, page, f"{page}/retry")
    assert _deployment(name="broken").status == "pending"
    _post(client, page, f"{page}/extend")
    assert _deployment(name="broken").last_activity_at > utcnow() - timedelta(minutes=1)
    assert ("ok", "Deployment broken extended: the auto-cleanup timer starts over.") in _flashes(
        client.get(page).text)

    cloned = _post(client, page, f"{page}/clone", name="broken-copy")
    copy = _deployment(name="broken-copy")
    assert cloned.headers["Location"] == f"/deployments/{copy.id}" and copy.cloned_from_id == failed.id

    form = re.search(rf'<form method="post" action="{page}/delete"[^>]*>', client.get(page).text).group(0)
    assert 'data-confirm="Cancel deployment broken?' in form
    _post(client, page, f"{page}/delete")
    html = client.get(page).text
    assert _deployment(name="broken").status == "deleting"
    assert "Deployment broken cancelled" in html
    assert f'hx-get="/deployments/{failed.id}/status" hx-trigger="deployment-changed from:body"' in html
    assert _buttons(html) == ["Clone"]
    kinds = [e.kind for e in db.session.scalars(select(DeploymentEvent).where(
        DeploymentEvent.deployment_id == failed.id).order_by(DeploymentEvent.id))]
    assert kinds == ["retried", "extended", "cloned", "delete_requested"]


def test_a_failed_deployment_on_a_disabled_node_offers_clone_not_retry(client, login, shop):
    failed = add_deployment(shop["version"], shop["environment"], shop["node"], "broken", status="failed")
    shop["node"].enabled = False
    db.session.commit()
    login("se-bob")
    html = client.get(f"/deployments/{failed.id}").text
    assert "Retry" not in _buttons(html) and "Clone" in _buttons(html)
    assert "Its node node-1 is disabled: clone it to deploy it again." in html


def test_a_failed_action_is_flashed_on_the_deployment_page(client, login, shop):
    ready = add_deployment(shop["version"], shop["environment"], shop["node"], "shared")
    login("se-bob")
    page = f"/deployments/{ready.id}"
    response = _post(client, page, f"{page}/retry")
    assert response.headers["Location"] == page
    assert ("error", "only a failed deployment can be retried; shared is ready") in _flashes(
        client.get(page).text)
    taken = _post(client, page, f"{page}/clone", name="shared")
    assert taken.headers["Location"] == page and _count(Deployment) == 1


def test_the_page_parts_reload_on_a_live_change_until_the_deployment_is_deleted(client, login, shop):
    """The island polls the live state (tests/test_deployment_live_api.py) and fires
    deployment-changed; the head and the steps and history come again through htmx then."""
    login("se-bob")
    for status, follows in (("pending", True), ("deploying", True), ("ready", True),
                            ("failed", True), ("deleting", True), ("deleted", False)):
        deployment = add_deployment(shop["version"], shop["environment"], shop["node"], status,
                                    status=status, progress={"db": "done", "web": "running"})
        for part, root in (("status", '<div id="deployment-live"'),
                           ("history", '<section id="deployment-history"')):
            fragment = client.get(f"/deployments/{deployment.id}/{part}").text
            assert root in fragment and "<html" not in fragment
            assert ('hx-trigger="deployment-changed from:body"' in fragment) is follows, status
        assert re.search(r'data-step="web">.*?step-progress">running<', fragment, re.S)
        page = client.get(f"/deployments/{deployment.id}").text
        assert ('data-live-url=' in page) and 'id="deployment-graph"' in page


def test_logs_panel_per_service_or_why_there_are_none(client, login, shop):
    deployment = add_deployment(shop["version"], shop["environment"], shop["node"], "shared")
    login("qa-anna")
    page = f"/deployments/{deployment.id}"
    html = client.get(page).text
    assert f'data-logs-url="/api/v1/deployments/{deployment.id}/logs?step=web&amp;tail=200"' in html
    assert 'data-logs-url' in html and html.count('class="logs-panel"') == 2
    shop["node"].status = "offline"
    db.session.commit()
    html = client.get(page).text
    assert "Logs and metrics unavailable: node offline (node-1 is offline)." in html
    assert html.count('class="logs-panel"') == 2  # it may come back while the page is open
    deployment.status, deployment.deleted_at = "deleted", utcnow()
    db.session.commit()
    html = client.get(page).text
    assert "Logs and metrics unavailable: the deployment is deleted." in html
    assert 'class="logs-panel"' not in html


def test_list_filters_pages_and_hides_deleted_ones(client, login, shop):
    for i in range(27):
        add_deployment(shop["version"], shop["environment"], shop["node"], f"d{i:02}",
                       status="failed" if i % 9 == 0 else "ready")
    add_deployment(shop["version"], shop["environment"], shop["node"], "gone", status="deleted")
    login("se-bob")
    first = client.get("/deployments").text
    assert first.count("<tr data-deployment=") == 25 and "Page 1 of 2 · 27 deployments" in first
    second = client.get("/deployments?page=2").text
    assert second.count("<tr data-deployment=") == 2 and 'rel="prev"' in second
    failed = client.get("/deployments?status=failed").text
    assert re.findall(r'data-deployment="(\w+)"', failed) == ["d18", "d09", "d00"]
    assert re.findall(r'data-deployment="(\w+)"', client.get("/deployments?status=deleted").text) == ["gone"]
    other = client.get(f"/deployments?project={shop['other_project'].id}").text
    assert "No deployments match these filters." in other
    assert 'New deployment</a>' in first


def test_history_shows_the_latest_fifty_events(client, login, shop):
    deployment = add_deployment(shop["version"], shop["environment"], shop["node"], "shared")
    for i in range(55):
        deployments.record_event(deployment, "extended", shop["writer"], f"event {i}")
    db.session.commit()
    login("qa-anna")
    html = client.get(f"/deployments/{deployment.id}").text
    history = re.search(r'<table class="history">(.*?)</table>', html, re.S).group(1)
    assert history.count("<tr><td>") == 50
    assert "event 54" in history and "event 4<" not in history and "se-bob" in history
    assert "The latest 50 events." in html


def test_a_deployment_whose_cleanup_failed_offers_no_delete_that_would_do_nothing(client, login, shop):
    deployment = add_deployment(shop["version"], shop["environment"], shop["node"], "stuck",
                                status="cleanup_failed", status_message="a network is left")
    login("se-bob")
    html = client.get(f"/deployments/{deployment.id}").text
    assert "Removal is retried by itself" in html and "a network is left" in html
    assert _buttons(html) == ["Clone"]
    assert 'data-testid="countdown"' not in html


def test_the_overview_shows_the_users_own_newest_deployments_and_a_few_projects(client, login, shop):
    from app.models import Project

    for i in range(20):
        db.session.add(Project(name=f"extra-{i:02d}"))
    db.session.commit()
    mine = add_deployment(shop["version"], shop["environment"], shop["node"], "mine",
                          created_by_id=shop["writer"].id)
    add_deployment(shop["version"], shop["environment"], shop["node"], "gone", status="deleted",
                   created_by_id=shop["writer"].id)
    add_deployment(shop["version"], shop["environment"], shop["node"], "theirs",
                   created_by_id=shop["admin"].id)
    login("se-bob")
    page = client.get("/").text
    section = page[page.index('data-testid="my-deployments"'):page.index("<h2>Projects</h2>")]
    assert f'href="/deployments/{mine.id}"' in section
    assert "gone" not in section and "theirs" not in section
    assert "New deployment" in section
    client.post("/logout", data={"csrf_token": csrf_from(page)})
    login("admin")
    page = client.get("/").text
    assert page.count("title=\"Pipeline of ") == 15  # 22 projects: the first 15 by name
    assert "and 7 more." in page
