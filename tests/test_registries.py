"""Registries: CRUD through /api/v1 with write-only credentials, and tag listing against a real
registry (Debian's docker-registry with htpasswd basic auth) and a small local server that
speaks the bearer-token challenge flow and paginates with `Link` headers."""
import base64
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from docker.errors import ImageNotFound
from flask_migrate import upgrade
from sqlalchemy import select

from app import create_app
from app.config import TestConfig
from app.extensions import db
from app.models import AuditEntry, Registry
from app.models.registries import DOCKER_HUB_NAME, DOCKER_HUB_URL
from app.services import registries
from app.services.errors import Conflict, ValidationFailed
from app.services.registries import RegistryDenied, RegistryUnreachable, RepositoryNotFound
from tests.dockertools import htpasswd_registry

USER, PASSWORD = "puller", "registry-secret-PW-987"
PUSHED_TAGS = ("features-login", "features-search", "v1.2.0", "v1.3.0", "1.2.5")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def _fresh_cache():
    registries.clear_cache()
    yield
    registries.clear_cache()


@pytest.fixture
def headers(admin, bearer):
    return bearer(admin)


# --- a fake registry: bearer tokens and pagination ---------------------------------------------
class FakeRegistry:
    """Answers /v2/<repo>/tags/list with 401 + a Bearer challenge until given the token its
    /token endpoint hands out (to the right basic credentials, if `credentials` is set), then
    serves `tags` `page_size` at a time with `Link: <...>; rel="next"`."""

    TOKEN = "fake-bearer-token-42"

    def __init__(self, tags, page_size=3, credentials=None):
        self.tags, self.page_size, self.credentials = list(tags), page_size, credentials
        self.requests = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                fake.requests.append((self.path, dict(self.headers)))
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                if parts.path == "/token":
                    return self._token(query)
                if not (parts.path.startswith("/v2/") and parts.path.endswith("/tags/list")):
                    return self._send(404, {"errors": [{"code": "NOT_FOUND"}]})
                repo = parts.path[len("/v2/"):-len("/tags/list")]
                if self.headers.get("Authorization") != f"Bearer {fake.TOKEN}":
                    challenge = (f'Bearer realm="http://127.0.0.1:{fake.port}/token",service="test",'
                                 f'scope="repository:{repo}:pull"')
                    return self._send(401, {"errors": [{"code": "UNAUTHORIZED"}]},
                                      {"WWW-Authenticate": challenge})
                if repo != "team/app":
                    return self._send(404, {"errors": [{"code": "NAME_UNKNOWN"}]})
                last = query.get("last", [None])[0]
                start = fake.tags.index(last) + 1 if last else 0
                page = fake.tags[start:start + fake.page_size]
                extra = {}
                if start + fake.page_size < len(fake.tags):
                    extra["Link"] = f'</v2/{repo}/tags/list?n={fake.page_size}&last={page[-1]}>; rel="next"'
                return self._send(200, {"name": repo, "tags": page}, extra)

            def _token(self, query):
                if fake.credentials is not None:
                    expected = "Basic " + base64.b64encode(":".join(fake.credentials).encode()).decode()
                    if self.headers.get("Authorization") != expected:
                        return self._send(401, {"details": "incorrect username or password"})
                return self._send(200, {"token": fake.TOKEN, "expires_in": 300})

            def _send(self, status, body, headers=None):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def paths(self):
        return [path for path, _ in self.requests]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


FAKE_TAGS = ["v1.9.0", "features-login", "latest", "v1.10.0", "features-search", "1.2.5",
             "v1.2.0", "build-10", "build-9"]


@pytest.fixture
def fake():
    server = FakeRegistry(FAKE_TAGS)
    yield server
    server.close()


def test_bearer_challenge_and_pagination(app, admin, fake):
    registry = registries.create(admin, "fake", fake.url)
    tags = registries.list_tags(registry, "team/app")
    assert tags == ["v1.10.0", "v1.9.0", "1.2.5", "v1.2.0", "build-9", "build-10",
                    "features-login", "features-search", "latest"]
    token_requests = [path for path in fake.paths() if path.startswith("/token")]
    assert len(token_requests) == 1
    query = parse_qs(urlsplit(token_requests[0]).query)
    assert query == {"scope": ["repository:team/app:pull"], "service": ["test"]}
    listed = [path for path in fake.paths() if "/tags/list" in path]
    # The challenged first try, then three pages of three, following the Link header.
    assert len(listed) == 4 and "last=latest" in listed[2] and "last=1.2.5" in listed[3]
    # Anonymous: no basic credentials went to the token service.
    assert all("Authorization" not in headers for path, headers in fake.requests if path.startswith("/token"))


@pytest.fixture
def fake_with_credentials():
    server = FakeRegistry(FAKE_TAGS, credentials=(USER, PASSWORD))
    yield server
    server.close()


