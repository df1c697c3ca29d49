"""The JSON API under /api/v1."""
# Importing the view modules registers their operations on `bp`.
from app.api import audit, catalog, nodes, openapi, registries, teams, users  # noqa: E402,F401
from app.api.core import bp

__all__ = ["bp"]
