"""WSGI entry point for gunicorn: `gunicorn wsgi:app` (or `nullops web`)."""
import sys

from app import create_app
from app.config import Config, ConfigError

try:
    app = create_app(Config())
except ConfigError as exc:
    sys.exit(f"nullops: {exc}")
