"""The `nullops` command: the single entry point (dev, web, controller, db, users, keys, demo)."""
import os
import secrets
import signal
import sys
import threading

import click
from flask import current_app
from flask.cli import FlaskGroup, with_appcontext

from app.config import ConfigError


def _dev_mode():
    return os.environ.get("NULLOPS_DEV") == "1"


def _log_to_stderr():
    """Long-running commands log to stderr (NULLOPS_LOG_LEVEL, default info); the service
    manager or container runtime collects it. Secrets never reach log lines (they are not
    formatted into messages anywhere)."""
    import logging

    level = os.environ.get("NULLOPS_LOG_LEVEL", "info").upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Their info lines (every job run, every migration plugin) drown what matters.
    for chatty in ("apscheduler", "alembic"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))


def build_app(pool_size=None):
    """App factory for CLI commands. `NULLOPS_DEV=1` (set by `make run`) uses the dev secrets.
    `pool_size`: database connections kept open per process (SQLAlchemy's default is 5)."""
    from app import create_app
    from app.config import Config, DevConfig

    try:
        if _dev_mode():
            from app.devsetup import ensure_dev_secrets

            ensure_dev_secrets()
            config = DevConfig()
        else:
            config = Config()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if pool_size is not None:
        config.SQLALCHEMY_ENGINE_OPTIONS = {**config.SQLALCHEMY_ENGINE_OPTIONS, "pool_size": pool_size}
    return create_app(config)


@click.group(cls=FlaskGroup, create_app=build_app, add_default_commands=False,
             add_version_option=False)
def cli():
    """NullOps: on-demand QA environments on your own Docker hosts."""


@cli.command("dev", with_appcontext=False)
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default 8080).")
def dev(host, port):
    """Web and controller in one process on the embedded SQLite database."""
    os.environ["NULLOPS_DEV"] = "1"
    _log_to_stderr()
    from werkzeug.serving import run_simple

    from app import devstack
    from app.controller import Controller

    # A service manager stops us with SIGTERM: leave through `finally`, so the local agent and
    # Caddy stop with us instead of lingering.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = build_app()
    host = host or app.config["NULLOPS_HOST"]
    port = port or app.config["NULLOPS_PORT"]
    busy = devstack.busy_addresses(host, port, app.config["NULLOPS_CONTROLLER_INTERNAL"])
    if busy:
        raise click.ClickException(
            f"{', '.join(busy)} already in use: is another `nullops dev` running? Stop it (Ctrl-C "
            "where it runs) or move this one (--port, NULLOPS_CONTROLLER_INTERNAL, "
            "NULLOPS_DEV_AGENT_PORT)")
    children = [devstack.Supervised("local agent", lambda: devstack.start_agent(app),
                                    devstack.AGENT_DIR / "agent.log"),
                devstack.Supervised("Caddy ingress", lambda: devstack.start_caddy(app),
                                    devstack.CADDY_DIR / "caddy.log")]
    stopping = threading.Event()
    supervisor = devstack.supervise(children, stopping)
    controller = Controller(app)
    controller.start()
    click.echo(f"NullOps dev: http://{host}:{port}/  (Ctrl-C stops it)")
    try:
        # Not app.run(): Flask refuses it inside its own CLI. Werkzeug's server is enough for
        # one developer; `nullops web` runs gunicorn.
        run_simple(host, port, app, threaded=True, use_reloader=False, use_debugger=False)
    finally:
        stopping.set()
        supervisor.join(5)  # no restart may race the stop below
        controller.stop()
        devstack.stop(*(child.process for child in children))
        devstack.stop_demo_registry()


