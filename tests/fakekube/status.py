"""Kubernetes ``Status`` error bodies, built the way the API server builds them.

Clients branch on ``reason`` and ``code`` (the kubernetes client raises ``ApiException``
with the body; the cleanup executor maps 404/409/403/410/429 to different outcomes), so
every failure path in the fake raises :class:`ApiError` with the same ``reason``,
``message`` and ``details`` shape as k8s.io/apimachinery/pkg/api/errors.
"""

from __future__ import annotations

from typing import Any

from tests.fakekube.resources import ResourceType


class ApiError(Exception):
    """An HTTP error the server answers with a ``Status`` body."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        """The ``Status`` object exactly as the API server serialises it."""
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": dict(self.extra.get("metadata", {})),
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            status["details"] = self.details
        status["code"] = self.code
        return status


def _details(rtype: ResourceType, name: str | None) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if name:
        details["name"] = name
    if rtype.group:
        details["group"] = rtype.group
    details["kind"] = rtype.plural  # the server puts the resource, not the Kind, here
    return details


def not_found(rtype: ResourceType, name: str) -> ApiError:
    return ApiError(
        404, "NotFound", f'{rtype.qualified} "{name}" not found', details=_details(rtype, name)
    )


def already_exists(rtype: ResourceType, name: str) -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{rtype.qualified} "{name}" already exists',
        details=_details(rtype, name),
    )


def conflict(rtype: ResourceType, name: str, why: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rtype.qualified} "{name}": {why}',
        details=_details(rtype, name),
    )


def invalid(rtype: ResourceType, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """422 Invalid; ``causes`` are ``(reason, field, message)`` like field.ErrorList."""
    text = ", ".join(f"{field}: {message}" for _, field, message in causes)
    details = _details(rtype, name)
    details["kind"] = rtype.kind  # Invalid is the one error that names the Kind
    details["causes"] = [{"reason": r, "message": m, "field": f} for r, f, m in causes]
    if not name:
        details.pop("name", None)
    shown = text if len(causes) == 1 else f"[{text}]"
    return ApiError(422, "Invalid", f'{rtype.kind} "{name}" is invalid: {shown}', details=details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def expired(message: str, *, continue_token: str | None = None) -> ApiError:
    extra = {"metadata": {"continue": continue_token}} if continue_token else None
    return ApiError(410, "Expired", message, extra=extra)


def too_old_watch(requested: int, oldest: int) -> ApiError:
    """The ERROR event a watch from a compacted resourceVersion receives."""
    return ApiError(410, "Expired", f"too old resource version: {requested} ({oldest})")


def forbidden(rtype: ResourceType | None, name: str | None, why: str) -> ApiError:
    if rtype is None:
        return ApiError(403, "Forbidden", f"forbidden: {why}", details={})
    subject = f'{rtype.qualified} "{name}"' if name else rtype.qualified
    return ApiError(
        403, "Forbidden", f"{subject} is forbidden: {why}", details=_details(rtype, name)
    )


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def unknown_path() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", details={})


def method_not_allowed(verb: str, rtype: ResourceType) -> ApiError:
    return ApiError(
        405,
        "MethodNotAllowed",
        f'{verb} is not supported on resources of kind "{rtype.plural}.{rtype.group}"',
        details={"group": rtype.group, "kind": rtype.plural},
    )


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format: {content_type}",
    )


# Bodies the server sends for throttling and internal faults (used by fault injection).
FAULT_REASONS = {
    429: ("TooManyRequests", "Too many requests, please try again later."),
    500: ("InternalError", "Internal error occurred: injected fault"),
    503: ("ServiceUnavailable", "The server is currently unable to handle the request"),
    504: ("Timeout", "The server was unable to return a response in the time allotted"),
}


def fault(code: int, retry_after: int | None) -> ApiError:
    reason, message = FAULT_REASONS.get(code, ("InternalError", "injected fault"))
    details: dict[str, Any] = {}
    headers: dict[str, str] = {}
    if retry_after is not None:
        details["retryAfterSeconds"] = retry_after
        headers["Retry-After"] = str(retry_after)
    return ApiError(code, reason, message, details=details, headers=headers)
