"""The controller's event loop choice (uvloop where installed, asyncio's own otherwise) and its
open-files limit: app/controller/runtime.py."""
import asyncio
import gc
import importlib
import logging
import resource
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.config import ConfigError, TestConfig
from app.controller import runtime


@pytest.fixture
def without_uvloop(monkeypatch):
    """uvloop cannot be imported, as on a platform it is not built for."""
    real = importlib.import_module

    def import_module(name, *args):
        if name == "uvloop":
            raise ImportError("No module named 'uvloop'")
        return real(name, *args)

    monkeypatch.setattr(runtime.importlib, "import_module", import_module)


async def _loop_module():
    return type(asyncio.get_running_loop()).__module__


def loop_module(choice):
    """The module of the loop runtime.run runs a coroutine on, in a thread of its own (a
    browser test leaves a loop running in the main thread: tests/asynctools.py)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(runtime.run, _loop_module(), choice).result()


def test_auto_falls_back_to_asyncio_without_uvloop(without_uvloop, caplog):
    with caplog.at_level(logging.INFO, logger="nullops.controller"):
        name, factory = runtime.loop_factory("auto")
        assert name == "asyncio" and factory is asyncio.new_event_loop
        assert loop_module("auto").startswith("asyncio")
    assert "uvloop is not installed" in caplog.text


def test_uvloop_asked_for_but_missing_says_how_to_fix(without_uvloop):
    with pytest.raises(runtime.EventLoopUnavailable, match="pip install uvloop"):
        runtime.loop_factory("uvloop")


def test_asyncio_chosen_never_imports_uvloop(monkeypatch):
    monkeypatch.setattr(runtime.importlib, "import_module", pytest.fail)
    assert runtime.loop_factory("asyncio")[0] == "asyncio"
    assert loop_module("asyncio").startswith("asyncio")


def test_auto_runs_on_uvloop_when_installed():
    pytest.importorskip("uvloop")
    assert runtime.loop_factory("auto")[0] == "uvloop"
    assert loop_module("auto").startswith("uvloop")


def test_unknown_event_loop_setting_is_refused():
    with pytest.raises(ConfigError, match="NULLOPS_CONTROLLER_EVENT_LOOP='trio'.*auto, uvloop or asyncio"):
        TestConfig(environ={"NULLOPS_CONTROLLER_EVENT_LOOP": "trio"})
    with pytest.raises(ValueError):
        runtime.loop_factory("trio")


def test_open_files_raised_to_the_hard_limit_and_short_ones_named(caplog):
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        soft = runtime.raise_open_files()
        assert soft == resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= before[0]
        with caplog.at_level(logging.WARNING, logger="nullops.controller"):
            runtime.raise_open_files(links=soft)
        assert f"too low for {soft} agent links" in caplog.text
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_gc_tuned_for_a_large_heap_freezes_the_start():
    before = gc.get_threshold()
    try:
        assert runtime.tune_gc() == before
        assert gc.get_threshold() == runtime.GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
