"""Environment and node pages through the test client: forms, the token shown once, and what
members without admin rights see and may do."""
import base64
import html
import re
import zlib

import pytest
from sqlalchemy import select

from agent.protocol import verifier_for
from app.extensions import db
from app.models import Environment, Node, Project
from app.services import catalog, nodes
from tests.access.deployments import add_deployment, pipeline_version, service_step
from tests.conftest import csrf_from


def _post(client, page_url, action, **fields):
    """Submit a form the way the browser does: CSRF token taken from the page it is on."""
    token = csrf_from(client.get(page_url).text)
    return client.post(action, data={"csrf_token": token, **fields})


def _flashes(html):
    return re.findall(r'<p class="flash flash-(\w+)"[^>]*>([^<]*)</p>', html)


def _cookie_text(client):
    """The session cookie's payload as anyone holding the cookie can read it (Flask signs the
    session, it does not encrypt it; a leading '.' marks a zlib-compressed payload)."""
    raw = client.get_cookie("session").value
    body = raw.lstrip(".").split(".")[0]
    data = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    return (zlib.decompress(data) if raw.startswith(".") else data).decode()


@pytest.fixture
def as_admin(client, admin, login):
    login("admin")
    return client


def test_the_environment_form_shows_deployment_urls_as_people_type_them(as_admin, app, monkeypatch):
    monkeypatch.setitem(app.config, "NULLOPS_INGRESS_LISTEN", "127.0.0.1:8081")
    page = as_admin.get("/environments").text
    form = "http://&lt;service&gt;.&lt;deployment&gt;.&lt;environment&gt;.&lt;base domain&gt;:8081"
    assert f"<code>{form}</code>" in page


def _problem(html_text):
    """The refused form's message and the fields it names (ui/_forms.html form_problem)."""
    found = re.search(r'data-testid="form-error">\s*<p class="flash flash-error">([^<]*)</p>', html_text)
    return (found.group(1) if found else None,
            re.findall(r'<li data-field="(\w+)">', html_text))


def test_admin_creates_an_environment_and_bad_values_are_shown_with_the_form(as_admin):
    client = as_admin
    response = _post(client, "/environments", "/environments", name="staging",
                     base_domain="staging.example.com", cleanup_minutes="60", description="QA")
    environment = db.session.scalar(select(Environment))
    assert response.headers["Location"] == f"/environments/{environment.id}"
    assert (environment.base_domain, environment.cleanup_minutes) == ("staging.example.com", 60)

    # Bad input: the form again with what was typed, the problem named by field, the
    # service's status (not a 302 and a flash), and nothing written.
    bad = _post(client, "/environments", "/environments", name="dev", base_domain="http://x",
                cleanup_minutes="60")
    assert bad.status_code == 422
    assert _problem(bad.text) == (
        "base_domain is invalid: use a DNS name of at most 200 characters: lowercase labels of "
        "letters, digits or &#39;-&#39; joined by dots, e.g. staging.example.com or localhost",
        ["base_domain"])
    assert 'value="http://x"' in bad.text and 'value="dev"' in bad.text
    not_a_number = _post(client, "/environments", "/environments", name="dev", base_domain="x.io",
                         cleanup_minutes="soon")
    assert not_a_number.status_code == 422
    message, fields = _problem(not_a_number.text)
    assert message.startswith("Auto-cleanup after (minutes of inactivity): ")
    assert fields == ["cleanup_minutes"]
    assert db.session.scalar(select(db.func.count()).select_from(Environment)) == 1

    page = f"/environments/{environment.id}"
    _post(client, page, f"{page}/settings", base_domain="localhost", cleanup_minutes="5",
          description="QA", cpu_overcommit="4")
    db.session.refresh(environment)
    assert (environment.base_domain, environment.cleanup_minutes, environment.cpu_overcommit) == (
        "localhost", 5, 4.0)


def test_adding_a_node_shows_token_and_command_once_and_never_in_clear_in_the_cookie(as_admin, admin):
    client = as_admin
    environment = catalog.create(admin, Environment, "staging")
    page = f"/environments/{environment.id}"
    response = _post(client, page, f"{page}/nodes", name="node-1", host="10.0.0.5", port="5000")
    node = db.session.scalar(select(Node))
    assert response.headers["Location"] == f"/nodes/{node.id}"
    shown = client.get(f"/nodes/{node.id}")
    assert shown.headers["Cache-Control"] == "no-store"
    token = re.search(r'data-testid="node-token">([^<]+)<', shown.text).group(1)
    command = re.search(r'data-testid="node-command">([^<]+)<', shown.text).group(1)
    assert html.unescape(command) == nodes.agent_command(node) and token not in command
    assert nodes.reveal_verifier(node) == verifier_for(token)
    again = client.get(f"/nodes/{node.id}")
    assert token not in again.text and 'data-testid="node-token"' not in again.text

    # Rotation: a confirm dialog in the browser, then the new token once.
    _post(client, f"/nodes/{node.id}", f"/nodes/{node.id}/rotate-token")
    assert token not in _cookie_text(client)
    rotated = client.get(f"/nodes/{node.id}")
    new_token = re.search(r'data-testid="node-token">([^<]+)<', rotated.text).group(1)
    assert new_token != token and "receives the new token over its link" in rotated.text
    assert 'data-testid="node-token"' not in client.get(f"/nodes/{node.id}").text


