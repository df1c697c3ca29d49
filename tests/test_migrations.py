"""Schema only through Alembic: one head, the real migrations run on PostgreSQL and SQLite,
and the models agree with what the migrations build."""
import logging
import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask_migrate import downgrade, upgrade
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from app import create_app
from app.config import TestConfig
from app.extensions import db
from tests.conftest import PG_URL, drop_database


def test_there_is_exactly_one_head(app):
    script = ScriptDirectory.from_config(app.extensions["migrate"].migrate.get_config())
    assert len(script.get_heads()) == 1


def _upgrade_compare_downgrade(url):
    app = create_app(TestConfig(database_url=url))
    with app.app_context():
        upgrade()
        with db.engine.connect() as conn:
            diffs = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), db.metadata
            )
        assert diffs == [], f"models and migrations disagree: {diffs}"
        if db.engine.dialect.name == "sqlite":
            # Alembic cannot compare it: SQLite's table options are not reflected.
            built = {name for name, sql in _schema_sql(db.metadata.tables).items() if "AUTOINCREMENT" in sql}
            assert built == {table.name for table in db.metadata.sorted_tables
                             if table.dialect_options["sqlite"]["autoincrement"]}
        downgrade(revision="base")
        remaining = set(inspect(db.engine).get_table_names()) - {"alembic_version"}
        assert remaining == set(), f"downgrade left tables: {remaining}"
        db.engine.dispose()


@pytest.mark.postgres
def test_migrations_build_exactly_the_models_on_postgresql():
    if not PG_URL:
        pytest.skip("NULLOPS_TEST_DATABASE_URL is not set (make test sets it)")
    name = f"nullops_mig_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        _upgrade_compare_downgrade(make_url(PG_URL).set(database=name).render_as_string(False))
    finally:
        drop_database(admin, name)
        admin.dispose()


def test_migrations_build_exactly_the_models_on_sqlite(tmp_path):
    _upgrade_compare_downgrade(f"sqlite:///{tmp_path / 'fresh.db'}")


def test_a_disabled_node_left_holding_deployments_drains_after_the_upgrade(tmp_path):
    # Before 0008 disabling dropped the link whatever the node held: such a node goes offline
    # (the controller dials it and it drains); an empty disabled node stays as it is.
    from app.models import Environment, Node, Project
    from app.services import catalog, nodes, users
    from tests.access.deployments import add_deployment, pipeline_version, service_step
    from tests.conftest import STRONG_PASSWORD

    app = create_app(TestConfig(database_url=f"sqlite:///{tmp_path / 'old.db'}"))
    with app.app_context():
        upgrade()
        admin = users.create(None, "admin", STRONG_PASSWORD, role="admin")
        environment = catalog.create(admin, Environment, "staging")
        holding, _token, _command = nodes.add(admin, environment, "node-1", "10.0.0.5")
        empty, _token, _command = nodes.add(admin, environment, "node-2", "10.0.0.6")
        version = pipeline_version(catalog.create(admin, Project, "shop"), [service_step("web")])
        add_deployment(version, environment, holding, "pr-1")
        for node in (holding, empty):   # as the old set_enabled left them
            node.enabled, node.status = False, "disabled"
        db.session.commit()

        downgrade(revision="0007")
        upgrade()
        db.session.expire_all()
        assert (db.session.get(Node, holding.id).status, db.session.get(Node, empty.id).status) == (
            "offline", "disabled")
        assert "stays linked" in db.session.get(Node, holding.id).status_reason
        downgrade(revision="0007")
        db.session.expire_all()
        assert db.session.get(Node, holding.id).status == "disabled"
        db.engine.dispose()


def test_a_table_recreated_on_sqlite_keeps_the_rows_that_refer_to_it(tmp_path):
    # SQLite rebuilds a table to alter it (Alembic's batch mode: copy, drop, rename); with foreign
    # keys enforced, the drop ran ON DELETE CASCADE and SET NULL on every row referring to it.
    # 0007 rebuilds deployments: its downgrade and upgrade took every deployment's history and
    # clone link with them.
    from app.models import Deployment, DeploymentEvent, Environment, Project
    from app.services import catalog, nodes, users
    from tests.access.deployments import add_deployment, pipeline_version, service_step
    from tests.conftest import STRONG_PASSWORD

    app = create_app(TestConfig(database_url=f"sqlite:///{tmp_path / 'old.db'}"))
    with app.app_context():
        upgrade()
        admin = users.create(None, "admin", STRONG_PASSWORD, role="admin")
        environment = catalog.create(admin, Environment, "staging")
        node, _token, _command = nodes.add(admin, environment, "node-1", "10.0.0.5")
        version = pipeline_version(catalog.create(admin, Project, "shop"), [service_step("web")])
        original = add_deployment(version, environment, node, "pr-1")
        clone = add_deployment(version, environment, node, "pr-2", cloned_from_id=original.id)
        db.session.add(DeploymentEvent(deployment_id=original.id, kind="status", message="ready"))
        db.session.commit()

        downgrade(revision="0006")
        upgrade()
        db.session.expire_all()
        assert db.session.get(Deployment, clone.id).cloned_from_id == original.id
        assert [e.message for e in db.session.scalars(db.select(DeploymentEvent))] == ["ready"]
        # ... and the app's connections enforce foreign keys again afterwards.
        assert db.session.execute(text("PRAGMA foreign_keys")).scalar() == 1
        db.engine.dispose()


