"""A link's close is bounded (app/controller/links.py close_link): a transport that never
reports its end must not hold the link, and the handshake permit it holds, for good."""
import asyncio
import time

from app.controller import links
from tests.asynctools import run


class Transport:
    def __init__(self):
        self.aborted = False

    def abort(self):
        self.aborted = True


class NeverClosed:
    """A connection whose close waits forever, as one whose transport never calls
    connection_lost (seen with uvloop's TLS transport under load)."""

    def __init__(self):
        self.transport = Transport()

    async def close(self):
        await asyncio.Event().wait()


class Closes:
    def __init__(self):
        self.transport = Transport()
        self.closed = False

    async def close(self):
        self.closed = True


def test_a_close_that_never_finishes_drops_the_socket_after_the_close_timeout(monkeypatch):
    monkeypatch.setattr(links, "CLOSE_TIMEOUT_S", 0.05)
    ws = NeverClosed()
    started = time.monotonic()
    run(links.close_link(ws))
    assert ws.transport.aborted
    assert time.monotonic() - started < 2.0


def test_a_close_that_finishes_is_not_aborted():
    ws = Closes()
    run(links.close_link(ws))
    assert ws.closed and not ws.transport.aborted


def test_a_dead_link_check_that_ran_late_looks_once_more_before_ending_the_link():
    # On time: dead at once.
    assert links.silent_until(now=100.0, wake_at=99.9, recheck_at=None) is None
    # Late by more than LATE_S (a starved loop): once more, RECHECK_S later.
    again = links.silent_until(now=105.0, wake_at=100.0, recheck_at=None)
    assert again == 105.0 + links.RECHECK_S
    # Still silent at the second look, late or not: dead.
    assert links.silent_until(now=again + 3.0, wake_at=again, recheck_at=again) is None
