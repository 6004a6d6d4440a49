"""Typed errors: services raise these, one middleware maps them to HTTP answers."""

from __future__ import annotations


class WonderCraftError(Exception):
    """Base of every error with a place in the API's answers."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, details: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class ConfigError(WonderCraftError):
    """A configuration value is missing or out of range; start-up stops."""

    code = "config_error"


class StartupRefused(WonderCraftError):
    """The host cannot run the service as asked (rights, port, state dir, database)."""

    code = "startup_refused"


class BadRequest(WonderCraftError):
    status = 400
    code = "bad_request"


class Unauthorized(WonderCraftError):
    status = 401
    code = "unauthorized"
    headers = {"WWW-Authenticate": 'Bearer realm="wondercraft"'}


class Forbidden(WonderCraftError):
    status = 403
    code = "forbidden"


class NotFound(WonderCraftError):
    status = 404
    code = "not_found"


class Conflict(WonderCraftError):
    status = 409
    code = "conflict"


class PayloadTooLarge(WonderCraftError):
    status = 413
    code = "payload_too_large"
    # The rest of the body is never read, so the connection cannot be reused.
    close_connection = True


class TooManyRequests(WonderCraftError):
    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after_s: int = 1, details: dict | None = None):
        super().__init__(message, details=details)
        self.retry_after_s = retry_after_s


class ServiceUnavailable(WonderCraftError):
    status = 503
    code = "unavailable"


class UnsupportedMediaType(WonderCraftError):
    status = 415
    code = "unsupported_media_type"