@cli.command("web", with_appcontext=False)
@click.option("--bind", default=None, help="host:port (default NULLOPS_HOST:NULLOPS_PORT).")
@click.option("--workers", default=2, show_default=True, type=int)
@click.option("--threads", default=8, show_default=True, type=int)
def web(bind, workers, threads):
    """The stateless web tier under gunicorn (UI, API, browser WebSockets)."""
    from gunicorn.app.base import BaseApplication

    # A pooled connection for each thread: with fewer, every busy moment opens and closes
    # PostgreSQL connections (a new backend each, milliseconds of CPU; the API latency
    # benchmark saw 170 of them in one run with the default 5).
    app = build_app(pool_size=threads)
    bind = bind or f"{app.config['NULLOPS_HOST']}:{app.config['NULLOPS_PORT']}"

    class Server(BaseApplication):
        def load_config(self):
            # gthread: threads serve requests; browser WebSockets are handed to an asyncio
            # thread once open and hold none (app/websocket_handover.py).
            for key, value in {"bind": bind, "workers": workers, "threads": threads,
                               "worker_class": "gthread", "accesslog": "-"}.items():
                self.cfg.set(key, value)

        def load(self):
            return app

    Server().run()


@cli.command("controller", with_appcontext=False)
def controller_command():
    """The controller: agent links, deployments, the ingress and the scheduled jobs."""
    from app.controller import Controller

    _log_to_stderr()
    app = build_app()
    Controller(app).run_forever()


@cli.group("users")
def users_group():
    """Manage user accounts from the shell."""


@users_group.command("create-admin")
@click.option("--username", default="admin", show_default=True)
@click.option("--if-missing", is_flag=True, help="Do nothing when an admin already exists.")
@with_appcontext
def create_admin(username, if_missing):
    """Create an admin. The password comes from NULLOPS_ADMIN_PASSWORD, else it is generated
    and printed once."""
    from sqlalchemy import select

    from app.extensions import db
    from app.models import User
    from app.services import passwords, users
    from app.services.errors import ServiceError

    if if_missing and db.session.scalar(select(User.id).where(User.role == "admin").limit(1)):
        click.echo("An admin exists already; nothing to do.")
        return
    password = os.environ.get("NULLOPS_ADMIN_PASSWORD")
    generated = not password
    if generated:
        password = secrets.token_urlsafe(18)
    try:
        users.create(None, username, password, role="admin")
    except ServiceError as exc:
        rule = f"; a password needs {passwords.rules()}" if "password" in exc.fields else ""
        raise click.ClickException(exc.message + rule) from None
    click.echo(f"Admin {username!r} created.")
    if generated:
        # Printed to the terminal once; never logged, never stored in the clear.
        click.echo(f"Password (shown once, store it now): {password}")


@cli.group("keys")
def keys_group():
    """The AES-256 master key for secrets at rest."""


@keys_group.command("generate", with_appcontext=False)
def keys_generate():
    """Print a new master key for NULLOPS_SECRET_KEY."""
    from app.crypto import generate_key

    click.echo(generate_key())


@keys_group.command("rotate")
@with_appcontext
def keys_rotate():
    """Re-encrypt every secret under NULLOPS_SECRET_KEY. Put the previous key(s) in
    NULLOPS_OLD_SECRET_KEYS (comma-separated) for the run; keep them until this succeeds."""
    from app.crypto import CryptoError
    from app.services import keys

    keyring = current_app.extensions["nullops_keyring"]
    try:
        counts = keys.rotate(keyring)
    except CryptoError as exc:
        raise click.ClickException(f"rotation stopped: {exc}") from None
    total = sum(counts.values())
    click.echo(f"Re-encrypted {total} value(s) under key {keyring.current_id}: {counts}")


@cli.group("demo")
def demo_group():
    """The reference demo: seed it, deploy it (make run / make demo)."""


def _demo_failed(exc):
    from app.services.errors import ServiceError

    message = exc.message if isinstance(exc, ServiceError) else str(exc)
    return click.ClickException(f"demo: {message}")


@demo_group.command("seed")
@click.option("--registry-url", default=None,
              help="Where the demo images are (default http://127.0.0.1:5000, scripts/demo-images.sh).")
@with_appcontext
def demo_seed(registry_url):
    """Create the demo's registry, services, plugins, project, secret and pipeline when missing."""
    from app import demo
    from app.services.errors import ServiceError

    try:
        done = demo.seed(None, registry_url or demo.REGISTRY_URL)
    except (demo.DemoError, ServiceError) as exc:
        raise _demo_failed(exc) from None
    created = [f"{kind} {name}" for kind, name, what in done if what == "created"]
    click.echo(f"Demo seeded: created {', '.join(created)}." if created
               else "Demo seeded already; nothing to do.")
    click.echo(f"Deploy it from the UI (project {demo.PROJECT}, environment {demo.ENVIRONMENT}) "
               "or with `make demo`.")


