"""Fixtures: app, client, factories, login helpers. A fresh database for every test.

The schema is built once per run by the real Alembic migrations, then every test starts from
empty tables. NULLOPS_TEST_DATABASE_URL selects PostgreSQL (`make test` sets it); without it the
suite runs on a SQLite file and the PostgreSQL-only tests are skipped.
"""
import os
import re
import time
import uuid
import warnings

import pytest
from flask.testing import FlaskClient
from flask_migrate import upgrade
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, ProgrammingError

from app import create_app
from app.config import TestConfig
from app.extensions import db
from app.models import AccessLevel, Environment, Grant, Project, Team, TeamMember
from app.services import auth, users
from tests import dockertools

PG_URL = os.environ.get("NULLOPS_TEST_DATABASE_URL")
STRONG_PASSWORD = "correct-horse-battery-9"


@pytest.fixture(scope="session")
def database_url(tmp_path_factory):
    """A database of this run's own: concurrent runs (a developer's and CI's) never meet."""
    if not PG_URL:
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
        return
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"nullops_t_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        # Databases of killed runs: dropped unless their run is alive (a run between two tests
        # holds no connection to its own: dropping "unused" ones took a concurrent run's) or
        # someone is still connected to them.
        stale_names = conn.execute(text("SELECT datname FROM pg_database WHERE datname LIKE 'nullops_t_%'"))
        for (stale,) in stale_names.all():
            if _run_alive(stale):
                continue
            try:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{stale}"'))
            except (OperationalError, ProgrammingError):  # in use, or another run dropped it first
                pass
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        drop_database(admin, name)
        admin.dispose()


def _run_alive(database_name):
    """Whether the test run that made `nullops_t_<pid>_<hex>` still runs on this host."""
    pid = database_name.removeprefix("nullops_t_").split("_", 1)[0]
    return pid.isdigit() and dockertools.process_alive(int(pid))


def drop_database(admin, name, patience_s=20.0):
    """Drop a database of this run's, connections and all. FORCE may not end an autovacuum
    worker busy in it ("must be a member of the role whose process is being terminated": the
    worker has no role); it finishes within moments, so try again. A database still there at
    the end is left with a warning: the next run drops it with the stale ones."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except (OperationalError, ProgrammingError) as exc:
            if time.monotonic() > deadline:
                warnings.warn(f"database {name} not dropped ({exc.orig}); the next run drops it",
                              stacklevel=2)
                return
            time.sleep(0.5)


@pytest.fixture(scope="session")
def _schema(database_url):
    """The real migrations, run once per test run on the run's fresh database."""
    app = create_app(TestConfig(database_url=database_url))
    with app.app_context():
        upgrade()
        db.engine.dispose()
    return database_url


def _empty_tables():
    # DELETE beats TRUNCATE on tables this small (TRUNCATE rewrites files on PostgreSQL).
    for table in reversed(db.metadata.sorted_tables):
        db.session.execute(table.delete())
    db.session.commit()


class ContextPerRequestClient(FlaskClient):
    """Each request in its own app context, as under a real server: the test's own context
    (held by the `app` fixture) would otherwise share `g` and the database session with it."""

    def open(self, *args, **kwargs):
        with self.application.app_context():
            return super().open(*args, **kwargs)


@pytest.fixture(scope="session")
def _app(_schema):
    # One app for the run: building the URL map costs more than most tests. Tests that change
    # settings use monkeypatch.setitem(app.config, ...), which puts them back.
    app = create_app(TestConfig(database_url=_schema))
    app.test_client_class = ContextPerRequestClient
    return app


@pytest.fixture
def app(_app):
    with _app.app_context():
        _empty_tables()
        yield _app
        db.session.rollback()
        db.session.remove()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def sqlite_app(tmp_path):
    """An app on a migrated SQLite file of the test's own, its context pushed: for what only
    SQLite does (`make run` uses it; `make test` runs the suite on PostgreSQL)."""
    app = create_app(TestConfig(database_url=f"sqlite:///{tmp_path / 'own.db'}"))
    with app.app_context():
        upgrade()
        try:
            yield app
        finally:
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def make_user(app):
    def make(username="user1", role="user", password=STRONG_PASSWORD, active=True):
        user = users.create(None, username, password, role=role)
        if not active:
            users.update(None, user, is_active=False)
        return user

    return make