def test_the_shown_once_token_is_encrypted_in_the_session_cookie(as_admin, admin):
    client = as_admin
    environment = catalog.create(admin, Environment, "staging")
    page = f"/environments/{environment.id}"
    _post(client, page, f"{page}/nodes", name="node-1", host="10.0.0.5", port="5000")
    cookie = _cookie_text(client)
    assert "nlk1:" in cookie and "AGENT_TOKEN" not in cookie and "docker run" not in cookie


def test_the_token_of_one_node_is_not_shown_on_another_nodes_page(as_admin, admin):
    client = as_admin
    environment = catalog.create(admin, Environment, "staging")
    other, _token, _command = nodes.add(admin, environment, "node-0", "10.0.0.4")
    page = f"/environments/{environment.id}"
    _post(client, page, f"{page}/nodes", name="node-1", host="10.0.0.5", port="5000")
    assert 'data-testid="node-token"' not in client.get(f"/nodes/{other.id}").text


def test_bad_node_input_is_shown_with_the_form_and_nothing_is_added(as_admin, admin):
    client = as_admin
    environment = catalog.create(admin, Environment, "staging")
    page = f"/environments/{environment.id}"
    for fields, message in (
        ({"name": "node-1", "host": "http://10.0.0.5", "port": "5000"}, "leave out the scheme"),
        ({"name": "node-1", "host": "10.0.0.5", "port": "0"}, "port is invalid"),
        ({"name": "node-1", "host": "10.0.0.5", "port": "x"}, "Agent port: "),
    ):
        response = _post(client, page, f"{page}/nodes", **fields)
        assert response.status_code == 422, response.status_code
        problem, named = _problem(response.text)
        assert message in problem and named in (["host"], ["port"]), (problem, named)
        assert f'value="{fields["host"]}"' in response.text
    assert db.session.scalar(select(db.func.count()).select_from(Node)) == 0


def test_admin_approves_a_changed_certificate_by_typing_its_thumbprint(as_admin, admin):
    client = as_admin
    environment = catalog.create(admin, Environment, "staging")
    node, _token, _command = nodes.add(admin, environment, "node-1", "10.0.0.5")
    node.thumbprint, node.pending_thumbprint, node.status = "a" * 64, "b" * 64, "untrusted"
    db.session.commit()
    url = f"/nodes/{node.id}"
    page = client.get(url).text
    assert 'data-testid="thumbprint-pinned">' + "a" * 64 in page
    assert 'data-testid="thumbprint-pending">' + "b" * 64 in page
    wrong = _post(client, url, f"{url}/approve-thumbprint", thumbprint="c" * 64)
    assert wrong.status_code in (409, 422)
    assert "does not match" in _problem(wrong.text)[0]
    _post(client, url, f"{url}/approve-thumbprint", thumbprint="b" * 64)
    after = client.get(url).text
    assert ("ok", "The new certificate of node node-1 is trusted; reconnecting.") in _flashes(after)
    assert "thumbprint-pending" not in after
    db.session.refresh(node)
    assert (node.status, node.thumbprint) == ("offline", "b" * 64)


def test_revoke_disable_enable_settings_and_delete_from_the_node_page(as_admin, admin):
    client = as_admin
    environment = catalog.create(admin, Environment, "staging")
    node, _token, _command = nodes.add(admin, environment, "node-1", "10.0.0.5")
    url = f"/nodes/{node.id}"
    _post(client, url, f"{url}/disable")
    db.session.refresh(node)
    assert node.status == "disabled"
    _post(client, url, f"{url}/enable")
    db.session.refresh(node)
    assert node.status == "pending"
    assert "as the environment: 16.0" in client.get(url).text
    _post(client, url, f"{url}/settings", host="node-1.internal", port="5001", cpus_override="2.5",
          memory_mb_override="", cpu_overcommit="3", memory_reserve_mb="1024")
    db.session.refresh(node)
    assert (node.host, node.port, node.cpus_override, node.memory_mb_override, node.cpu_overcommit,
            node.memory_reserve_mb) == ("node-1.internal", 5001, 2.5, None, 3.0, 1024)
    _post(client, url, f"{url}/settings", host="node-1.internal", port="5001", cpus_override="2.5",
          memory_mb_override="", cpu_overcommit="", memory_reserve_mb="1024")
    db.session.refresh(node)
    assert node.cpu_overcommit is None   # empty: the environment's ratio
    _post(client, url, f"{url}/revoke-token")
    db.session.refresh(node)
    assert node.status == "revoked" and node.verifier_ciphertext is None
    response = _post(client, url, f"{url}/delete")
    assert response.headers["Location"] == f"/environments/{environment.id}"
    assert db.session.scalar(select(db.func.count()).select_from(Node)) == 0


