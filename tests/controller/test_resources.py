"""The link manager's resources frames: gathered from every link, written together each second."""
import asyncio
import logging

from app.controller.manager import LinkManager
from app.extensions import db
from app.models import Environment
from tests.access.deployments import add_node
from tests.asynctools import run

GB = 1024 ** 3
HOST = {"cpus": 4, "cpu_percent": 50.0, "memory_total": 16 * GB, "memory_available": 2 * GB}


def _frame(**host):
    return {"type": "resources", "host": {**HOST, **host}, "allocated": {"cpus": 0, "memory_mb": 0}}


def test_a_node_sending_figures_out_of_range_is_warned_about_once_and_the_others_are_written(
        app, caplog):
    # Its figures are dropped every second while it keeps sending them: one warning says so, and
    # one more if it sends them again after a good frame.
    environment = Environment(name="staging")
    db.session.add(environment)
    db.session.commit()
    good, bad = add_node(environment, "node-1"), add_node(environment, "node-2")
    manager = LinkManager(app)
    stopping = asyncio.Event()
    stopping.set()  # one write, then return

    def write_second(bad_frame):
        manager.note_resources(good.id, _frame())
        manager.note_resources(bad.id, bad_frame)
        run(manager._write_resources(stopping))

    caplog.set_level(logging.WARNING, logger="nullops.controller")
    for bad_frame in (_frame(memory_available=10 ** 30), _frame(memory_available=10 ** 30), _frame(),
                      _frame(cpus=-1)):
        write_second(bad_frame)
    warned = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert warned == [
        f"node {bad.id} sent resource figures out of range (host.memory_available): they are not "
        "used until it sends good ones",
        f"node {bad.id} sent resource figures out of range (host.cpus): they are not used until it "
        "sends good ones",
    ]
    db.session.expire_all()
    assert good.reported_free_memory_mb == 2048 and good.resources_at is not None
