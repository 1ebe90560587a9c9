"""Mapping of API server answers to typed errors that carry the server's own message."""

from __future__ import annotations

import orjson
import pytest

from arkd.kube.errors import (
    AlreadyExists,
    ApiError,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    NotFound,
    ServerError,
    TooManyRequests,
    Unauthorized,
    error_from_response,
    error_from_status,
)


def status_body(code: int, reason: str, message: str, **extra: object) -> bytes:
    return orjson.dumps(
        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
         "message": message, **extra}
    )


@pytest.mark.parametrize(
    ("code", "reason", "cls"),
    [
        (401, "Unauthorized", Unauthorized),
        (403, "Forbidden", Forbidden),
        (404, "NotFound", NotFound),
        (409, "AlreadyExists", AlreadyExists),
        (409, "Conflict", Conflict),
        (410, "Expired", Gone),
        (410, "Gone", Gone),
        (422, "Invalid", Invalid),
        (429, "TooManyRequests", TooManyRequests),
        (500, "InternalError", ServerError),
        (503, "ServiceUnavailable", ServerError),
        (504, "Timeout", ServerError),
    ],
)
def test_status_codes_map_to_typed_errors_with_the_server_message(code: int, reason: str, cls: type) -> None:
    message = f"the server says {reason}"
    err = error_from_response(code, status_body(code, reason, message), method="GET", path="/api/v1/x")
    assert type(err) is cls
    assert isinstance(err, ApiError)
    assert str(err) == message
    assert (err.status, err.reason) == (code, reason)


def test_a_conflict_is_not_an_already_exists() -> None:
    stale = error_from_response(409, status_body(409, "Conflict", "the object has been modified"))
    taken = error_from_response(409, status_body(409, "AlreadyExists", 'configmaps "a" already exists'))
    assert not isinstance(stale, AlreadyExists)
    assert not isinstance(taken, Conflict)


def test_invalid_exposes_the_failing_fields() -> None:
    body = status_body(
        422, "Invalid", 'ConfigMap "BAD" is invalid: metadata.name: Invalid value: "BAD"',
        details={"name": "BAD", "kind": "ConfigMap",
                 "causes": [{"reason": "FieldValueInvalid", "message": "Invalid value", "field": "metadata.name"}]},
    )
    err = error_from_response(422, body)
    assert isinstance(err, Invalid)
    assert [c["field"] for c in err.causes] == ["metadata.name"]
    assert "metadata.name" in str(err)


def test_the_http_status_wins_over_a_missing_code_in_the_body() -> None:
    body = orjson.dumps({"kind": "Status", "status": "Failure", "reason": "NotFound", "message": "gone away"})
    err = error_from_response(404, body)
    assert isinstance(err, NotFound)
    assert str(err) == "gone away"


def test_a_non_status_body_still_gives_a_clear_message() -> None:
    err = error_from_response(502, b"<html>Bad Gateway from the proxy</html>", method="GET", path="/api/v1/pods")
    assert isinstance(err, ServerError)
    assert "GET /api/v1/pods" in str(err)
    assert "502" in str(err)
    assert "Bad Gateway from the proxy" in str(err)


def test_an_empty_status_message_is_replaced_by_a_description() -> None:
    err = error_from_response(403, status_body(403, "Forbidden", ""), method="DELETE", path="/api/v1/x")
    assert isinstance(err, Forbidden)
    assert "DELETE /api/v1/x" in str(err) and "403" in str(err)


def test_unknown_client_errors_stay_generic_api_errors() -> None:
    err = error_from_response(415, status_body(415, "UnsupportedMediaType", "the body of the request was in an "
                                                                          "unknown format"))
    assert type(err) is ApiError
    assert "unknown format" in str(err)


def test_a_watch_error_event_with_code_410_is_gone() -> None:
    status = {"kind": "Status", "status": "Failure", "code": 410, "reason": "Expired",
              "message": "too old resource version: 1 (192)"}
    err = error_from_status(status)
    assert isinstance(err, Gone)
    assert str(err) == "too old resource version: 1 (192)"


def test_retry_after_is_kept_on_the_error() -> None:
    err = error_from_response(429, status_body(429, "TooManyRequests", "slow down"), retry_after=3.0)
    assert isinstance(err, TooManyRequests)
    assert err.retry_after == 3.0
