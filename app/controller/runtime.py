"""What the controller's event loop runs on: the loop itself and the open-files limit.

Issue 19 (a controller holds 4,000 agent links): with asyncio's own loop each TLS link costs
about 310 KiB, most of it the 256 KiB read buffer its TLS transport (asyncio.sslproto) keeps
per connection; uvloop's TLS transport reads into one shared buffer, and a link costs a
fraction of that (docs/benchmarks.md, "Agent fleet"). So the controller runs on uvloop where
it is installed (it is in requirements.txt, built for Linux and macOS), and on asyncio's own
loop otherwise or when NULLOPS_CONTROLLER_EVENT_LOOP says so: the same code runs on either.

Each link is a socket: a fleet of N nodes needs N file descriptors beyond the process's own,
and Debian's default soft limit of 1024 stops a controller at about 1,000 links.
"""
import asyncio
import gc
import importlib
import logging
import resource

log = logging.getLogger("nullops.controller")

EVENT_LOOPS = ("auto", "uvloop", "asyncio")
# Descriptors the controller needs besides its links: database pools, the internal endpoint and
# its streams, Ansible runs, log files.
SPARE_FILES = 200


# Python's cyclic garbage collector runs a young-generation pass every 700 allocations and, every
# 100 of those, a full pass over every object the process holds. A controller with thousands of
# links and a fleet's desired state in memory holds millions: building the state.sync of 10,000
# deployments after a restart took 15-48 s here, most of it in full passes, and 4-10 s with the
# objects of the start frozen and passes 70 times rarer (issue 19). Little of what the
# controller makes is cyclic garbage; reference counting frees the rest at once.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc():
    """Freeze what the start made (imports, the app: never garbage) out of the collector's
    passes, and make the passes rarer. Called each time this process becomes the active
    controller. Returns the thresholds before."""
    before = gc.get_threshold()
    gc.collect()  # what is garbage now (a former leadership's links) is not frozen with the rest
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return before


class EventLoopUnavailable(Exception):
    """NULLOPS_CONTROLLER_EVENT_LOOP=uvloop, and uvloop cannot be imported."""


def loop_factory(choice="auto"):
    """(name, factory of a new event loop) for the setting: "uvloop" or "asyncio", or "auto":
    uvloop when it can be imported, asyncio's own loop when not."""
    if choice not in EVENT_LOOPS:
        raise ValueError(f"event loop {choice!r}: choose one of {', '.join(EVENT_LOOPS)}")
    if choice != "asyncio":
        try:
            uvloop = importlib.import_module("uvloop")
        except ImportError as exc:
            if choice == "uvloop":
                raise EventLoopUnavailable(
                    f"NULLOPS_CONTROLLER_EVENT_LOOP=uvloop but uvloop cannot be imported ({exc}): "
                    "`pip install uvloop`, or set it to auto or asyncio") from None
            log.info("uvloop is not installed: the controller runs on asyncio's own loop, "
                     "which takes about 310 KiB per agent link instead of about 70 KiB")
        else:
            return "uvloop", uvloop.new_event_loop
    return "asyncio", asyncio.new_event_loop


def run(coroutine, choice="auto"):
    """asyncio.run(coroutine) on the loop the setting picks."""
    name, factory = loop_factory(choice)
    log.info("controller event loop: %s", name)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)


def raise_open_files(links=0):
    """Raise this process's soft open-files limit to its hard limit (any process may) and warn
    when even that is short of `links` plus SPARE_FILES. Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %s to %s: %s", soft, target, exc)
    if links + SPARE_FILES > soft:
        log.warning("the open-files limit is %s: too low for %s agent links (each is a socket); "
                    "raise the hard limit (ulimit -n, LimitNOFILE=, docker run --ulimit nofile=) "
                    "to at least %s", soft, links, links + SPARE_FILES)
    return soft
