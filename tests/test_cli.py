"""The `nullops` command: first admin, key generation and key rotation."""
import base64
import threading

import pytest
from click.testing import CliRunner
from flask.cli import ScriptInfo

from agent.protocol import verifier_for
from app import create_app
from app.cli import cli
from app.config import TestConfig
from app.crypto import key_id
from app.extensions import db
from app.models import Environment, Node, NodeCommand, Project, ProjectSecret, User
from app.services import catalog, nodes

OLD_KEY = base64.b64encode(b"k" * 32).decode()  # TestConfig's default key
NEW_KEY = base64.b64encode(b"n" * 32).decode()


@pytest.fixture
def run(app, monkeypatch):
    """Invoke `nullops` against the test database, with extra environment variables."""
    url = app.config["SQLALCHEMY_DATABASE_URI"]

    def invoke(args, env=None):
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        info = ScriptInfo(create_app=lambda: create_app(TestConfig(database_url=url)))
        # In a thread of its own, as from a shell: the test's app context (current_app) would
        # otherwise be reused by the command instead of an app built from this environment.
        results = []
        worker = threading.Thread(target=lambda: results.append(CliRunner().invoke(cli, args, obj=info)))
        worker.start()
        worker.join()
        return results[0]

    return invoke


def test_create_admin_uses_the_password_from_the_environment(run):
    result = run(["users", "create-admin", "--username", "root-admin"],
                 {"NULLOPS_ADMIN_PASSWORD": "a-Strong-password-1"})
    assert result.exit_code == 0, result.output
    assert "a-Strong-password-1" not in result.output
    user = db.session.scalar(db.select(User).where(User.username == "root-admin"))
    assert user.is_admin


def test_create_admin_generates_and_prints_a_password_once_and_is_idempotent(run, client, login):
    result = run(["users", "create-admin"])
    assert result.exit_code == 0
    password = result.output.split("store it now): ")[1].strip()
    assert login("admin", password).status_code == 302
    again = run(["users", "create-admin", "--if-missing"])
    assert "nothing to do" in again.output


def test_create_admin_refuses_a_weak_password_clearly(run):
    result = run(["users", "create-admin"], {"NULLOPS_ADMIN_PASSWORD": "short"})
    assert result.exit_code == 1 and "too weak" in result.output
    # ... and states the whole rule, not only the first thing wrong.
    named = run(["users", "create-admin"], {"NULLOPS_ADMIN_PASSWORD": "my-admin-password-42"})
    assert "do not include the username; a password needs at least 12 characters" in named.output


def test_keys_generate_prints_a_usable_key(run):
    result = run(["keys", "generate"])
    assert len(base64.b64decode(result.output.strip())) == 32


def test_keys_rotate_reencrypts_and_old_data_stays_readable(app, run, admin, monkeypatch):
    project = catalog.create(admin, Project, "shop")
    catalog.put_secret(admin, project, "DB_PASSWORD", "hunter2-value")
    result = run(["keys", "rotate"], {"NULLOPS_SECRET_KEY": NEW_KEY, "NULLOPS_OLD_SECRET_KEYS": OLD_KEY})
    assert result.exit_code == 0, result.output
    assert "Re-encrypted 1 value" in result.output
    db.session.expire_all()
    secret = db.session.scalar(db.select(ProjectSecret))
    assert secret.value_ciphertext.startswith(f"nlk1:{key_id(b'n' * 32)}:")
    # An app started with the new key (NULLOPS_SECRET_KEY is set now) reads the value.
    new_app = create_app(TestConfig(database_url=app.config["SQLALCHEMY_DATABASE_URI"]))
    with new_app.app_context():
        assert catalog.reveal_secret(db.session.get(ProjectSecret, secret.id)) == "hunter2-value"
    rerun = run(["keys", "rotate"], {"NULLOPS_SECRET_KEY": NEW_KEY, "NULLOPS_OLD_SECRET_KEYS": OLD_KEY})
    assert "Re-encrypted 0 value" in rerun.output


def test_keys_rotate_reencrypts_node_verifiers_and_queued_commands(app, run, admin):
    environment = catalog.create(admin, Environment, "staging")
    node, _old_token, _command = nodes.add(admin, environment, "node-1", "10.0.0.5")
    node, token, _command = nodes.rotate_token(admin, node)  # queues the verifier, encrypted
    node_id = node.id
    result = run(["keys", "rotate"], {"NULLOPS_SECRET_KEY": NEW_KEY, "NULLOPS_OLD_SECRET_KEYS": OLD_KEY})
    assert result.exit_code == 0, result.output
    assert "'nodes': 1" in result.output and "'node_commands': 1" in result.output
    db.session.expire_all()
    new_id = key_id(b"n" * 32)
    node = db.session.get(Node, node_id)
    command = db.session.scalar(db.select(NodeCommand).where(NodeCommand.node_id == node_id))
    assert node.verifier_ciphertext.startswith(f"nlk1:{new_id}:")
    assert command.payload_ciphertext.startswith(f"nlk1:{new_id}:")
    new_app = create_app(TestConfig(database_url=app.config["SQLALCHEMY_DATABASE_URI"]))
    with new_app.app_context():
        node = db.session.get(Node, node_id)
        assert nodes.reveal_verifier(node) == verifier_for(token)


def test_keys_rotate_without_the_old_key_stops_with_a_clear_message(run, admin):
    project = catalog.create(admin, Project, "shop")
    catalog.put_secret(admin, project, "DB_PASSWORD", "hunter2-value")
    result = run(["keys", "rotate"], {"NULLOPS_SECRET_KEY": NEW_KEY})
    assert result.exit_code == 1
    assert "NULLOPS_OLD_SECRET_KEYS" in result.output and "hunter2" not in result.output
