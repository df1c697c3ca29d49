"""Secrets for `nullops dev` only: generated once into var/dev.env (mode 0600) and reused,
so a developer's embedded database stays readable across restarts. Production never calls this."""
import os
import secrets

from app.config import VAR_DIR
from app.crypto import generate_key

DEV_ENV = VAR_DIR / "dev.env"


def ensure_dev_secrets(environ=os.environ):
    VAR_DIR.mkdir(mode=0o700, exist_ok=True)
    if not DEV_ENV.exists():
        fd = os.open(DEV_ENV, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"NULLOPS_SECRET_KEY={generate_key()}\n")
            handle.write(f"NULLOPS_SESSION_SECRET={secrets.token_urlsafe(48)}\n")
    for line in DEV_ENV.read_text().splitlines():
        key, _, value = line.partition("=")
        if key and value:
            environ.setdefault(key.strip(), value.strip())
