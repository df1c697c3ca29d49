"""NullOps control plane."""
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

# One version for the whole product: agents must run exactly the control plane's version.
from agent import __version__  # noqa: E402,F401


def create_app(config=None):
    """Build the app: bind extensions, register blueprints, nothing else (no I/O)."""
    from app.config import Config

    app = Flask(__name__)
    app.config.from_object(config if config is not None else Config())

    from app import auth_setup, crypto, errors, routing, security_headers, wakeup
    from app.api import bp as api_bp
    from app.extensions import csrf, db, login_manager, migrate
    from app.health import bp as health_bp
    from app.ingress.page_view import bp as ingress_pages_bp
    from app.ui import bp as ui_bp
    from app.ui.log_stream import bp as log_stream_bp

    routing.init_app(app)
    db.init_app(app)
    wakeup.install()  # writes the controller acts on wake it (issue 19)
    migrate.init_app(app, db, directory=str(_migrations_dir()))
    csrf.init_app(app)
    auth_setup.init_app(app, login_manager)
    app.extensions["nullops_keyring"] = crypto.KeyRing(
        app.config["NULLOPS_MASTER_KEY"], app.config["NULLOPS_OLD_MASTER_KEYS"]
    )
    if app.config["NULLOPS_TRUSTED_PROXIES"]:
        n = app.config["NULLOPS_TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)

    app.register_blueprint(health_bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(ui_bp)
    app.register_blueprint(log_stream_bp)
    app.register_blueprint(ingress_pages_bp)
    errors.register(app)
    security_headers.init_app(app)
    return app


def _migrations_dir():
    from app.config import PROJECT_ROOT

    return PROJECT_ROOT / "migrations"