@pytest.fixture
def admin(make_user):
    return make_user("admin", role="admin")


@pytest.fixture
def bearer(app):
    """Authorization headers for a user, through a real personal API token."""

    made = {}

    def headers(user):
        if user.id not in made:
            _token, raw = auth.create_token(user, user, f"test-{user.username}")
            made[user.id] = {"Authorization": f"Bearer {raw}"}
        return made[user.id]

    return headers


def csrf_from(html):
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html) or re.search(
        r'name="csrf-token" content="([^"]+)"', html
    )
    assert match, "page carries no CSRF token"
    return match.group(1)


@pytest.fixture
def login(client):
    """Log in through the real login form (with its CSRF token); returns the response."""

    def do(username, password=STRONG_PASSWORD, follow=False):
        page = client.get("/login")
        return client.post(
            "/login",
            data={"username": username, "password": password, "csrf_token": csrf_from(page.text)},
            follow_redirects=follow,
        )

    return do


@pytest.fixture
def spec_example(app, make_user, admin):
    """The spec's example: QA Team has Read-Only and SE Team Full Access on one project (and
    the same on one environment); one more user is in no team."""
    project = Project(name="shop", description="the shop")
    other_project = Project(name="billing")
    environment = Environment(name="staging")
    qa, se = Team(name="QA Team"), Team(name="SE Team")
    db.session.add_all([project, other_project, environment, qa, se])
    db.session.flush()
    reader, writer, outsider = make_user("qa-anna"), make_user("se-bob"), make_user("nobody")
    db.session.add_all([
        TeamMember(team_id=qa.id, user_id=reader.id),
        TeamMember(team_id=se.id, user_id=writer.id),
        Grant(team_id=qa.id, project_id=project.id, level=AccessLevel.READ_ONLY.value),
        Grant(team_id=se.id, project_id=project.id, level=AccessLevel.FULL.value),
        Grant(team_id=qa.id, environment_id=environment.id, level=AccessLevel.READ_ONLY.value),
        Grant(team_id=se.id, environment_id=environment.id, level=AccessLevel.FULL.value),
    ])
    db.session.commit()
    return {
        "project": project, "other_project": other_project, "environment": environment,
        "qa": qa, "se": se, "reader": reader, "writer": writer, "outsider": outsider,
        "admin": admin,
    }


# --- a real Docker engine (helpers in tests/dockertools.py) -------------------------------------
@pytest.fixture(scope="session")
def docker_client():
    import docker
    import requests

    try:
        # Negotiates the API version (the engine here speaks 1.41; pinning a newer one fails).
        client = docker.from_env(timeout=120)
        client.ping()
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        dockertools.unavailable(f"the Docker engine is unreachable ({exc}); run scripts/test-host.sh")
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def base_image(docker_client):
    return dockertools.require_image(docker_client, dockertools.BASE_IMAGE)


@pytest.fixture(scope="session")
def busybox_image(docker_client):
    return dockertools.require_image(docker_client, dockertools.BUSYBOX_IMAGE)


@pytest.fixture
def test_labels(docker_client):
    """Labels to put on everything the test creates; all of it is removed after the test."""
    labels = {dockertools.LABEL: uuid.uuid4().hex, **dockertools.owner_labels()}
    # Leftovers of earlier runs killed before their teardown (containers survive an engine
    # restart; a crashed run can leave duplicate-named networks behind).
    dockertools.remove_labelled(docker_client, dockertools.LABEL, spare_live_owners=True)
    selector = f"{dockertools.LABEL}={labels[dockertools.LABEL]}"
    try:
        yield labels
    finally:
        dockertools.remove_labelled(docker_client, selector)
    left = dockertools.left_behind(docker_client, selector)
    assert not left, f"left behind after cleanup: {left}"


def rows_of(*models):
    """How many rows each model has, for "nothing was written" checks. AuditEntry counts the
    record of changes only: refusals are audited too (access.refused), and must be."""
    from sqlalchemy import func, select

    from app.models import AuditEntry

    db.session.expire_all()
    return tuple(db.session.scalar(
        select(func.count()).select_from(model).where(AuditEntry.action != "access.refused")
        if model is AuditEntry else select(func.count()).select_from(model)) for model in models)
