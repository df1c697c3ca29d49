"""Configuration from NULLOPS_* environment variables.

One class reads the environment once, when it is instantiated (not at import), so tests and
the CLI can build configurations side by side. Missing secrets stop the start with a message
that says how to make one; there are no insecure fallbacks (`nullops dev` creates its own
secrets under var/, see app/devsetup.py).
"""
import base64
import binascii
import os
from pathlib import Path

from pydantic_core import from_json

from app.services.password_rules import DEFAULT_MIN_LENGTH

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VAR_DIR = PROJECT_ROOT / "var"


class ConfigError(Exception):
    """A setting is missing or malformed; the message says which and how to fix it."""


def env_str(name, default=None, environ=None):
    environ = os.environ if environ is None else environ
    value = environ.get(name)
    return default if value is None or value == "" else value


def env_bool(name, default, environ=None):
    raw = env_str(name, None, environ)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean: use true or false")


def env_int(name, default, environ=None, minimum=None):
    raw = env_str(name, None, environ)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    return value


def parse_master_key(name, raw):
    """Decode one AES-256 key given as base64 of 32 bytes."""
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ConfigError(
            f"{name} must be the base64 encoding of exactly 32 random bytes; "
            "make one with `nullops keys generate`"
        )
    return key


class Config:
    """Production-shaped settings: everything secret must come from the environment."""

    TESTING = False
    DEV_MODE = False

    def __init__(self, environ=None):
        env = os.environ if environ is None else environ
        self.SQLALCHEMY_DATABASE_URI = env_str(
            "NULLOPS_DATABASE_URL", f"sqlite:///{VAR_DIR / 'nullops.db'}", env
        )
        # pydantic's JSON parser (already a dependency) reads JSON columns in a fraction of the
        # json module's time: a deployments page holds dozens of them.
        self.SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True, "json_deserializer": from_json}
        if self.SQLALCHEMY_DATABASE_URI.startswith("postgresql"):
            # An UPDATE of many rows (the controller writes a whole fleet's nodes at once) in pages
            # of statements, not one round trip per row: 2,000 nodes coming online took 4 s of
            # round trips on a busy host (issue 19). INSERTs already go as multi-row VALUES.
            self.SQLALCHEMY_ENGINE_OPTIONS["executemany_mode"] = "values_plus_batch"
        self.SECRET_KEY = self._session_secret(env)
        self.NULLOPS_MASTER_KEY = self._master_key(env)
        self.NULLOPS_OLD_MASTER_KEYS = [
            parse_master_key("NULLOPS_OLD_SECRET_KEYS", part)
            for part in env_str("NULLOPS_OLD_SECRET_KEYS", "", env).split(",")
            if part.strip()
        ]
        cookie_secure = env_bool("NULLOPS_COOKIE_SECURE", not self.DEV_MODE, env)
        self.SESSION_COOKIE_SECURE = cookie_secure
        self.REMEMBER_COOKIE_SECURE = cookie_secure
        self.SESSION_COOKIE_HTTPONLY = True
        self.REMEMBER_COOKIE_HTTPONLY = True
        self.SESSION_COOKIE_SAMESITE = "Lax"
        self.REMEMBER_COOKIE_SAMESITE = "Lax"
        self.WTF_CSRF_TIME_LIMIT = None  # token lives as long as the session
        # The largest request body taken (issue 17 item 6): larger ones answer 413 before being
        # read. Pipelines, imported YAML and secrets are far smaller.
        self.MAX_CONTENT_LENGTH = env_int("NULLOPS_MAX_REQUEST_BYTES", 2 * 1024 * 1024, env,
                                          minimum=64 * 1024)
        self.NULLOPS_LOGIN_MAX_FAILURES = env_int("NULLOPS_LOGIN_MAX_FAILURES", 5, env, minimum=1)
        self.NULLOPS_LOGIN_LOCKOUT_SECONDS = env_int(
            "NULLOPS_LOGIN_LOCKOUT_SECONDS", 300, env, minimum=1
        )
        self.NULLOPS_PASSWORD_MIN_LENGTH = env_int("NULLOPS_PASSWORD_MIN_LENGTH", DEFAULT_MIN_LENGTH,
                                                   env, minimum=8)
        self.NULLOPS_HOST = env_str("NULLOPS_HOST", "127.0.0.1", env)
        # Where people open NullOps (e.g. https://nullops.example.com): the public ingress pages
        # link to its login. Optional; without it they say "log in to NullOps" without a link.
        public_url = env_str("NULLOPS_PUBLIC_URL", "", env).rstrip("/")
        if public_url and not public_url.startswith(("http://", "https://")):
            raise ConfigError(f"NULLOPS_PUBLIC_URL={public_url!r}: give an http:// or https:// URL")
        self.NULLOPS_PUBLIC_URL = public_url or None
        self.NULLOPS_PORT = env_int("NULLOPS_PORT", 8080, env, minimum=1)
        # Where a controller's internal endpoint for live data (logs, metrics) listens while it is
        # the active one, and the address web processes reach it on (default: that one, this
        # host's name for 0.0.0.0); the active controller writes the latter and its certificate's
        # thumbprint to the database, where web processes find them (a failover moves them).
        # Keep it on a private network: it is for NullOps processes only.
        self.NULLOPS_CONTROLLER_INTERNAL = env_str("NULLOPS_CONTROLLER_INTERNAL", "127.0.0.1:8091", env)
        self.NULLOPS_CONTROLLER_INTERNAL_ADVERTISE = env_str(
            "NULLOPS_CONTROLLER_INTERNAL_ADVERTISE", None, env)
        # The controller's event loop (app/controller/runtime.py): auto takes uvloop when it is
        # installed (about a quarter of the memory per agent link), else asyncio's own.
        loop = env_str("NULLOPS_CONTROLLER_EVENT_LOOP", "auto", env).strip().lower()
        self.NULLOPS_CONTROLLER_EVENT_LOOP = loop
        if self.NULLOPS_CONTROLLER_EVENT_LOOP not in ("auto", "uvloop", "asyncio"):
            raise ConfigError(f"NULLOPS_CONTROLLER_EVENT_LOOP={self.NULLOPS_CONTROLLER_EVENT_LOOP!r}: "
                              "use auto, uvloop or asyncio")
        # Followed logs (the deployment page's Follow) the active controller admits at once, per
        # user and in all (issue #14.4): each holds a log reader on a node and two sockets in a web
        # process. A viewer over either is told so in the socket and closed.
        self.NULLOPS_LOG_STREAMS_PER_USER = env_int("NULLOPS_LOG_STREAMS_PER_USER", 10, env, minimum=1)
        self.NULLOPS_LOG_STREAMS_MAX = env_int("NULLOPS_LOG_STREAMS_MAX", 200, env, minimum=1)
        # The ingress: Caddy's admin API (localhost only; empty turns the ingress off) and the
        # address NullOps's Caddy server listens on for deployment URLs.
        # Set but empty is "off", not "unset": env_str would give the default back.
        admin_url = env.get("NULLOPS_CADDY_ADMIN_URL")
        self.NULLOPS_CADDY_ADMIN_URL = "http://127.0.0.1:2019" if admin_url is None else admin_url.strip()
        self.NULLOPS_INGRESS_LISTEN = env_str("NULLOPS_INGRESS_LISTEN", ":80", env)
        if not self.NULLOPS_INGRESS_LISTEN.rsplit(":", 1)[-1].isdigit():
            raise ConfigError(f"NULLOPS_INGRESS_LISTEN={self.NULLOPS_INGRESS_LISTEN!r} has no port:"
                              " give host:port or :port, such as :80")
        # How people reach deployment URLs, when something in front of Caddy changes it (a load
        # balancer terminating TLS: https and 443). The port defaults to the listen address's.
        self.NULLOPS_INGRESS_PUBLIC_SCHEME = env_str("NULLOPS_INGRESS_PUBLIC_SCHEME", "http", env)
        if self.NULLOPS_INGRESS_PUBLIC_SCHEME not in ("http", "https"):
            raise ConfigError(f"NULLOPS_INGRESS_PUBLIC_SCHEME={self.NULLOPS_INGRESS_PUBLIC_SCHEME!r}"
                              " is not a URL scheme for deployments: use http or https")
        self.NULLOPS_INGRESS_PUBLIC_PORT = env_int("NULLOPS_INGRESS_PUBLIC_PORT", None, env, minimum=1)
        # Where Caddy reaches the web tier for the pages it does not proxy (landing, offline, 404).
        self.NULLOPS_INGRESS_PAGES_UPSTREAM = env_str(
            "NULLOPS_INGRESS_PAGES_UPSTREAM", f"{self.NULLOPS_HOST}:{self.NULLOPS_PORT}", env)
        # How often the controller looks for deployments whose inactivity period ran out.
        self.NULLOPS_CLEANUP_INTERVAL_S = env_int("NULLOPS_CLEANUP_INTERVAL_S", 30, env, minimum=1)
        # How long an Ansible run (onboarding, upgrade, decommission) may take before it is ended.
        self.NULLOPS_PROVISIONING_TIMEOUT_S = env_int("NULLOPS_PROVISIONING_TIMEOUT_S", 1800, env, minimum=10)
        # Where the nodes the controller onboards get the agent image (roles/nullops_agent):
        # registry (pulled), archive (a `docker save` file on the controller's host, copied), or
        # host (already loaded there); the tag is always this control plane's version.
        self.NULLOPS_AGENT_IMAGE = env_str("NULLOPS_AGENT_IMAGE", "nullops/agent", env)
        self.NULLOPS_AGENT_IMAGE_SOURCE = env_str("NULLOPS_AGENT_IMAGE_SOURCE", "registry", env)
        if self.NULLOPS_AGENT_IMAGE_SOURCE not in ("registry", "archive", "host"):
            raise ConfigError(f"NULLOPS_AGENT_IMAGE_SOURCE={self.NULLOPS_AGENT_IMAGE_SOURCE!r}: use "
                              "registry, archive or host")
        self.NULLOPS_AGENT_IMAGE_ARCHIVE = env_str("NULLOPS_AGENT_IMAGE_ARCHIVE", "", env)
        # History kept (app/services/retention.py): deleted deployments and deployment events,
        # and audit entries, in days.
        self.NULLOPS_RETENTION_DAYS = env_int("NULLOPS_RETENTION_DAYS", 90, env, minimum=1)
        self.NULLOPS_AUDIT_RETENTION_DAYS = env_int("NULLOPS_AUDIT_RETENTION_DAYS", 365, env, minimum=1)
        # Trust X-Forwarded-For from this many proxies when recording client addresses.
        self.NULLOPS_TRUSTED_PROXIES = env_int("NULLOPS_TRUSTED_PROXIES", 0, env, minimum=0)

    def _session_secret(self, env):
        secret = env_str("NULLOPS_SESSION_SECRET", None, env)
        if secret is None or len(secret) < 32:
            raise ConfigError(
                "NULLOPS_SESSION_SECRET must be set to at least 32 random characters; "
                "make one with `python3 -c 'import secrets; print(secrets.token_urlsafe(48))'`"
            )
        return secret

    def _master_key(self, env):
        raw = env_str("NULLOPS_SECRET_KEY", None, env)
        if raw is None:
            raise ConfigError(
                "NULLOPS_SECRET_KEY is not set: it is the AES-256 master key for secrets at rest; "
                "make one with `nullops keys generate` and keep it outside the database"
            )
        return parse_master_key("NULLOPS_SECRET_KEY", raw)


