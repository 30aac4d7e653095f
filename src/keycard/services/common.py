"""What every service needs: the caller, authorization by keycard's own IAM, audit entries, commits."""

from __future__ import annotations

import datetime as dt
import random as _random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from keycard import names
from keycard.errors import InvalidArgument, PermissionDenied
from keycard.runtime import Runtime
from keycard.services.access_record import AccessRecorder
from keycard.storage.blobs import BlobStore
from keycard.store.base import Delete, Expect, Put

__all__ = ["Caller", "Services", "parse_page_size", "rfc3339"]


def parse_page_size(value: object, default: int) -> int:
    """A request's ``pageSize``: absent or 0 → ``default``; capped at 1,000; otherwise 400 naming it."""
    if value in (None, ""):
        return default
    try:
        n = int(str(value))
    except ValueError:
        n = -1
    if n < 0:
        raise InvalidArgument(f"Invalid pageSize {value!r}: expected a non-negative integer.", field="pageSize")
    return min(n or default, 1000)


def rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(slots=True)
class Caller:
    """The authenticated principal of one request (None: unauthenticated) and what it saw."""

    principal: str | None
    authorizations: list[dict[str, Any]] = field(default_factory=list)
    would_deny: list[str] = field(default_factory=list)
    revision: int | None = None           # set by a write: the consistency token to return
    resource: str | None = None           # full name of the first resource authorized (for Data Access logs)
    claims: Mapping[str, Any] | None = None   # the verified credential's claims (scope, key id, provider, …)
    # the sets the credential puts the caller in, for this request only (a federated token's principal sets,
    # an IdP token's groups): every check of this caller passes them to the engine as extra_members
    extra_members: frozenset[str] | None = None     # None: no sets (the engine's fast path)

    @property
    def email(self) -> str:
        if self.principal is None:
            return ""
        return names.member_email(self.principal) or self.principal


