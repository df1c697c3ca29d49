from tests.caddytools import caddy, web  # noqa: F401 - fixtures
