"""Issue 17 item 5: what anonymous visitors and read-only viewers must not read: a failed
deployment's status message on the public ingress page, a node's host:port in its status
reason."""
import pytest

from app.extensions import db
from app.ingress.caddy import PAGE_PATH
from app.models import Deployment, Node, PipelineVersion

LEAK = "pull failed: registry.internal:5000/shop/web:1 unauthorized (plugin stderr: pw=hunter2)"
RESOLVED = {"steps": [
    {"id": "web", "kind": "service", "registry_id": 1, "image": "shop/web", "tag_mode": "pinned",
     "tag": "1", "ports": [8000], "exposed_ports": [8000], "depends_on": []},
]}


@pytest.fixture
def failed_deployment(spec_example):
    ex = spec_example
    ex["environment"].base_domain = "ingress.test"
    version = PipelineVersion(project_id=ex["project"].id, number=1, definition={}, resolved=RESOLVED)
    db.session.add(version)
    db.session.flush()
    row = Deployment(name="pr-1", project_id=ex["project"].id, environment_id=ex["environment"].id,
                     pipeline_version_id=version.id, tags={}, cpus=0.5, memory_mb=128,
                     status="failed", status_message=LEAK)
    db.session.add(row)
    db.session.commit()
    return row


def test_public_ingress_page_hides_a_failed_deployments_status_message(client, failed_deployment):
    page = client.get(PAGE_PATH, headers={"Host": "web.pr-1.staging.ingress.test"})
    assert page.status_code == 503
    assert "failed" in page.text
    assert "registry.internal" not in page.text and "hunter2" not in page.text
    assert "log in to NullOps" in page.text


def test_public_ingress_page_links_to_the_login_when_nullops_public_url_is_set(
        app, client, failed_deployment, monkeypatch):
    monkeypatch.setitem(app.config, "NULLOPS_PUBLIC_URL", "https://nullops.example.com")
    page = client.get(PAGE_PATH, headers={"Host": "web.pr-1.staging.ingress.test"})
    assert (f'href="https://nullops.example.com/login?next=/deployments/{failed_deployment.id}"'
            in page.text)


@pytest.fixture
def unreachable_node(spec_example):
    node = Node(environment_id=spec_example["environment"].id, name="node-1", host="10.9.8.7",
                port=5123, status="offline",
                status_reason="connection refused at 10.9.8.7:5123: is the agent running?")
    db.session.add(node)
    db.session.commit()
    return node


def test_read_only_viewer_does_not_see_the_nodes_address_in_its_status_reason(
        client, spec_example, bearer, unreachable_node):
    reader = bearer(spec_example["reader"])
    for path in (f"/api/v1/nodes/{unreachable_node.id}",
                 f"/api/v1/environments/{spec_example['environment'].id}/nodes"):
        text = client.get(path, headers=reader).text
        assert "10.9.8.7" not in text and "5123" not in text, path
        assert "connection refused at the node's address" in text


def test_an_admin_still_sees_the_nodes_address_in_its_status_reason(
        client, spec_example, bearer, unreachable_node):
    node = client.get(f"/api/v1/nodes/{unreachable_node.id}", headers=bearer(spec_example["admin"]))
    assert node.json["status_reason"] == "connection refused at 10.9.8.7:5123: is the agent running?"


def test_read_only_viewer_does_not_see_the_nodes_address_on_the_environment_page(
        client, spec_example, login, unreachable_node):
    login("qa-anna")
    page = client.get(f"/environments/{spec_example['environment'].id}")
    assert page.status_code == 200
    assert "connection refused at the node&#39;s address" in page.text or \
        "connection refused at the node's address" in page.text
    assert "10.9.8.7" not in page.text