@dataclass(slots=True)
class Services:
    runtime: Runtime
    clock: Callable[[], dt.datetime]
    enforcement: str = "enforce"               # or "dry-run"
    organization: str | None = None            # full name of the installation's organization
    blobs: BlobStore | None = None             # object data of the storage API (None: storage is off)
    training_enabled: bool = False             # ml training jobs run code as the server's OS user: opt-in
    access: AccessRecorder | None = None       # the access record every authorize() feeds (None: off)

    # ------------------------------------------------------------------------- authorization
    def authorize(self, caller: Caller, permission: str, resource: str, *, service: str,
                  shown: str | None = None) -> None:
        """Check ``permission`` on ``resource`` (full name) for the caller; 403 unless granted.

        The check comes before any existence check, so a caller without the permission learns
        nothing about whether the resource exists.
        ``shown``: the full name as the caller wrote it (a project id stays an id), so the answer
        never reveals what it resolved to.
        """
        now = self.clock()
        d = self.runtime.engine.check(caller.principal, permission, resource, time=now,
                                      extra_members=caller.extra_members)
        if self.access is not None:
            self.access.record(caller.principal, permission, resource, d.allowed, now)
        named = shown or resource
        target = _relative(named)
        caller.authorizations.append({"resource": target, "permission": permission, "granted": d.allowed})
        if caller.resource is None:
            caller.resource = resource
        if d.allowed:
            return
        if self.enforcement == "dry-run":
            caller.would_deny.append(f"{permission} on {target}")
            return
        raise PermissionDenied(
            f"Permission '{permission}' denied on resource '{named}' (or it may not exist).",
            reason="IAM_PERMISSION_DENIED", metadata={"permission": permission, "resource": target,
                                                      "domain": service})

    def allowed(self, caller: Caller, permission: str, resource: str) -> bool:
        return self.runtime.engine.check(caller.principal, permission, resource, time=self.clock(),
                                      extra_members=caller.extra_members).allowed

    # --------------------------------------------------------------------------------- writes
    def commit(self, caller: Caller, *, puts: Sequence[Put] = (), deletes: Sequence[Delete] = (),
               expect: Sequence[Expect] = (), method: str, service: str, resource_name: str,
               request: Mapping[str, Any] | None = None, response: Mapping[str, Any] | None = None,
               service_data: Mapping[str, Any] | None = None, parsed: Mapping[tuple[str, str], Any] | None = None,
               redacted: bool = False) -> int:
        """One transaction: the writes and their Admin Activity audit entry; then the engine catches up.

        ``parsed``: (kind, name) → the engine's form of that put's data, exactly what parsing it would
        give; applying the record (by whichever thread catches up first) uses it instead of parsing.
        ``redacted``: the caller has checked that ``request`` and ``response`` hold no secret (e.g. a policy
        made only of a policy's own fields): recorded as they are, without the redaction walk."""
        entry = self.audit_entry(caller, method=method, service=service, resource_name=resource_name,
                                 request=request, response=response, service_data=service_data,
                                 log="activity", redacted=redacted)
        runtime = self.runtime
        mine: dict[tuple[str, str], tuple[Mapping[str, Any], Any]] = {}
        if parsed:
            data = {(p.kind, p.name): p.data for p in puts}
            mine = {key: (data[key], value) for key, value in parsed.items() if key in data}
            runtime.parsed.update(mine)
        try:
            revision = runtime.store.commit(puts, deletes, expect=expect, audit=[entry])
            if runtime.applied < revision:   # a concurrent writer's catch-up may have applied it already
                runtime.catch_up()
        finally:
            for key, value in mine.items():
                if runtime.parsed.get(key) is value:
                    runtime.parsed.pop(key, None)
        caller.revision = revision
        return revision

    def data_access_enabled(self, caller: Caller, resource: str, service: str, log_type: str) -> bool:
        """Do the auditConfigs on the resource or its ancestors turn on ``log_type`` for ``service``?"""
        engine = self.runtime.engine
        enabled = False
        for node in engine.ancestry(resource):
            policy = engine.get_iam_policy(node)
            if policy is None:
                continue
            for cfg in policy.audit_configs:
                if cfg.get("service") not in ("allServices", service):
                    continue
                for lc in cfg.get("auditLogConfigs", []) or []:
                    kind = lc.get("logType") if isinstance(lc, Mapping) else None
                    kind = _LOG_TYPES.get(kind, kind) if isinstance(kind, int) else kind
                    if kind != log_type:
                        continue
                    exempt = {str(m).lower() for m in lc.get("exemptedMembers", []) or []}
                    if caller.principal is not None and caller.principal.lower() in exempt:
                        return False
                    enabled = True
        return enabled

    def audit_read(self, caller: Caller, *, method: str, service: str, log_type: str) -> None:
        """Write a Data Access entry for a successful read when auditConfigs ask for it."""
        if caller.resource is None or not self.data_access_enabled(caller, caller.resource, service, log_type):
            return
        entry = self.audit_entry(caller, method=method, service=service, resource_name=_relative(caller.resource),
                                 request=None, response=None, service_data=None, log="data_access")
        self.runtime.store.append_audit([entry])

    def audit_entry(self, caller: Caller, *, method: str, service: str, resource_name: str,
                    request: Mapping[str, Any] | None, response: Mapping[str, Any] | None,
                    service_data: Mapping[str, Any] | None, log: str, redacted: bool = False) -> dict[str, Any]:
        now = self.clock()
        org = (self.organization or "").split("/")[-2:]
        parent = "/".join(org) if len(org) == 2 else "organizations/0"
        payload: dict[str, Any] = {
            "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
            "authenticationInfo": {"principalEmail": caller.email} if caller.principal else {},
            "authorizationInfo": list(caller.authorizations),
            "methodName": method,
            "serviceName": service,
            "resourceName": resource_name,
        }
        if request is not None:
            payload["request"] = dict(request) if redacted else redact(request)
        if response is not None:
            payload["response"] = dict(response) if redacted else redact(response)
        if service_data is not None:
            payload["serviceData"] = dict(service_data)
        entry: dict[str, Any] = {
            "logName": f"{parent}/logs/cloudaudit.googleapis.com%2F{log}",
            "insertId": f"{_random.getrandbits(64):016x}",   # unique, not secret: no urandom call (it
            # releases the GIL, and under 8 busy request threads getting it back cost more than the call)
            "timestamp": rfc3339(now),
            "severity": "NOTICE" if log == "activity" else "INFO",
            "protoPayload": payload,
        }
        if self.enforcement != "enforce":
            entry["labels"] = {"keycard.dev/enforcement": self.enforcement}
            if caller.would_deny:
                entry["labels"]["keycard.dev/would-deny"] = "; ".join(caller.would_deny)
        return entry


_LOG_TYPES = {0: "LOG_TYPE_UNSPECIFIED", 1: "ADMIN_READ", 2: "DATA_WRITE", 3: "DATA_READ"}

_SECRET_KEYS = {"privateKeyData", "private_key", "privateKey", "access_token", "accessToken", "assertion",
                "client_secret", "subject_token", "subjectToken", "id_token", "idToken", "password", "token",
                "signedJwt", "signedBlob"}


def redact(value: Any) -> Any:
    """Copy of a request/response with secrets replaced, for audit records and logs."""
    if isinstance(value, Mapping):
        return {k: ("[REDACTED]" if k in _SECRET_KEYS else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _relative(full: str) -> str:
    return full.split("/", 3)[3] if full.startswith("//") else full
