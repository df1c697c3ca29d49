"""The JSON API under /api/v1."""
# Importing the view modules registers their operations on `bp`.
from app.api import (  # noqa: E402,F401
    audit,
    catalog,
    deployments,
    nodes,
    openapi,
    pipelines,
    plugins,
    registries,
    services,
    teams,
    users,
)
from app.api.core import bp

__all__ = ["bp"]
