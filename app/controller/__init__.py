"""The controller process: exactly one is active (app/controller/leader.py). The active one
holds the agent links (app/controller/manager.py) and runs the scheduled jobs; it is
level-triggered: killed at any moment and restarted, it converges again from the database.
Jobs have fixed ids so a restart replaces them, never duplicates them."""
import asyncio
import logging
import signal
import threading

from apscheduler.schedulers.background import BackgroundScheduler

from app import wakeup
from app.controller import runtime, state
from app.controller.internal import InternalEndpoint, StreamLimits
from app.controller.leader import LeaderLock
from app.controller.manager import LinkManager
from app.ingress.sync import IngressSync

log = logging.getLogger("nullops.controller")
ELECTION_RETRY_S = 1.0


def prune_login_failures(app):
    from app.services import auth

    with app.app_context():
        auth.prune_login_failures()


def prune_history(app):
    from app.services import retention

    with app.app_context():
        removed = retention.prune()
    if any(removed.values()):
        log.info("history past its retention removed: %s", removed)


def run_provisioning(app):
    """Carry out pending Ansible runs (issue 16), one after another, until none is left. A run
    takes minutes: the job has its own thread (max_instances=1), the links are not held up."""
    from app.services import onboarding

    with app.app_context():
        while onboarding.work_once(timeout_s=app.config.get("NULLOPS_PROVISIONING_TIMEOUT_S", 1800)):
            pass


def recover_provisioning(app):
    from app.services import onboarding

    with app.app_context():
        onboarding.recover_interrupted()


def expire_deployments(app, wake=None):
    """Auto-cleanup: deletion requested for deployments whose inactivity period ran out; the
    link manager's next round deletes them (woken at once)."""
    from app.models.types import utcnow
    from app.services import deployments

    with app.app_context():
        deployments.expire_due(utcnow())
    if wake is not None:
        wake()