def test_bearer_token_service_gets_the_credentials(app, admin, fake_with_credentials):
    fake = fake_with_credentials
    good = registries.create(admin, "good", fake.url, USER, PASSWORD)
    assert registries.list_tags(good, "team/app", "features-*") == ["features-login", "features-search"]
    token_headers = [headers for path, headers in fake.requests if path.startswith("/token")]
    assert token_headers[0]["Authorization"].startswith("Basic ")

    bad = registries.create(admin, "bad", fake.url, USER, "not-the-password")
    started = time.monotonic()
    with pytest.raises(RegistryDenied) as caught:
        registries.list_tags(bad, "team/app")
    assert time.monotonic() - started < 5
    assert caught.value.message == "registry bad refused the credentials (401)"

    anonymous = registries.create(admin, "anon", fake.url)
    with pytest.raises(RegistryDenied):
        registries.list_tags(anonymous, "team/app")


def test_unknown_repository_is_named(app, admin, fake):
    registry = registries.create(admin, "fake", fake.url)
    with pytest.raises(RepositoryNotFound) as caught:
        registries.list_tags(registry, "team/nothing")
    assert caught.value.message == "repository team/nothing not found in registry fake"


def test_tags_are_cached_for_a_minute_per_registry_repository_and_credentials(app, admin, fake,
                                                                              monkeypatch):
    registry = registries.create(admin, "fake", fake.url)
    first = registries.list_tags(registry, "team/app")
    seen = len(fake.requests)
    # Another pattern, the same repository: served from the cache, the server sees nothing.
    assert registries.list_tags(registry, "team/app") == first
    assert registries.list_tags(registry, "team/app", "v*") == ["v1.10.0", "v1.9.0", "v1.2.0"]
    assert len(fake.requests) == seen
    # New credentials: a new cache entry.
    registries.update(admin, registry, username="someone", password="other-pass")
    registries.list_tags(registry, "team/app")
    assert len(fake.requests) > seen
    seen = len(fake.requests)
    # After 60 s the cache entry is stale.
    now = time.monotonic()
    monkeypatch.setattr(registries.time, "monotonic", lambda: now + registries.CACHE_SECONDS + 1)
    registries.list_tags(registry, "team/app")
    assert len(fake.requests) > seen