def _schema_sql(tables):
    with db.engine.connect() as conn:
        return {name: sql for name, sql in conn.execute(text(
            "SELECT name, sql FROM sqlite_master WHERE tbl_name IN ({}) AND sql IS NOT NULL".format(
                ", ".join(f"'{table}'" for table in tables))))}


def _admin_without_the_orm():
    """An admin row written as revision 0008 has it, and a stand-in for the services: the User
    model has columns later revisions add (users.kind, 0011), so loading one would fail here."""
    from types import SimpleNamespace

    db.session.execute(db.text(
        "INSERT INTO users (username, full_name, role, password_hash, is_active, session_nonce, "
        "created_at) VALUES ('admin', '', 'admin', 'unusable', 1, 'n', CURRENT_TIMESTAMP)"))
    db.session.commit()
    user_id = db.session.scalar(db.text("SELECT id FROM users WHERE username = 'admin'"))
    return SimpleNamespace(id=user_id, username="admin", role="admin", is_admin=True,
                           is_active=True, is_authenticated=True)


def test_after_the_upgrade_sqlite_gives_no_id_ever_used_again(tmp_path):
    # Before 0009 SQLite gave the next row the highest id plus one, a deleted row's too, and with
    # a deployment's id its agent label (dep-<id>). The upgrade keeps every row and id, and the
    # next deployment and node come after every id the database still mentions (the audit log
    # remembers deleted ones).
    from app.models import Deployment, DeploymentEvent, Environment, Node, Project
    from app.models.types import utcnow
    from app.services import audit, catalog, deployments, nodes
    from tests.access.deployments import add_deployment, add_node, pipeline_version, service_step

    app = create_app(TestConfig(database_url=f"sqlite:///{tmp_path / 'old.db'}"))
    with app.app_context():
        upgrade(revision="0008")
        admin = _admin_without_the_orm()
        # A row, not catalog.create: its audit entry reads 0014's cpu_overcommit.
        environment = Environment(name="staging")
        db.session.add(environment)
        db.session.commit()
        # Rows without the columns of later revisions (0014's ratio and reserve; nodes.add
        # writes tables of later revisions too).
        kept_node = add_node(environment, "node-1", cpu_overcommit=None, memory_reserve_mb=None)
        gone_node = add_node(environment, "node-2", cpu_overcommit=None, memory_reserve_mb=None)
        seen = {"node": gone_node.id}
        nodes.delete(admin, gone_node)
        billing, shop = catalog.create(admin, Project, "billing"), catalog.create(admin, Project, "shop")
        billing_version = pipeline_version(billing, [service_step("web")])
        shop_version = pipeline_version(shop, [service_step("web")])
        # Rows as deployments.create left them at 0008 (today's admission reads 0014's columns).
        kept = add_deployment(billing_version, environment, kept_node, "pr-1")
        db.session.add(DeploymentEvent(deployment_id=kept.id, kind="created", message="created"))
        gone = add_deployment(shop_version, environment, kept_node, "pr-2")
        audit.record(admin, "deployment.create", "deployment", gone, {})
        gone.status, gone.deleted_at = "deleted", utcnow()
        db.session.commit()
        seen["deployment"] = gone.id
        catalog.delete(admin, shop)   # takes the deleted deployment's row: only the audit log has its id
        assert seen["deployment"] > kept.id and seen["node"] > kept_node.id
        tables = ("deployments", "nodes", "node_commands", "pipeline_versions")
        indexes_before = {name: sql for name, sql in _schema_sql(tables).items() if name not in tables}

        upgrade()
        schema = _schema_sql(tables)
        assert all("AUTOINCREMENT" in schema[table] for table in tables)
        # 0009's table copy keeps every index (later revisions may add more)
        assert {name: schema.get(name) for name in indexes_before} == indexes_before
        assert "ck_deployments_deleted_at_with_status" in schema["deployments"]
        db.session.expire_all()
        assert db.session.get(Deployment, kept.id).name == "pr-1"
        assert db.session.get(Node, kept_node.id).name == "node-1"
        assert len(db.session.scalars(db.select(DeploymentEvent)
                                      .where(DeploymentEvent.deployment_id == kept.id)).all()) == 1
        billing = db.session.get(Project, billing.id)
        environment = db.session.get(Environment, environment.id)
        newer = deployments.create(admin, billing, environment, "pr-3", {})
        newer_node, _token, _command = nodes.add(admin, environment, "node-3", "10.0.0.7")
        assert newer.id > seen["deployment"] and newer_node.id > seen["node"]

        downgrade(revision="0008")
        assert all("AUTOINCREMENT" not in sql for sql in _schema_sql(tables).values())
        upgrade()
        assert db.session.get(Deployment, newer.id).name == "pr-3"
        db.engine.dispose()


def test_an_upgrade_run_in_process_leaves_the_app_s_loggers_on(tmp_path):
    # env.py reads alembic.ini's logging setup, which by default disables every logger that
    # exists already: after the test session's upgrade the controller's and the web's loggers
    # said nothing, so a test of what they log (or never log) could not fail.
    logger = logging.getLogger("nullops.controller")
    app = create_app(TestConfig(database_url=f"sqlite:///{tmp_path / 'fresh.db'}"))
    with app.app_context():
        upgrade()
        db.engine.dispose()
    assert not logger.disabled
