"""Issue 17 item 6: nobody can keep `admin` locked out from elsewhere, and parallel requests
cannot get past the failure limit."""
import threading
import time

import pytest

from app.extensions import db
from app.services import auth
from app.services.errors import Throttled, Unauthorized
from tests.conftest import STRONG_PASSWORD

ADMINS_ADDRESS = "192.0.2.10"


def _fail(username, address, password="wrong-password-1"):
    try:
        auth.authenticate(username, password, address)
    except Unauthorized:
        return "wrong"
    except Throttled:
        return "throttled"
    return "ok"


def test_a_third_party_cannot_lock_admin_out_from_admins_own_address(app, admin):
    limit = app.config["NULLOPS_LOGIN_MAX_FAILURES"]
    results = [_fail("admin", "203.0.113.66") for _ in range(limit + 3)]
    assert results == ["wrong"] * limit + ["throttled"] * 3
    assert auth.authenticate("admin", STRONG_PASSWORD, ADMINS_ADDRESS).id == admin.id


def test_guessing_from_many_addresses_cannot_lock_admin_out(app, admin):
    limit = app.config["NULLOPS_LOGIN_MAX_FAILURES"]
    for i in range(8):
        for _ in range(limit):
            _fail("admin", f"203.0.113.{i}")
    assert auth.authenticate("admin", STRONG_PASSWORD, ADMINS_ADDRESS).id == admin.id


def test_a_username_under_attack_slows_the_attacking_addresses_down(app, admin):
    limit = app.config["NULLOPS_LOGIN_MAX_FAILURES"]
    for i in range(auth.ADDRESS_FACTOR + 1):
        for _ in range(limit):
            _fail("admin", f"203.0.113.{i}")
    # An address that already failed for admin waits between attempts ...
    assert _fail("admin", "203.0.113.0") == "throttled"
    assert _fail("admin", "198.51.100.1") == "wrong"  # ... a new one does not (its own limit)
    assert _fail("admin", "198.51.100.1") == "throttled"  # ... until it has failed too


def test_one_address_guessing_many_usernames_is_stopped(app, make_user):
    limit = app.config["NULLOPS_LOGIN_MAX_FAILURES"]
    results = [_fail(f"user{i}", "203.0.113.5") for i in range(limit * auth.ADDRESS_FACTOR + 2)]
    assert results.count("wrong") == limit * auth.ADDRESS_FACTOR
    assert results[-1] == "throttled"


@pytest.mark.postgres
def test_parallel_wrong_passwords_cannot_get_past_the_limit(app, admin, monkeypatch):
    if db.engine.dialect.name != "postgresql":
        pytest.skip("needs PostgreSQL (concurrent writers)")
    limit = app.config["NULLOPS_LOGIN_MAX_FAILURES"]
    real_verify = auth.verify_password

    def slow_verify(password_hash, password):
        time.sleep(0.3)  # a real argon2 check takes this order of time: the race window
        return real_verify(password_hash, password)

    monkeypatch.setattr(auth, "verify_password", slow_verify)
    results, start = [], threading.Barrier(16)

    def attempt():
        with app.app_context():
            start.wait()
            results.append(_fail("admin", "203.0.113.7"))
            db.session.remove()

    threads = [threading.Thread(target=attempt) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count("wrong") <= limit, results
    assert results.count("throttled") >= 16 - limit