class DevConfig(Config):
    """`nullops dev`: embedded SQLite, secrets generated once under var/ by the dev command."""

    DEV_MODE = True

    def __init__(self, environ=None):
        env = dict(os.environ if environ is None else environ)
        # Port 80 is for production; the quickstart's URLs are http://<service>.<deployment>.local.localhost:8081
        env.setdefault("NULLOPS_INGRESS_LISTEN", "127.0.0.1:8081")
        super().__init__(env)


class TestConfig(Config):
    __test__ = False  # not a pytest test class

    TESTING = True

    def __init__(self, environ=None, database_url=None):
        env = dict(os.environ if environ is None else environ)
        env.setdefault("NULLOPS_SESSION_SECRET", "test-session-secret-" + "x" * 32)
        env.setdefault("NULLOPS_SECRET_KEY", base64.b64encode(b"k" * 32).decode())
        env.setdefault("NULLOPS_COOKIE_SECURE", "false")
        env.setdefault("NULLOPS_CONTROLLER_INTERNAL", "127.0.0.1:0")  # never meet a dev instance
        env.setdefault("NULLOPS_CADDY_ADMIN_URL", "")  # tests start their own Caddy
        if database_url:
            env["NULLOPS_DATABASE_URL"] = database_url
        super().__init__(env)
        self.NULLOPS_PASSWORD_HASH_FAST = True
        if self.SQLALCHEMY_DATABASE_URI.startswith("postgresql"):
            # Tests commit constantly and never need durability across a crash.
            self.SQLALCHEMY_ENGINE_OPTIONS = {
                **self.SQLALCHEMY_ENGINE_OPTIONS,
                "connect_args": {"options": "-c synchronous_commit=off"},
            }
