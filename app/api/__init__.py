"""The JSON API under /api/v1."""
from app.api.core import bp, register_error_handlers

# Importing the view modules registers their operations on `bp`.
from app.api import audit, catalog, openapi, teams, users  # noqa: E402,F401

__all__ = ["bp", "register_error_handlers"]