def test_tags_through_the_api(client, headers, fake):
    created = client.post("/api/v1/registries", headers=headers, json={"name": "fake", "url": fake.url})
    assert created.status_code == 201, created.text
    response = client.get(f"/api/v1/registries/{created.json['id']}/tags",
                          query_string={"repository": "team/app", "pattern": "1.2.*"}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json == {"registry": "fake", "repository": "team/app", "pattern": "1.2.*",
                             "tags": ["1.2.5"]}
    missing = client.get(f"/api/v1/registries/{created.json['id']}/tags",
                         query_string={"repository": "team/none"}, headers=headers)
    assert missing.status_code == 502 and missing.json["error"]["code"] == "repository_not_found"


def test_a_pattern_with_a_slash_is_refused_with_a_hint(client, headers, fake):
    created = client.post("/api/v1/registries", headers=headers, json={"name": "fake", "url": fake.url})
    response = client.get(f"/api/v1/registries/{created.json['id']}/tags",
                          query_string={"repository": "team/app", "pattern": "features/*"},
                          headers=headers)
    assert response.status_code == 422
    assert "features-login" in response.json["error"]["message"]
    assert set(response.json["error"]["fields"]) == {"pattern"}
    assert not fake.requests  # refused before any network call
    bad_repo = client.get(f"/api/v1/registries/{created.json['id']}/tags",
                          query_string={"repository": "Team/App"}, headers=headers)
    assert bad_repo.status_code == 422 and "repository" in bad_repo.json["error"]["fields"]


def test_a_registry_that_is_down_fails_fast_with_a_clear_message(client, headers):
    port = free_port()  # nothing listens there
    created = client.post("/api/v1/registries", headers=headers,
                          json={"name": "down", "url": f"http://127.0.0.1:{port}"})
    started = time.monotonic()
    response = client.get(f"/api/v1/registries/{created.json['id']}/tags",
                          query_string={"repository": "team/app"}, headers=headers)
    assert time.monotonic() - started < 5
    assert response.status_code == 503
    assert response.json["error"] == {"code": "registry_unreachable", "fields": {},
                                      "message": "registry down is unreachable: connection refused"}


def test_a_registry_that_never_answers_fails_within_the_read_timeout(app, admin, monkeypatch):
    monkeypatch.setattr(registries, "READ_TIMEOUT", 0.5)
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        registry = registries.create(admin, "silent", f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        with pytest.raises(RegistryUnreachable) as caught:
            registries.list_tags(registry, "team/app")
        assert time.monotonic() - started < 3
    assert caught.value.message == "registry silent is unreachable: no answer within 0.5 s"


# --- CRUD, credentials, bad input ---------------------------------------------------------------
def test_credentials_are_write_only_and_encrypted(client, headers, app, caplog, fake):
    caplog.set_level(logging.DEBUG)
    created = client.post("/api/v1/registries", headers=headers, json={
        "name": "private", "url": fake.url + "/", "username": USER, "password": PASSWORD})
    assert created.status_code == 201, created.text
    body = created.json
    assert body["url"] == fake.url and body["has_credentials"] is True
    assert set(body) == {"id", "name", "is_default", "url", "has_credentials", "created_at"}
    rid = body["id"]
    changed = client.patch(f"/api/v1/registries/{rid}", headers=headers,
                           json={"password": PASSWORD + "-2"})
    assert changed.status_code == 200 and changed.json["has_credentials"] is True
    client.get(f"/api/v1/registries/{rid}/tags", query_string={"repository": "team/app"}, headers=headers)
    texts = [created.text, changed.text,
             client.get("/api/v1/registries", headers=headers).text,
             client.get(f"/api/v1/registries/{rid}", headers=headers).text,
             client.get("/api/v1/audit", headers=headers).text,
             caplog.text]
    for text in texts:
        assert PASSWORD not in text and USER not in text
    stored = db.session.get(Registry, rid)
    assert PASSWORD not in stored.password_ciphertext
    assert registries.reveal_password(stored) == PASSWORD + "-2"
    actions = {e.action: e.details for e in db.session.scalars(select(AuditEntry))}
    assert actions["registry.create"] == {"url": fake.url, "credentials": "set"}
    assert actions["registry.update"] == {"credentials": "changed"}

    cleared = client.patch(f"/api/v1/registries/{rid}", headers=headers,
                           json={"username": None, "password": None})
    assert cleared.status_code == 200 and cleared.json["has_credentials"] is False
    db.session.expire_all()
    assert db.session.get(Registry, rid).password_ciphertext is None


def test_users_see_names_only(client, headers, make_user, bearer):
    client.post("/api/v1/registries", headers=headers,
                json={"name": "private", "url": "https://registry.example.com"})
    user = make_user("dev1")
    listed = client.get("/api/v1/registries", headers=bearer(user))
    assert listed.status_code == 200
    assert listed.json["items"][0].keys() == {"id", "name", "is_default"}


@pytest.mark.parametrize("body,field,status", [
    ({"name": "x", "url": "https://r.example.com", "colour": "red"}, "colour", 422),
    ({"name": "x", "url": "ftp://r.example.com"}, "url", 422),
    ({"name": "x", "url": "r.example.com"}, "url", 422),
    ({"name": "x", "url": "https://r.example.com/v2/"}, "url", 422),
    ({"name": "x", "url": "https://user:pw@r.example.com"}, "url", 422),
    ({"name": "x", "url": "http://["}, "url", 422),  # urlsplit raises on an unclosed bracket
    ({"name": "x" * 65, "url": "https://r.example.com"}, "name", 422),
    ({"name": "", "url": "https://r.example.com"}, "name", 422),
    ({"name": "a;rm -rf", "url": "https://r.example.com"}, "name", 422),
    ({"name": "x", "url": "https://r.example.com", "password": "only-a-password"}, "username", 422),
    ({"name": "x", "url": "https://r.example.com", "username": "only-a-user"}, "password", 422),
    ({"name": "x", "url": "https://r.example.com", "is_default": True}, "is_default", 422),
])
def test_bad_input_is_refused_naming_the_field(client, headers, body, field, status):
    response = client.post("/api/v1/registries", headers=headers, json=body)
    assert response.status_code == status, response.text
    assert field in response.json["error"]["fields"], response.json
    assert client.get("/api/v1/registries", headers=headers).json["total"] == 0


def test_a_duplicate_name_is_a_conflict(client, headers):
    body = {"name": "private", "url": "https://registry.example.com"}
    assert client.post("/api/v1/registries", headers=headers, json=body).status_code == 201
    response = client.post("/api/v1/registries", headers=headers, json=body)
    assert response.status_code == 409 and response.json["error"]["fields"] == {"name": "already taken"}


def test_docker_hub_stays(client, headers, app, admin):
    # The row migration 0003 makes (tests start from empty tables, so it is made again here).
    hub = Registry(name=DOCKER_HUB_NAME, url=DOCKER_HUB_URL, is_default=True)
    db.session.add(hub)
    db.session.commit()
    response = client.delete(f"/api/v1/registries/{hub.id}", headers=headers)
    assert response.status_code == 409 and "cannot be deleted" in response.json["error"]["message"]
    with pytest.raises(Conflict):
        registries.update(admin, hub, url="https://mirror.example.com")
    # Credentials may be added (rate limits, private images).
    registries.update(admin, hub, username="me", password="hub-token")
    assert db.session.get(Registry, hub.id).has_credentials
    assert registries.registry_repository(hub, "nginx") == "library/nginx"
    assert registries.registry_repository(hub, "bitnami/nginx") == "bitnami/nginx"
    other = registries.create(admin, "private", "http://127.0.0.1:5000")
    assert registries.registry_repository(other, "nginx") == "nginx"
    assert client.delete(f"/api/v1/registries/{other.id}", headers=headers).status_code == 204


def test_the_migration_creates_docker_hub(tmp_path):
    app = create_app(TestConfig(database_url=f"sqlite:///{tmp_path / 'fresh.db'}"))
    with app.app_context():
        upgrade()
        rows = db.session.scalars(select(Registry)).all()
        assert [(r.name, r.url, r.is_default, r.has_credentials) for r in rows] == [
            ("docker-hub", "https://registry-1.docker.io", True, False)]
        db.session.remove()
        db.engine.dispose()


def test_pattern_checks_and_tag_order():
    with pytest.raises(ValidationFailed):
        registries.check_pattern("a b")
    assert registries.check_pattern("") is None
    assert registries.sort_tags(["b", "v2", "a", "v10", "v2"]) == ["v10", "v2", "a", "b"]
    assert registries.sort_tags(["1.2.0-rc1", "1.2.0", "1.1.9"]) == ["1.2.0", "1.2.0-rc1", "1.1.9"]


# --- a real registry: Debian's docker-registry with htpasswd ---------------------------------
@pytest.fixture
def real_registry(tmp_path):
    with htpasswd_registry(tmp_path, USER, PASSWORD) as address:
        yield address


@pytest.fixture
def pushed(real_registry, docker_client, busybox_image):
    """The real registry with nullops-test/busybox pushed under PUSHED_TAGS."""
    auth = {"username": USER, "password": PASSWORD}
    repository = f"{real_registry}/nullops-test/busybox"
    image = docker_client.images.get(busybox_image)
    try:
        for tag in PUSHED_TAGS:
            image.tag(repository, tag=tag)
            for item in docker_client.api.push(repository, tag=tag, stream=True, decode=True,
                                               auth_config=auth):
                assert "error" not in item, item
    finally:
        for tag in PUSHED_TAGS:
            try:
                docker_client.images.remove(f"{repository}:{tag}")
            except ImageNotFound:
                pass
    return f"http://{real_registry}"


@pytest.mark.docker
def test_a_real_registry_with_basic_auth(client, headers, pushed, caplog):
    caplog.set_level(logging.DEBUG)
    created = client.post("/api/v1/registries", headers=headers, json={
        "name": "local", "url": pushed, "username": USER, "password": PASSWORD})
    assert created.status_code == 201, created.text
    tags_url = f"/api/v1/registries/{created.json['id']}/tags"

    def tags(pattern=None):
        query = {"repository": "nullops-test/busybox"}
        if pattern is not None:
            query["pattern"] = pattern
        response = client.get(tags_url, query_string=query, headers=headers)
        assert response.status_code == 200, response.text
        return response.json["tags"]

    assert tags() == ["v1.3.0", "1.2.5", "v1.2.0", "features-login", "features-search"]
    assert tags("features-*") == ["features-login", "features-search"]
    assert tags("v*") == ["v1.3.0", "v1.2.0"]
    assert tags("1.2.*") == ["1.2.5"]
    assert tags("nothing-*") == []

    missing = client.get(tags_url, query_string={"repository": "nullops-test/nothing"}, headers=headers)
    assert missing.status_code == 502
    assert missing.json["error"]["message"] == "repository nullops-test/nothing not found in registry local"
    assert PASSWORD not in caplog.text


@pytest.mark.docker
def test_a_real_registry_refuses_a_wrong_password_fast(client, headers, pushed):
    created = client.post("/api/v1/registries", headers=headers, json={
        "name": "local", "url": pushed, "username": USER, "password": "wrong-password-1"})
    started = time.monotonic()
    response = client.get(f"/api/v1/registries/{created.json['id']}/tags",
                          query_string={"repository": "nullops-test/busybox"}, headers=headers)
    assert time.monotonic() - started < 5
    assert response.status_code == 502
    assert response.json["error"]["code"] == "registry_denied"
    assert response.json["error"]["message"] == "registry local refused the credentials (401)"

    anonymous = client.post("/api/v1/registries", headers=headers, json={"name": "anon", "url": pushed})
    response = client.get(f"/api/v1/registries/{anonymous.json['id']}/tags",
                          query_string={"repository": "nullops-test/busybox"}, headers=headers)
    assert response.status_code == 502
    assert "requires credentials (401)" in response.json["error"]["message"]
