"""Typed Kubernetes API errors built from the server's ``Status`` body.

``str(err)`` is the server's own message, so callers can put it straight into a log line,
an object's status or an Event.
"""

from __future__ import annotations

from typing import Any

import orjson


class ApiError(Exception):
    """A non-2xx answer from the API server (or a watch ERROR event)."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        body: dict[str, Any] | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.body: dict[str, Any] = body if body is not None else {}
        self.retry_after = retry_after

    @property
    def details(self) -> dict[str, Any]:
        details = self.body.get("details")
        return details if isinstance(details, dict) else {}

    @property
    def causes(self) -> list[dict[str, Any]]:
        """Field-level causes, e.g. each failed validation of an Invalid object."""
        causes = self.details.get("causes")
        return [c for c in causes if isinstance(c, dict)] if isinstance(causes, list) else []

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(status={self.status}, reason={self.reason!r}, message={self.message!r})"


class NotFound(ApiError):
    """404: the object (or the resource type, or the namespace) does not exist."""


class Conflict(ApiError):
    """409: the write lost a race (stale resourceVersion or failed precondition)."""


class AlreadyExists(ApiError):
    """409 with reason AlreadyExists: a create of a name that is taken."""


class Gone(ApiError):
    """410: the resourceVersion (or continue token) is too old; relist."""


class Forbidden(ApiError):
    """403: RBAC or an admission plugin refused the request."""


class Invalid(ApiError):
    """422: the object failed validation; ``causes`` lists the fields."""


class Unauthorized(ApiError):
    """401: the credentials are missing, wrong or expired."""


class TooManyRequests(ApiError):
    """429: the server is throttling; ``retry_after`` holds its advice in seconds."""


class ServerError(ApiError):
    """5xx: the server (or something in front of it) failed."""


_BY_STATUS: dict[int, type[ApiError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    410: Gone,
    422: Invalid,
    429: TooManyRequests,
}


def error_class(status: int, reason: str) -> type[ApiError]:
    """The most specific error type for an HTTP status code and Status reason."""
    if status == 409:
        return AlreadyExists if reason == "AlreadyExists" else Conflict
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, ApiError)


def error_from_status(status_obj: dict[str, Any], *, default_code: int = 500) -> ApiError:
    """Build the error a ``Status`` object (a response body or a watch ERROR event) describes."""
    raw_code = status_obj.get("code")
    code = raw_code if isinstance(raw_code, int) and raw_code > 0 else default_code
    reason = str(status_obj.get("reason") or "")
    message = str(status_obj.get("message") or "") or f"the API server answered {code} {reason}".rstrip()
    return error_class(code, reason)(code, reason, message, status_obj)


def error_from_response(
    status: int,
    body: bytes,
    *,
    method: str = "",
    path: str = "",
    retry_after: float | None = None,
) -> ApiError:
    """Build the error for an HTTP response; bodies that are not a Status still give a clear message."""
    parsed: Any = None
    if body:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
    if isinstance(parsed, dict) and parsed.get("kind") == "Status":
        # The HTTP status is authoritative: a Status body may omit or disagree on ``code``.
        reason = str(parsed.get("reason") or "")
        message = str(parsed.get("message") or "")
        message = message or f"{method} {path}: the API server answered {status} {reason}"
        return error_class(status, reason)(status, reason, message.strip(), parsed, retry_after=retry_after)
    text = body.decode("utf-8", errors="replace").strip()
    if len(text) > 300:
        text = text[:300] + "..."
    message = f"{method} {path}: HTTP {status}" + (f": {text}" if text else "")
    return error_class(status, "")(status, "", message.strip(), {}, retry_after=retry_after)


class ConnectionFailed(ApiError):
    """The API server could not be reached or dropped the connection (status 0: no HTTP answer)."""
