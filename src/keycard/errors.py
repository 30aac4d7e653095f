"""One error tree for keycard.

    KeycardError                     rpc code + UPPER_SNAKE reason + metadata
    ├── InvalidArgument              400 INVALID_ARGUMENT: bad input, names the field
    ├── FailedPrecondition           400 FAILED_PRECONDITION
    ├── NotFound                     404 NOT_FOUND
    ├── AlreadyExists                409 ALREADY_EXISTS
    ├── Aborted                      409 ABORTED (stale etag)
    ├── PermissionDenied             403 PERMISSION_DENIED
    ├── Unauthenticated              401 UNAUTHENTICATED
    ├── ResourceExhausted            429 RESOURCE_EXHAUSTED
    └── Unavailable                  503 UNAVAILABLE

Every parser and the engine raise only these. ``InvalidArgument`` is *the*
documented exception for bad input: malformed names, unknown roles, invalid
members, bad CEL, conditions in a version-1 policy, a group cycle. Its message
is one line, names the field and says what would be accepted.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "Aborted",
    "AlreadyExists",
    "FailedPrecondition",
    "InvalidArgument",
    "KeycardError",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
]


class KeycardError(Exception):
    """Base of every error keycard raises on purpose."""

    http_status: ClassVar[int] = 500
    status: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None, field: str | None = None,
                 metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.status
        self.field = field
        self.metadata = dict(metadata or {})
        if field is not None:
            self.metadata.setdefault("field", field)

    def to_json(self, domain: str = "iam.googleapis.com") -> dict[str, object]:
        """Google's JSON error shape (google.rpc.Status with an ErrorInfo)."""
        return {
            "error": {
                "code": self.http_status,
                "message": self.message,
                "status": self.status,
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": self.reason,
                        "domain": domain,
                        "metadata": self.metadata,
                    }
                ],
            }
        }


class InvalidArgument(KeycardError, ValueError):
    http_status = 400
    status = "INVALID_ARGUMENT"


class FailedPrecondition(KeycardError):
    http_status = 400
    status = "FAILED_PRECONDITION"


class NotFound(KeycardError):
    http_status = 404
    status = "NOT_FOUND"


class AlreadyExists(KeycardError):
    http_status = 409
    status = "ALREADY_EXISTS"


class Aborted(KeycardError):
    http_status = 409
    status = "ABORTED"


class PermissionDenied(KeycardError):
    http_status = 403
    status = "PERMISSION_DENIED"


class Unauthenticated(KeycardError):
    http_status = 401
    status = "UNAUTHENTICATED"


class ResourceExhausted(KeycardError):
    http_status = 429
    status = "RESOURCE_EXHAUSTED"


class Unavailable(KeycardError):
    http_status = 503
    status = "UNAVAILABLE"
