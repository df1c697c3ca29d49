"""Typed errors of the agent. Each carries a stable `code` (sent to the control plane in a
response or a run's step result) and a `message` a person can act on.

Docker SDK exceptions are wrapped by their type and HTTP status, never by their text; the one
place where the engine gives no type for a cause (registry authentication failures arrive as a
plain 500) is marked where it happens, in `docker_exec.Executor.pull`.
"""
import contextlib

import requests
from docker import errors as docker_errors


class AgentError(Exception):
    """Base of every error the agent reports. `codes` lists what a subclass may carry."""

    codes: frozenset = frozenset()

    def __init__(self, code, message):
        if self.codes and code not in self.codes:
            raise ValueError(f"{type(self).__name__} has no code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self):
        return f"{self.code}: {self.message}"

    def as_dict(self):
        return {"code": self.code, "message": self.message}


class ImageError(AgentError):
    codes = frozenset({"image_not_found", "pull_denied", "pull_failed"})


class ReadinessError(AgentError):
    codes = frozenset({"not_ready", "exited"})


class PluginError(AgentError):
    codes = frozenset({"plugin_failed", "plugin_timeout", "plugin_bad_output",
                       "plugin_output_too_large", "plugin_crashed"})

    def __init__(self, code, message, log=None):
        super().__init__(code, message)
        self.log = list(log or [])  # the step's log (stderr lines) up to the failure


class EngineError(AgentError):
    codes = frozenset({"engine_unavailable", "engine_error"})


class Cancelled(AgentError):
    codes = frozenset({"cancelled"})

    def __init__(self, message="cancelled", code="cancelled"):
        super().__init__(code, message)


# The engine socket is gone, refused or timed out: requests' ConnectionError covers refused
# and reset connections and read timeouts on the unix socket; DockerException without a
# status is what `docker.from_env()` raises when it finds no engine.
UNAVAILABLE = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)


def engine_error(exc, doing):
    """An EngineError for an SDK exception raised while `doing` something."""
    if isinstance(exc, UNAVAILABLE):
        return EngineError("engine_unavailable", f"Docker engine unreachable while {doing}: {exc}")
    if isinstance(exc, docker_errors.APIError):
        return EngineError("engine_error", f"Docker engine refused {doing} "
                           f"(HTTP {exc.status_code}): {exc.explanation or exc}")
    return EngineError("engine_error", f"{doing} failed: {exc}")


@contextlib.contextmanager
def engine_call(doing):
    """Turn SDK and transport exceptions inside the block into EngineError; AgentErrors pass."""
    try:
        yield
    except AgentError:
        raise
    except (docker_errors.DockerException, *UNAVAILABLE) as exc:
        raise engine_error(exc, doing) from exc
