"""Typed service errors. The API turns them into its error document; the UI into flashes."""


class ServiceError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message, fields=None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


class ValidationFailed(ServiceError):
    status = 422
    code = "validation_failed"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"


class Throttled(ServiceError):
    status = 429
    code = "too_many_attempts"

    def __init__(self, message, retry_after):
        super().__init__(message)
        self.retry_after = retry_after


class InsufficientResources(Conflict):
    """Admission found no node of the environment with room for a deployment."""

    code = "insufficient_resources"