class Controller:
    def __init__(self, app, poll_s=1.0):
        self.app = app
        self.poll_s = poll_s
        self.manager = None
        self.internal = None
        self.ingress = None
        self.scheduler = None
        self.listener = None  # app/wakeup.py's WakeListener while active on PostgreSQL
        self.active = threading.Event()   # set while this process is the active controller
        self._stopped = threading.Event()
        self._thread = None

    def start(self):
        """Run in the background (`nullops dev` runs it beside the web server)."""
        self._thread = threading.Thread(target=self._lead, name="controller", daemon=True)
        self._thread.start()

    def stop(self, timeout=15):
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_forever(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stopped.set())
        self.start()
        log.info("controller started; waiting to become the active one")
        self._stopped.wait()
        self.stop()

    def _lead(self):
        lock = LeaderLock(self.app.config["SQLALCHEMY_DATABASE_URI"])
        try:
            while not self._stopped.is_set():
                if lock.try_acquire():
                    self._act(lock)
                else:
                    self._stopped.wait(ELECTION_RETRY_S)
        finally:
            lock.release()

    def _act(self, lock):
        """Be the active controller until stopped or the lock is lost."""
        scheduler = BackgroundScheduler(timezone="UTC")
        scheduler.add_job(prune_login_failures, "interval", minutes=10, args=[self.app],
                          id="prune-login-failures", replace_existing=True,
                          misfire_grace_time=300, coalesce=True, max_instances=1)
        scheduler.add_job(prune_history, "interval", hours=1, args=[self.app], id="retention",
                          replace_existing=True, misfire_grace_time=3600, coalesce=True, max_instances=1)
        cleanup_s = int(self.app.config.get("NULLOPS_CLEANUP_INTERVAL_S", 30))
        scheduler.add_job(expire_deployments, "interval", seconds=cleanup_s,
                          args=[self.app, self._wake_manager], id="auto-cleanup",
                          replace_existing=True, misfire_grace_time=max(cleanup_s, 30),
                          coalesce=True, max_instances=1)
        # Runs the last active controller left running cannot resume: end them first.
        recover_provisioning(self.app)
        scheduler.add_job(run_provisioning, "interval", seconds=2, args=[self.app], id="provisioning",
                          replace_existing=True, misfire_grace_time=30, coalesce=True, max_instances=1)
        scheduler.start()
        self.scheduler = scheduler
        self.active.set()
        try:
            runtime.run(self._links(lock), self.app.config.get("NULLOPS_CONTROLLER_EVENT_LOOP", "auto"))
        finally:
            self._step_down()
            self.scheduler = None

    def _step_down(self):
        """Not the active controller any more: no scheduled job starts from here."""
        self.active.clear()
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def _wake_manager(self):
        if self.manager is not None:
            self.manager.wake()

    def _woken(self):
        """A write of the web tier (app/wakeup.py): deployments, nodes or commands to act on,
        routes that may have changed. Thread-safe."""
        self._wake_manager()
        if self.ingress is not None:
            self.ingress.wake()

    async def _links(self, lock):
        runtime.tune_gc()
        self.manager = LinkManager(self.app, poll_s=self.poll_s, fence=lock.fence())
        self.manager.open_files = runtime.raise_open_files()
        config = self.app.config
        self.ingress = None
        if config.get("NULLOPS_CADDY_ADMIN_URL"):
            self.ingress = IngressSync(self.app, config["NULLOPS_CADDY_ADMIN_URL"],
                                       config["NULLOPS_INGRESS_LISTEN"],
                                       config["NULLOPS_INGRESS_PAGES_UPSTREAM"])
            self.manager.on_change = self.ingress.wake
        self.internal = InternalEndpoint(
            self.manager, config["NULLOPS_CONTROLLER_INTERNAL"], config["SECRET_KEY"],
            StreamLimits(config["NULLOPS_LOG_STREAMS_PER_USER"], config["NULLOPS_LOG_STREAMS_MAX"]),
            advertise=config["NULLOPS_CONTROLLER_INTERNAL_ADVERTISE"])
        try:
            await self.internal.start()
            await self.manager.db(state.publish_endpoint, self.internal.address, self.internal.thumbprint)
        except OSError as exc:  # the links matter more than live data: keep them going
            log.error("the internal endpoint cannot listen on %s (%s); live logs and metrics "
                      "are unavailable until this is fixed", self.app.config["NULLOPS_CONTROLLER_INTERNAL"],
                      exc.strerror or exc)
        stopping = asyncio.Event()
        links = asyncio.create_task(self.manager.run(stopping))
        ingress = asyncio.create_task(self.ingress.run(stopping)) if self.ingress else None
        # The web tier's writes wake both at once (app/wakeup.py); the polls stay as the safety net.
        self.listener, listening = None, None
        if lock.postgres:
            self.listener = wakeup.WakeListener(config["SQLALCHEMY_DATABASE_URI"], self._woken)
            listening = asyncio.create_task(self.listener.run(stopping))
        else:
            wakeup.add_local_waker(self._woken)
        work = [task for task in (links, ingress, listening) if task is not None]
        while not links.done():
            await asyncio.sleep(ELECTION_RETRY_S)
            # Bounded: the lock answers within seconds or counts as lost (app/controller/leader.py).
            held = await asyncio.to_thread(lock.still_held)
            if not held:
                # Another controller may be taking over: stop now rather than let the current
                # rounds finish, which may be waiting on the same lost database while the links
                # go on (and reconnect, taking agents back from the new leader). Cancelling
                # closes every link; nothing more is written.
                log.error("not sure this controller still holds the lock: stepping down")
                self._step_down()
                for task in work:
                    task.cancel()
                break
            if self._stopped.is_set():
                stopping.set()  # a clean stop: the rounds finish and the last figures are written
                break
        if listening is not None and not listening.done():
            listening.cancel()  # on a lost lock too: it must not outlive the links
        wakeup.remove_local_waker(self._woken)
        for outcome in await asyncio.gather(*work, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.error("the controller's work ended with an error", exc_info=outcome)
        await self.internal.stop()