def test_a_disabled_node_with_deployments_left_is_shown_draining(as_admin, admin):
    environment = catalog.create(admin, Environment, "staging")
    node, _token, _command = nodes.add(admin, environment, "node-1", "10.0.0.5")
    node.status = "online"
    project = catalog.create(admin, Project, "shop")
    add_deployment(pipeline_version(project, [service_step("web")]), environment, node, "pr-1")
    assert 'data-testid="node-draining"' not in as_admin.get(f"/nodes/{node.id}").text
    _post(as_admin, f"/nodes/{node.id}", f"/nodes/{node.id}/disable")
    for page in (f"/nodes/{node.id}", f"/environments/{environment.id}"):
        html = as_admin.get(page).text
        assert 'data-testid="node-status">online<' in html and 'data-testid="node-draining"' in html


def test_a_node_holding_deployments_is_deleted_from_its_page_only_anyway(as_admin, admin):
    environment = catalog.create(admin, Environment, "staging")
    node, _token, _command = nodes.add(admin, environment, "node-1", "10.0.0.5")
    project = catalog.create(admin, Project, "shop")
    add_deployment(pipeline_version(project, [service_step("web")]), environment, node, "pr-1")
    url = f"/nodes/{node.id}"
    page = as_admin.get(url).text
    assert 'data-testid="node-holds-deployments"' in page and "Delete node anyway" in page
    _post(as_admin, url, f"{url}/delete")   # the plain form, as an old page would send it
    assert ("error", "node node-1 still holds 1 deployment (pr-1): delete them first and wait until "
            "they are gone (disable the node so no new ones arrive); if its host is gone for good, "
            "delete the node with force, which records them as deleted without checking the "
            "host") in _flashes(as_admin.get(url).text)
    _post(as_admin, url, f"{url}/delete", force="1")
    assert db.session.scalar(select(db.func.count()).select_from(Node)) == 0


def test_members_see_their_environments_nodes_without_addresses_or_buttons(client, spec_example, login):
    ex = spec_example
    node, _token, _command = nodes.add(ex["admin"], ex["environment"], "node-1", "10.0.0.5")
    hidden_env = catalog.create(ex["admin"], Environment, "secret-env")
    hidden, _token, _command = nodes.add(ex["admin"], hidden_env, "node-9", "10.0.0.9")
    login("qa-anna")
    listing = client.get("/environments").text
    assert "staging" in listing and "secret-env" not in listing and "New environment" not in listing
    environment = client.get(f"/environments/{ex['environment'].id}").text
    assert "node-1" in environment and 'status-pending' in environment
    assert "Add node" not in environment and "Save settings" not in environment
    detail = client.get(f"/nodes/{node.id}")
    assert detail.status_code == 200
    assert "10.0.0.5" not in detail.text and "Rotate token" not in detail.text
    assert client.get(f"/nodes/{hidden.id}").status_code == 404
    assert client.get(f"/environments/{hidden_env.id}").status_code == 404

    # Posting anyway is refused with the 403 page (not a flash on a redirect) and changes nothing.
    ciphertext = node.verifier_ciphertext
    revoke = _post(client, f"/nodes/{node.id}", f"/nodes/{node.id}/revoke-token")
    assert revoke.status_code == 403
    assert "you may not revoke the token of this node; ask an admin for access" in revoke.text
    refused = client.post(f"/environments/{ex['environment'].id}/nodes", data={
        "csrf_token": csrf_from(detail.text), "name": "x", "host": "10.0.0.1", "port": "5000",
    })
    assert refused.status_code == 403
    assert "you may not create this node; ask an admin for access" in refused.text
    db.session.expire_all()
    assert db.session.get(Node, node.id).verifier_ciphertext == ciphertext
    assert db.session.scalar(select(db.func.count()).select_from(Node)) == 2


def test_the_nav_links_to_environments(client, make_user, login):
    make_user("anna")
    login("anna")
    assert '<a href="/environments">Environments</a>' in client.get("/").text


def test_an_environment_with_many_nodes_lists_them_a_page_at_a_time_with_counts(as_admin, admin):
    environment = Environment(name="big", base_domain="big.example.com")
    db.session.add(environment)
    db.session.flush()
    db.session.add_all([Node(environment_id=environment.id, name=f"node-{i:03d}", host="10.0.0.1", port=5000,
                             status="online" if i % 4 else "offline") for i in range(120)])
    db.session.commit()
    first = as_admin.get(f"/environments/{environment.id}").get_data(as_text=True)
    assert first.count('<tr data-node="') == 25
    assert 'data-node="node-000"' in first and 'data-node="node-025"' not in first
    assert "120 nodes: 30 offline, 90 online." in " ".join(first.split())
    assert "Page 1 of 5 · 120 nodes" in first
    last = as_admin.get(f"/environments/{environment.id}?page=5").get_data(as_text=True)
    assert last.count('<tr data-node="') == 20 and 'data-node="node-119"' in last
    listing = as_admin.get("/environments").get_data(as_text=True)
    assert "90 online of 120" in listing