def _demo_deploy(name, tag, timeout):
    """Create (or reuse) the deployment, wait for it, print its URLs."""
    from app import demo
    from app.services.errors import ServiceError

    def say(line):
        click.echo(f"  {line}")

    try:
        deployment, what = demo.deploy(demo.first_admin(), name, tag, say=say)
        click.echo(f"Deployment {name}: {what}")
        deployment = demo.wait_ready(deployment.id, timeout, say=say)
    except (demo.DemoError, ServiceError) as exc:
        raise _demo_failed(exc) from None
    url, curl, published = demo.addresses(deployment, current_app.config["NULLOPS_INGRESS_LISTEN"])
    click.echo(f"\nThe demo ({deployment.tags.get('web')}) shows its seeded rows at:\n\n    {url}\n")
    click.echo(f"Where *.localhost does not resolve: {curl}")
    if published:
        click.echo(f"Straight to the container, without the ingress: {published}")


@demo_group.command("deploy")
@click.option("--name", default="demo", show_default=True, help="The deployment's name.")
@click.option("--tag", default="1.0", show_default=True,
              help="The web app's tag (1.0, 1.1, features-dark-mode).")
@click.option("--timeout", default=300, show_default=True, type=int, help="Seconds to wait for ready.")
@with_appcontext
def demo_deploy(name, tag, timeout):
    """Deploy the demo project to environment "local" (a running `nullops dev`) and wait."""
    _demo_deploy(name, tag, timeout)


@demo_group.command("up", with_appcontext=False)
@click.option("--name", default="demo", show_default=True, help="The deployment's name.")
@click.option("--tag", default="1.0", show_default=True, help="The web app's tag.")
def demo_up(name, tag):
    """`make demo`: start `nullops dev` in the background unless one runs, deploy, print the
    URL, then keep NullOps running until Ctrl-C."""
    import signal
    import subprocess

    from app import demo
    from app.config import VAR_DIR

    # Ctrl-C and a plain kill both end here through KeyboardInterrupt, so NullOps is stopped
    # (a shell without job control starts background commands with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    os.environ["NULLOPS_DEV"] = "1"
    app = build_app()
    host, port = app.config["NULLOPS_HOST"], app.config["NULLOPS_PORT"]
    process, interrupted = None, False
    try:
        if demo.nullops_answers(host, port):
            click.echo(f"Using the NullOps already running at http://{host}:{port}/")
        else:
            log_path = VAR_DIR / "nullops-dev.log"
            click.echo(f"Starting NullOps in the background (log: {log_path})")
            with open(log_path, "ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "app.cli", "dev"], stdout=log, stderr=subprocess.STDOUT,
                    env={**os.environ, "NULLOPS_DEV": "1"},
                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509
        with app.app_context():
            try:
                demo.wait_node_online()
            except demo.DemoError as exc:
                raise _demo_failed(exc) from None
            _demo_deploy(name, tag, demo.READY_TIMEOUT_S)
        click.echo(f"\nNullOps: http://{host}:{port}/ (log in as admin).")
        if process is not None:
            click.echo("NullOps runs until Ctrl-C here; the deployment stays (delete it in the UI, "
                       "or `make run` to bring NullOps back).")
            process.wait()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if process is not None and process.poll() is None:
            click.echo("Stopping NullOps")
            _stop_dev(process, interrupted)


def _stop_dev(process, interrupted):
    """`nullops dev` stops its agent and Caddy on SIGINT (KeyboardInterrupt). A terminal's Ctrl-C
    has sent it one already: then give it time before asking again; force it last."""
    import signal
    import subprocess

    asks = (None, signal.SIGINT, signal.SIGTERM, signal.SIGKILL) if interrupted else (
        signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
    for ask in asks:
        if process.poll() is not None:
            return
        if ask is not None:
            process.send_signal(ask)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:   # a second Ctrl-C: do not wait any longer
            process.kill()
            return


def main():
    cli(prog_name="nullops")


if __name__ == "__main__":
    sys.exit(main())
