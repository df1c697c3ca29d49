"""The controller process: owns the scheduler (and, with later issues, the agent links, the
ingress sync and Ansible runs). Jobs have fixed ids so a restart replaces, never duplicates."""
import signal
import threading

from apscheduler.schedulers.background import BackgroundScheduler


def prune_login_failures(app):
    from app.services import auth

    with app.app_context():
        auth.prune_login_failures()


class Controller:
    def __init__(self, app):
        self.app = app
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self._stopped = threading.Event()

    def start(self):
        self.scheduler.add_job(
            prune_login_failures, "interval", minutes=10, args=[self.app],
            id="prune-login-failures", replace_existing=True,
            misfire_grace_time=300, coalesce=True, max_instances=1,
        )
        self.scheduler.start()

    def stop(self):
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self._stopped.set()

    def run_forever(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stopped.set())
        self.start()
        self.app.logger.info("controller running")
        self._stopped.wait()
        self.stop()
