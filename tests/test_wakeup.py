"""Wake-ups (app/wakeup.py, issue 19): the writes the controller acts on wake it when they
commit, in the same transaction (PostgreSQL NOTIFY) or in-process (SQLite); a rollback, an
unrelated write and the controller's own writes wake nobody. The whole path, from a create to
the agent with the poll turned off, is tests/controller/test_wakeup.py."""
import select
import uuid

import psycopg2
import pytest
from psycopg2 import extensions

from app import wakeup
from app.extensions import db
from app.models import Environment, Team
from tests.conftest import PG_URL


def _environment():
    return Environment(name=f"env-{uuid.uuid4().hex[:6]}")


def test_a_commit_on_sqlite_wakes_the_in_process_controller_and_a_rollback_or_other_write_does_not(
        sqlite_app):
    woken = []
    waker = lambda: woken.append(1)  # noqa: E731
    wakeup.add_local_waker(waker)
    try:
        db.session.add(_environment())
        db.session.flush()
        assert woken == []  # not before the commit
        db.session.commit()
        assert woken == [1]
        db.session.add(_environment())
        db.session.flush()
        db.session.rollback()
        db.session.add(Team(name="qa"))  # nothing the controller reads
        db.session.commit()
        with wakeup.quiet():  # the controller's own writes
            db.session.add(_environment())
            db.session.commit()
        assert woken == [1]
        db.session.execute(db.update(Environment).values(base_domain="qa.example"))
        db.session.commit()  # a bulk statement, which no flush sees
        assert woken == [1, 1]
    finally:
        wakeup.remove_local_waker(waker)


def _notified(connection, wait_s):
    readable, _w, _x = select.select([connection], [], [], wait_s)
    if readable:
        connection.poll()
    found = [n.channel for n in connection.notifies]
    connection.notifies.clear()
    return found


@pytest.mark.postgres
def test_a_commit_on_postgresql_notifies_in_its_own_transaction_and_a_rollback_does_not(app):
    if not PG_URL:
        pytest.skip("NULLOPS_TEST_DATABASE_URL is not set (make test sets it)")
    listener = psycopg2.connect(db.engine.url.render_as_string(hide_password=False))
    try:
        listener.set_isolation_level(extensions.ISOLATION_LEVEL_AUTOCOMMIT)
        listener.cursor().execute(f"LISTEN {wakeup.CHANNEL}")
        db.session.add(_environment())
        db.session.flush()
        assert _notified(listener, 0.05) == []   # sent, but delivered only at the commit
        db.session.rollback()
        assert _notified(listener, 0.05) == []   # and never for a rollback
        db.session.add(_environment())
        db.session.commit()
        assert _notified(listener, 5) == [wakeup.CHANNEL]
    finally:
        listener.close()
