"""Workload identity federation: IAM v1 pools and OIDC providers, and the STS v1 token exchange.

Pools and providers are records of kind ``wi_pool`` / ``wi_provider`` named by their relative
resource names with the project *number* (as Google names them):
``projects/NUMBER/locations/global/workloadIdentityPools/POOL[/providers/PROV]``. The runtime
mirrors them into the identity registry, which STS and the authenticator read: a token minted for a
provider stops working at the next request once its provider or pool is disabled or deleted.
Deletion is soft (``state: DELETED``, a Put with ``deleted=True``) for 30 days; ``undelete`` brings
the resource back, and with it the tokens it issued that have not expired. Mutations answer with an
Operation that is already done, kept for ``operations.get``.

Provider configuration is checked when it is written: ids (4–32 of ``[a-z0-9-]``, no ``gcp-``),
``attributeMapping`` (``google.subject`` required; ``google.groups``; ``attribute.NAME``; each
value a CEL expression over ``assertion``), ``attributeCondition`` (CEL over ``assertion``,
``google`` and ``attribute``, returning bool) and ``oidc`` (an https ``issuerUri``, up to ten
``allowedAudiences``, and an inline ``jwksJson`` of public RSA / P-256 keys: keycard never fetches
an issuer's discovery document). Bad input is a 400 naming the field.

STS (``POST /v1/token``, RFC 8693) verifies the subject token (an OIDC JWT, RS256 or ES256, signed
by a key of the provider's ``jwksJson``, ``iss`` = ``issuerUri``, ``aud`` ∈ ``allowedAudiences`` or
the provider's own name, ``exp``/``iat``/``nbf`` with a minute of skew, at most a day long), maps
its claims, applies the condition and mints a keycard access token for
``principal://iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/subject/SUB``
carrying the provider (``fed``), the mapped groups (``grp``) and attributes (``attr``); the
authenticator turns the last two into the ``principalSet://…/group/G`` and
``…/attribute.NAME/VALUE`` sets the caller belongs to. Failures are OAuth2 errors with 400.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

import jwt
from cel_expr_python import cel  # type: ignore[import-untyped]
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keycard import names
from keycard.engine.conditions import extract_template
from keycard.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from keycard.identity.registry import parse_time
from keycard.identity.tokens import KeySet
from keycard.services.common import Caller, Services, parse_page_size, rfc3339
from keycard.services.credential_audit import audit_sts_exchange
from keycard.store.base import Expect, Put, Record

__all__ = ["POOL_KIND", "PROVIDER_KIND", "StsError", "create_pool", "create_provider", "delete_pool",
           "delete_provider", "exchange_token", "get_operation", "get_pool", "get_provider", "list_pools",
           "list_providers", "patch_pool", "patch_provider", "undelete_pool", "undelete_provider"]

SERVICE = "iam.googleapis.com"
POOL_KIND = "wi_pool"
PROVIDER_KIND = "wi_provider"
UNDELETE_DAYS = 30
_ID_RE = re.compile(r"^[a-z0-9-]{4,32}$")
_ATTRIBUTE_RE = re.compile(r"^attribute\.[a-z0-9_]{1,100}$")
_V1 = "type.googleapis.com/google.iam.v1."
_METHOD = "google.iam.v1.WorkloadIdentityPools."
_DISPLAY_MAX = 32
_DESCRIPTION_MAX = 256
_MAPPING_EXPR_MAX = 2048
_CONDITION_MAX = 4096
_MAX_CUSTOM_ATTRIBUTES = 50
_MAX_AUDIENCES = 10
_AUDIENCE_MAX = 256
_JWKS_MAX = 65_536
_MAX_JWKS_KEYS = 20

# STS
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
_SUBJECT_TYPES = ("urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token")
_AUDIENCE_RE = re.compile(r"^(?:https:)?//iam\.googleapis\.com/(projects/[0-9]{1,20}/locations/global/"
                          r"workloadIdentityPools/[a-z0-9-]{4,32}/providers/[a-z0-9-]{4,32})$")
_SKEW = 60                       # seconds of clock skew allowed on iat / nbf / exp
_MAX_SUBJECT_TOKEN_LIFETIME = 86_400
_MAX_ACCESS_LIFETIME = 3600
_SUBJECT_MAX_BYTES = 127
_MAPPED_MAX_BYTES = 8192
_SUBJECT_TOKEN_MAX = 65_536
_ALGORITHMS = ("RS256", "ES256")


# =========================================================================================== CEL

_T: Any = cel.Type
_MAP: Any = _T.Map(_T.STRING, _T.DYN)
_EXTRACT: Any = cel.FunctionDecl("extract", [cel.Overload("string_extract_string", _T.STRING, [_T.STRING, _T.STRING],
                                                          is_member=True, impl=extract_template)])
_MAPPING_ENV: Any = cel.NewEnv(variables={"assertion": _MAP}, functions=[_EXTRACT])
_CONDITION_ENV: Any = cel.NewEnv(variables={"assertion": _MAP, "google": _MAP, "attribute": _MAP},
                                 functions=[_EXTRACT])
_MAPPING_TYPES = ("string", "dyn", "list")
_ERROR: Any = _T.ERROR


def _cel_message(exc: BaseException) -> str:
    text = str(exc)
    line = next((p.strip() for p in text.splitlines() if p.strip()), "invalid expression")
    for prefix in ("INVALID_ARGUMENT:", "ERROR:", "<input>:"):
        line = line.removeprefix(prefix).strip()
    return re.sub(r"\s*\[[A-Z_]+\]$", "", line.replace(" (in container '')", "")) or "invalid expression"


@functools.lru_cache(maxsize=2048)
def _compile(kind: str, expression: str) -> Any:
    """A compiled CEL program (``kind``: mapping | condition); ValueError(reason) if it does not compile."""
    env = _MAPPING_ENV if kind == "mapping" else _CONDITION_ENV
    try:
        program = env.compile(expression)
        type_name = str(program.return_type().name()).lower()
    except Exception as exc:
        raise ValueError(f"is not a valid CEL expression: {_cel_message(exc)}") from None
    if kind == "condition" and type_name not in ("bool", "dyn"):
        raise ValueError(f"must evaluate to bool, not {type_name}")
    if kind == "mapping" and not type_name.startswith(_MAPPING_TYPES):
        raise ValueError(f"must evaluate to a string (or a list of strings), not {type_name}")
    return program


def _check_expression(kind: str, expression: object, field: str, limit: int) -> str:
    if not isinstance(expression, str) or not expression.strip():
        raise InvalidArgument(f"Invalid {field}: expected a non-empty CEL expression.", field=field)
    if len(expression) > limit:
        raise InvalidArgument(f"Invalid {field}: at most {limit} characters.", field=field)
    try:
        expression.encode("utf-8")
        _compile(kind, expression)
    except UnicodeEncodeError:
        raise InvalidArgument(f"Invalid {field}: not valid Unicode text.", field=field) from None
    except ValueError as e:
        raise InvalidArgument(f"Invalid {field} {expression!r}: {e}.", field=field) from None
    return expression


class _Missing(Exception):
    """A CEL evaluation ended in an error (e.g. a claim the token does not carry)."""


def _cel_value(value: Any, depth: int = 0) -> Any:
    """JSON claims as CEL takes them: integers beyond int64 become doubles (as JSON numbers are in
    google.protobuf.Struct), so one odd claim cannot make every expression fail."""
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else float(value)
    if depth > 32:
        return None
    if isinstance(value, list):
        return [_cel_value(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): _cel_value(v, depth + 1) for k, v in value.items()}
    return str(value)


def _evaluate(kind: str, expression: str, data: Mapping[str, Any]) -> Any:
    try:
        result = _compile(kind, expression).eval(data=dict(data))
        if result.type() == _ERROR:
            raise _Missing(_cel_message(Exception(str(result.value()))))
        value = result.plain_value()
    except _Missing:
        raise
    except Exception as exc:
        raise _Missing(_cel_message(exc)) from None
    return value


# ======================================================================================= helpers

def _bad_id(value: object, field: str, what: str) -> InvalidArgument:
    return InvalidArgument(f"Invalid {field} {value!r}: a {what} id is 4-32 characters of lower-case letters, "
                           "digits and hyphens; the prefix 'gcp-' is reserved.", field=field)


def _check_id(value: object, field: str, what: str) -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value) or value.startswith("gcp-"):
        raise _bad_id(value, field, what)
    return value


def _check_location(location: str, field: str = "parent") -> None:
    if location != "global":
        raise InvalidArgument(f"Invalid {field}: workload identity pools live in location 'global', not "
                              f"{location!r}.", field=field)


def _authorize(svc: Services, caller: Caller, verb: str, resource: str, shown: str) -> None:
    """``verb`` as Google names it in errors (``iam.workloadIdentityPools.get``); the role catalog grants the
    ``iam.googleapis.com/workloadIdentityPools.get`` form, which is what is checked."""
    granted = SERVICE + "/" + verb.removeprefix("iam.")
    try:
        svc.authorize(caller, granted, resource, service=SERVICE, shown=shown)
    except PermissionDenied as e:
        target = shown.split("/", 3)[3]
        raise PermissionDenied(f"Permission '{verb}' denied on resource '{shown}' (or it may not exist).",
                               reason="IAM_PERMISSION_DENIED",
                               metadata={"permission": verb, "resource": target, "domain": SERVICE}) from e


class _Where:
    """A pool or provider as the request named it: canonical names (project by number when known) and shown."""

    def __init__(self, svc: Services, project: str, location: str, pool: str, provider: str | None = None) -> None:
        from keycard.services.resourcemanager import resolve_project
        _check_location(location, "name")
        _check_id(pool, "name", "pool")
        if provider is not None:
            _check_id(provider, "name", "provider")
        self.project_full = resolve_project(svc, project)
        canonical = self.project_full.split("/", 3)[3]                     # projects/NUMBER (or the id, if unknown)
        tail = f"/locations/global/workloadIdentityPools/{pool}" + (f"/providers/{provider}" if provider else "")
        self.relative = canonical + tail
        self.full = f"//{SERVICE}/{self.relative}"
        self.shown = f"//{SERVICE}/projects/{project}{tail}"
        self.pool_relative = canonical + f"/locations/global/workloadIdentityPools/{pool}"
        self.pool_full = f"//{SERVICE}/{self.pool_relative}"
        self.pool_shown = f"//{SERVICE}/projects/{project}/locations/global/workloadIdentityPools/{pool}"
        self.project = project
        self.pool = pool
        self.provider = provider


def _project_active(svc: Services, project_full: str) -> bool:
    rec = svc.runtime.store.get("resource", project_full)
    return rec is not None and rec.data.get("state") == "ACTIVE" and project_full.rsplit("/", 1)[1].isdigit()


def _expired(rec: Record, now: dt.datetime) -> bool:
    """A soft-deleted record past its 30 days: gone for good, as far as any request can tell."""
    if not rec.deleted:
        return False
    expire = parse_time(rec.data.get("expireTime"))
    return expire is not None and now >= expire


def _live_record(svc: Services, kind: str, name: str) -> Record | None:
    rec = svc.runtime.store.get(kind, name)
    return None if rec is None or _expired(rec, svc.clock()) else rec


def _present(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if not k.startswith("keycard")}


def _text(body: Mapping[str, Any], key: str, limit: int, field: str) -> str | None:
    v = body.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or len(v) > limit:
        raise InvalidArgument(f"Invalid {field}: a string of at most {limit} characters.", field=field)
    return v


def _bool(body: Mapping[str, Any], key: str, field: str) -> bool | None:
    v = body.get(key)
    if v is None:
        return None
    if not isinstance(v, bool):
        raise InvalidArgument(f"Invalid {field}: expected true or false.", field=field)
    return v


def _operation(svc: Services, caller: Caller, resource_name: str, response_type: str,
               response: Mapping[str, Any]) -> tuple[dict[str, Any], Put]:
    op_name = f"{resource_name}/operations/{secrets.token_hex(12)}"
    meta = "WorkloadIdentityPoolProviderOperationMetadata" if response_type.endswith("Provider") \
        else "WorkloadIdentityPoolOperationMetadata"
    op: dict[str, Any] = {"name": op_name, "metadata": {"@type": _V1 + meta}, "done": True,
                          "response": {"@type": _V1 + response_type, **_present(response)}}
    return op, Put("operation", op_name, {**op, "keycardCaller": caller.principal or ""})


def _mask(query: Mapping[str, str], body: Mapping[str, Any], allowed: tuple[str, ...]) -> set[str]:
    raw = query.get("updateMask")
    if raw is None:
        raw = body.get("updateMask") if isinstance(body.get("updateMask"), str) else None
    if not raw:
        raise InvalidArgument(f"Invalid updateMask: required; a comma-separated list of {', '.join(allowed)}.",
                              field="updateMask")
    out = set()
    for part in str(raw).split(","):
        p = part.strip()
        p = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), p)           # display_name → displayName
        if p not in allowed:
            raise InvalidArgument(f"Invalid updateMask: {part.strip()!r} cannot be updated; updatable fields are "
                                  f"{', '.join(allowed)}.", field="updateMask")
        out.add(p)
    return out


# ========================================================================================= pools

def _pool_fields(body: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    display = _text(body, "displayName", _DISPLAY_MAX, f"{prefix}displayName")
    if display is not None:
        out["displayName"] = display
    description = _text(body, "description", _DESCRIPTION_MAX, f"{prefix}description")
    if description is not None:
        out["description"] = description
    disabled = _bool(body, "disabled", f"{prefix}disabled")
    if disabled is not None:
        out["disabled"] = disabled
    return out


def _clean(data: dict[str, Any]) -> dict[str, Any]:
    """Google omits empty strings and false booleans from the JSON."""
    return {k: v for k, v in data.items() if v not in ("", False, None)}


def create_pool(svc: Services, caller: Caller, project: str, location: str, pool_id: object,
                body: object) -> dict[str, Any]:
    from keycard.services.resourcemanager import resolve_project, shown_project
    _check_location(location)
    fn = resolve_project(svc, project)
    _authorize(svc, caller, "iam.workloadIdentityPools.create", fn, shown_project(project))
    if not _project_active(svc, fn):
        raise NotFound(f"Project projects/{project} not found.", field="parent")
    if pool_id in (None, ""):
        raise InvalidArgument("Invalid workloadIdentityPoolId: required.", field="workloadIdentityPoolId")
    pid = _check_id(pool_id, "workloadIdentityPoolId", "pool")
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected a WorkloadIdentityPool object.", field="body")
    name = f"{fn.split('/', 3)[3]}/locations/global/workloadIdentityPools/{pid}"
    fields = _pool_fields(body, "")
    old = svc.runtime.store.get(POOL_KIND, name)
    if old is not None and not _expired(old, svc.clock()):
        why = " (it was deleted less than 30 days ago; undelete it or choose another id)" if old.deleted else ""
        raise AlreadyExists(f"Workload identity pool {name} already exists{why}.", field="workloadIdentityPoolId")
    data = _clean({"name": name, **fields})
    data["state"] = "ACTIVE"
    op, op_put = _operation(svc, caller, name, "WorkloadIdentityPool", data)
    svc.commit(caller, puts=[Put(POOL_KIND, name, data, parent=fn), op_put],
               expect=[Expect(POOL_KIND, name, old.revision if old is not None else None)],
               method=_METHOD + "CreateWorkloadIdentityPool", service=SERVICE, resource_name=name,
               request={"parent": f"projects/{project}/locations/global", "workloadIdentityPoolId": pid,
                        "workloadIdentityPool": dict(body)})
    return op


def _pool_record(svc: Services, w: _Where) -> Record:
    rec = _live_record(svc, POOL_KIND, w.pool_relative) if _project_active(svc, w.project_full) else None
    if rec is None:
        raise NotFound(f"Workload identity pool projects/{w.project}/locations/global/workloadIdentityPools/{w.pool} "
                       "not found.", field="name")
    return rec


def get_pool(svc: Services, caller: Caller, project: str, location: str, pool: str) -> dict[str, Any]:
    w = _Where(svc, project, location, pool)
    _authorize(svc, caller, "iam.workloadIdentityPools.get", w.full, w.shown)
    return _present(_pool_record(svc, w).data)


def list_pools(svc: Services, caller: Caller, project: str, location: str, query: Mapping[str, str]
               ) -> dict[str, Any]:
    from keycard.services.resourcemanager import resolve_project, shown_project
    _check_location(location)
    fn = resolve_project(svc, project)
    _authorize(svc, caller, "iam.workloadIdentityPools.list", fn, shown_project(project))
    if not _project_active(svc, fn):
        raise NotFound(f"Project projects/{project} not found.", field="parent")
    return _list(svc, POOL_KIND, fn, query, "workloadIdentityPools")


def _show_deleted(query: Mapping[str, str]) -> bool:
    raw = str(query.get("showDeleted", "false")).lower()
    if raw not in ("true", "false", "1", "0", ""):
        raise InvalidArgument(f"Invalid showDeleted {raw!r}: expected true or false.", field="showDeleted")
    return raw in ("true", "1")


def _list(svc: Services, kind: str, parent: str, query: Mapping[str, str], field: str) -> dict[str, Any]:
    size = parse_page_size(query.get("pageSize"), 50)
    page = svc.runtime.store.list(kind, parent=parent, include_deleted=_show_deleted(query), page_size=size,
                                  page_token=query.get("pageToken", ""))
    now = svc.clock()
    items = [_present(r.data) for r in page.records if not _expired(r, now)]
    out: dict[str, Any] = {field: items} if items else {}
    if page.next_token:
        out["nextPageToken"] = page.next_token
    return out


def patch_pool(svc: Services, caller: Caller, project: str, location: str, pool: str, query: Mapping[str, str],
               body: object) -> dict[str, Any]:
    w = _Where(svc, project, location, pool)
    _authorize(svc, caller, "iam.workloadIdentityPools.update", w.full, w.shown)
    rec = _pool_record(svc, w)
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected a WorkloadIdentityPool object.", field="body")
    fields = _mask(query, body, ("displayName", "description", "disabled"))
    if rec.deleted:
        raise FailedPrecondition(f"Workload identity pool {rec.name} is deleted; undelete it before updating it.",
                                 reason="POOL_DELETED")
    given = _pool_fields(body, "")
    data = dict(rec.data)
    for f in fields:
        data[f] = given.get(f)
    data = _clean(data)
    op, op_put = _operation(svc, caller, rec.name, "WorkloadIdentityPool", data)
    svc.commit(caller, puts=[Put(POOL_KIND, rec.name, data, parent=rec.parent), op_put],
               expect=[Expect(POOL_KIND, rec.name, rec.revision)],
               method=_METHOD + "UpdateWorkloadIdentityPool", service=SERVICE, resource_name=rec.name,
               request={"workloadIdentityPool": dict(body), "updateMask": ",".join(sorted(fields))})
    return op


def delete_pool(svc: Services, caller: Caller, project: str, location: str, pool: str) -> dict[str, Any]:
    w = _Where(svc, project, location, pool)
    _authorize(svc, caller, "iam.workloadIdentityPools.delete", w.full, w.shown)
    rec = _pool_record(svc, w)
    return _soft_delete(svc, caller, rec, "WorkloadIdentityPool", "DeleteWorkloadIdentityPool")


def undelete_pool(svc: Services, caller: Caller, project: str, location: str, pool: str) -> dict[str, Any]:
    w = _Where(svc, project, location, pool)
    _authorize(svc, caller, "iam.workloadIdentityPools.undelete", w.full, w.shown)
    rec = _pool_record(svc, w)
    return _undelete(svc, caller, rec, "WorkloadIdentityPool", "UndeleteWorkloadIdentityPool")


def _soft_delete(svc: Services, caller: Caller, rec: Record, rtype: str, method: str) -> dict[str, Any]:
    kind = "pool" if rtype == "WorkloadIdentityPool" else "provider"
    if rec.deleted:
        raise FailedPrecondition(f"Workload identity {kind} {rec.name} is already deleted.", reason="ALREADY_DELETED")
    now = svc.clock()
    data = {**rec.data, "state": "DELETED", "expireTime": rfc3339(now + dt.timedelta(days=UNDELETE_DAYS))}
    op, op_put = _operation(svc, caller, rec.name, rtype, data)
    svc.commit(caller, puts=[Put(rec.kind, rec.name, data, parent=rec.parent, deleted=True), op_put],
               expect=[Expect(rec.kind, rec.name, rec.revision)],
               method=_METHOD + method, service=SERVICE, resource_name=rec.name, request={"name": rec.name})
    return op


def _undelete(svc: Services, caller: Caller, rec: Record, rtype: str, method: str) -> dict[str, Any]:
    kind = "pool" if rtype == "WorkloadIdentityPool" else "provider"
    if not rec.deleted:
        raise FailedPrecondition(f"Workload identity {kind} {rec.name} is not deleted.", reason="NOT_DELETED")
    data = {k: v for k, v in rec.data.items() if k != "expireTime"}
    data["state"] = "ACTIVE"
    op, op_put = _operation(svc, caller, rec.name, rtype, data)
    svc.commit(caller, puts=[Put(rec.kind, rec.name, data, parent=rec.parent), op_put],
               expect=[Expect(rec.kind, rec.name, rec.revision)],
               method=_METHOD + method, service=SERVICE, resource_name=rec.name, request={"name": rec.name})
    return op


# ===================================================================================== providers

def _check_jwks(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"Invalid {field}: keycard does not fetch issuers' discovery documents; give the "
                              "issuer's public keys inline as a JWKS JSON string ({\"keys\": [...]}).", field=field)
    if len(value) > _JWKS_MAX:
        raise InvalidArgument(f"Invalid {field}: at most {_JWKS_MAX} characters.", field=field)
    try:
        _jwks_keys(value)
    except ValueError as e:
        raise InvalidArgument(f"Invalid {field}: {e}.", field=field) from None
    return value


@functools.lru_cache(maxsize=256)
def _jwks_keys(jwks_json: str) -> tuple[tuple[str | None, str, Any], ...]:
    """(kid, algorithm, public key) for each key of a JWKS; ValueError naming what is wrong."""
    try:
        doc = json.loads(jwks_json)
    except (json.JSONDecodeError, RecursionError):
        raise ValueError("not valid JSON") from None
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ValueError("expected an object with a non-empty 'keys' list")
    if len(keys) > _MAX_JWKS_KEYS:
        raise ValueError(f"at most {_MAX_JWKS_KEYS} keys")
    out: list[tuple[str | None, str, Any]] = []
    kids: set[str] = set()
    for i, k in enumerate(keys):
        if not isinstance(k, dict):
            raise ValueError(f"keys[{i}] is not an object")
        if any(p in k for p in ("d", "p", "q", "dp", "dq", "qi", "k")):
            raise ValueError(f"keys[{i}] holds private or symmetric key material; give public keys only")
        kty, alg, kid = k.get("kty"), k.get("alg"), k.get("kid")
        if kid is not None and (not isinstance(kid, str) or kid in kids):
            raise ValueError(f"keys[{i}].kid must be a string unique within the set")
        if kty == "RSA":
            algorithm = "RS256"
        elif kty == "EC":
            if k.get("crv") != "P-256":
                raise ValueError(f"keys[{i}]: only P-256 EC keys (ES256) are supported")
            algorithm = "ES256"
        else:
            raise ValueError(f"keys[{i}].kty must be RSA or EC")
        if alg is not None and alg != algorithm:
            raise ValueError(f"keys[{i}].alg {alg!r} is not supported; use {algorithm}")
        if k.get("use") not in (None, "sig"):
            raise ValueError(f"keys[{i}].use must be 'sig'")
        try:
            key = jwt.PyJWK({**k, "alg": algorithm}).key
        except Exception as e:
            raise ValueError(f"keys[{i}] is not a valid {kty} public key: {e}") from None
        if isinstance(key, rsa.RSAPublicKey):
            if key.key_size < 2048:
                raise ValueError(f"keys[{i}]: RSA keys must be at least 2048 bits")
        elif not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError(f"keys[{i}] is not a public key")
        if kid is not None:
            kids.add(kid)
        out.append((kid, algorithm, key))
    return tuple(out)


def _check_oidc(value: object, field: str = "oidc") -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"Invalid {field}: expected an object with issuerUri, allowedAudiences and jwksJson.",
                              field=field)
    issuer = value.get("issuerUri")
    parsed = urlparse(issuer) if isinstance(issuer, str) else None
    if parsed is None or parsed.scheme != "https" or not parsed.netloc or len(str(issuer)) > 2048 \
            or any(c.isspace() for c in str(issuer)):
        raise InvalidArgument(f"Invalid {field}.issuerUri {issuer!r}: required, an https:// URL.",
                              field=f"{field}.issuerUri")
    out: dict[str, Any] = {"issuerUri": issuer}
    auds = value.get("allowedAudiences")
    if auds is not None:
        if not isinstance(auds, list) or len(auds) > _MAX_AUDIENCES or not all(
                isinstance(a, str) and 0 < len(a) <= _AUDIENCE_MAX for a in auds):
            raise InvalidArgument(f"Invalid {field}.allowedAudiences: a list of at most {_MAX_AUDIENCES} non-empty "
                                  f"strings of at most {_AUDIENCE_MAX} characters.",
                                  field=f"{field}.allowedAudiences")
        if auds:
            out["allowedAudiences"] = list(dict.fromkeys(auds))
    out["jwksJson"] = _check_jwks(value.get("jwksJson"), f"{field}.jwksJson")
    if value.get("discoveryUri"):
        raise InvalidArgument(f"Invalid {field}.discoveryUri: keycard does not fetch discovery documents; give the "
                              "keys inline in jwksJson.", field=f"{field}.discoveryUri")
    return out


def _check_mapping(value: object, field: str = "attributeMapping") -> dict[str, str]:
    if not isinstance(value, Mapping) or not value:
        raise InvalidArgument(f"Invalid {field}: OIDC providers need an attribute mapping with at least "
                              "'google.subject' (e.g. {\"google.subject\": \"assertion.sub\"}).", field=field)
    out: dict[str, str] = {}
    custom = 0
    for key, expr in value.items():
        if not isinstance(key, str) or not (key in ("google.subject", "google.groups") or _ATTRIBUTE_RE.fullmatch(key)):
            raise InvalidArgument(f"Invalid {field} key {key!r}: use 'google.subject', 'google.groups' or "
                                  "'attribute.NAME' (NAME: 1-100 of [a-z0-9_]).", field=f"{field}")
        custom += key.startswith("attribute.")
        out[key] = _check_expression("mapping", expr, f"{field}['{key}']", _MAPPING_EXPR_MAX)
    if "google.subject" not in out:
        raise InvalidArgument(f"Invalid {field}: 'google.subject' must be mapped (e.g. to assertion.sub).",
                              field=field)
    if custom > _MAX_CUSTOM_ATTRIBUTES:
        raise InvalidArgument(f"Invalid {field}: at most {_MAX_CUSTOM_ATTRIBUTES} custom attributes.", field=field)
    return out


def _provider_fields(body: Mapping[str, Any], fields: set[str] | None) -> dict[str, Any]:
    """Validated provider fields of ``body`` (all of them on create: ``fields`` None)."""
    def wanted(f: str) -> bool:
        return fields is None or f in fields

    for other in ("aws", "saml", "x509"):
        if body.get(other) is not None and wanted(other):
            raise InvalidArgument(f"Invalid {other}: keycard supports OIDC providers only.", field=other)
    out: dict[str, Any] = {}
    if wanted("displayName"):
        out["displayName"] = _text(body, "displayName", _DISPLAY_MAX, "displayName")
    if wanted("description"):
        out["description"] = _text(body, "description", _DESCRIPTION_MAX, "description")
    if wanted("disabled"):
        out["disabled"] = _bool(body, "disabled", "disabled")
    if wanted("attributeMapping"):
        out["attributeMapping"] = _check_mapping(body.get("attributeMapping"))
    if wanted("attributeCondition"):
        cond = body.get("attributeCondition")
        out["attributeCondition"] = None if cond in (None, "") else _check_expression(
            "condition", cond, "attributeCondition", _CONDITION_MAX)
    if wanted("oidc"):
        if body.get("oidc") is None:
            raise InvalidArgument("Invalid oidc: required (keycard supports OIDC providers).", field="oidc")
        out["oidc"] = _check_oidc(body.get("oidc"))
    return out


def create_provider(svc: Services, caller: Caller, project: str, location: str, pool: str,
                    provider_id: object, body: object) -> dict[str, Any]:
    w = _Where(svc, project, location, pool)
    _authorize(svc, caller, "iam.workloadIdentityPoolProviders.create", w.full, w.shown)
    pool_rec = _pool_record(svc, w)
    if provider_id in (None, ""):
        raise InvalidArgument("Invalid workloadIdentityPoolProviderId: required.",
                              field="workloadIdentityPoolProviderId")
    pid = _check_id(provider_id, "workloadIdentityPoolProviderId", "provider")
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected a WorkloadIdentityPoolProvider object.", field="body")
    if pool_rec.deleted:
        raise FailedPrecondition(f"Workload identity pool {pool_rec.name} is deleted; undelete it first.",
                                 reason="POOL_DELETED")
    name = f"{pool_rec.name}/providers/{pid}"
    fields = _provider_fields(body, None)
    old = svc.runtime.store.get(PROVIDER_KIND, name)
    if old is not None and not _expired(old, svc.clock()):
        why = " (it was deleted less than 30 days ago; undelete it or choose another id)" if old.deleted else ""
        raise AlreadyExists(f"Workload identity pool provider {name} already exists{why}.",
                            field="workloadIdentityPoolProviderId")
    data = _clean({"name": name, **fields})
    data["state"] = "ACTIVE"
    op, op_put = _operation(svc, caller, name, "WorkloadIdentityPoolProvider", data)
    svc.commit(caller, puts=[Put(PROVIDER_KIND, name, data, parent=pool_rec.name), op_put],
               expect=[Expect(PROVIDER_KIND, name, old.revision if old is not None else None),
                       Expect(POOL_KIND, pool_rec.name, pool_rec.revision)],
               method=_METHOD + "CreateWorkloadIdentityPoolProvider", service=SERVICE, resource_name=name,
               request={"parent": pool_rec.name, "workloadIdentityPoolProviderId": pid,
                        "workloadIdentityPoolProvider": dict(body)})
    return op


def _provider_record(svc: Services, w: _Where) -> Record:
    rec = _live_record(svc, PROVIDER_KIND, w.relative) if _project_active(svc, w.project_full) else None
    if rec is None:
        raise NotFound(f"Workload identity pool provider projects/{w.project}/locations/global/workloadIdentityPools/"
                       f"{w.pool}/providers/{w.provider} not found.", field="name")
    return rec


def get_provider(svc: Services, caller: Caller, project: str, location: str, pool: str, provider: str
                 ) -> dict[str, Any]:
    w = _Where(svc, project, location, pool, provider)
    _authorize(svc, caller, "iam.workloadIdentityPoolProviders.get", w.full, w.shown)
    return _present(_provider_record(svc, w).data)


def list_providers(svc: Services, caller: Caller, project: str, location: str, pool: str,
                   query: Mapping[str, str]) -> dict[str, Any]:
    w = _Where(svc, project, location, pool)
    _authorize(svc, caller, "iam.workloadIdentityPoolProviders.list", w.full, w.shown)
    pool_rec = _pool_record(svc, w)
    return _list(svc, PROVIDER_KIND, pool_rec.name, query, "workloadIdentityPoolProviders")


_PROVIDER_MASK = ("displayName", "description", "disabled", "attributeMapping", "attributeCondition", "oidc",
                  "oidc.issuerUri", "oidc.allowedAudiences", "oidc.jwksJson")


def patch_provider(svc: Services, caller: Caller, project: str, location: str, pool: str, provider: str,
                   query: Mapping[str, str], body: object) -> dict[str, Any]:
    w = _Where(svc, project, location, pool, provider)
    _authorize(svc, caller, "iam.workloadIdentityPoolProviders.update", w.full, w.shown)
    rec = _provider_record(svc, w)
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected a WorkloadIdentityPoolProvider object.", field="body")
    fields = _mask(query, body, _PROVIDER_MASK)
    if rec.deleted:
        raise FailedPrecondition(f"Workload identity pool provider {rec.name} is deleted; undelete it before "
                                 "updating it.", reason="PROVIDER_DELETED")
    data = dict(rec.data)
    sub = {f.split(".", 1)[1] for f in fields if f.startswith("oidc.")}
    if sub and "oidc" not in fields:
        raw = body.get("oidc")
        given: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        merged = dict(data.get("oidc") or {})
        for f in sub:
            if given.get(f) is None:
                merged.pop(f, None)
            else:
                merged[f] = given[f]
        data["oidc"] = _check_oidc(merged)
    top = {f for f in fields if not f.startswith("oidc.")}
    if top:
        data.update(_provider_fields(body, top))
    data = _clean(data)
    op, op_put = _operation(svc, caller, rec.name, "WorkloadIdentityPoolProvider", data)
    svc.commit(caller, puts=[Put(PROVIDER_KIND, rec.name, data, parent=rec.parent), op_put],
               expect=[Expect(PROVIDER_KIND, rec.name, rec.revision)],
               method=_METHOD + "UpdateWorkloadIdentityPoolProvider", service=SERVICE, resource_name=rec.name,
               request={"workloadIdentityPoolProvider": dict(body), "updateMask": ",".join(sorted(fields))})
    return op


def delete_provider(svc: Services, caller: Caller, project: str, location: str, pool: str, provider: str
                    ) -> dict[str, Any]:
    w = _Where(svc, project, location, pool, provider)
    _authorize(svc, caller, "iam.workloadIdentityPoolProviders.delete", w.full, w.shown)
    rec = _provider_record(svc, w)
    return _soft_delete(svc, caller, rec, "WorkloadIdentityPoolProvider", "DeleteWorkloadIdentityPoolProvider")


def undelete_provider(svc: Services, caller: Caller, project: str, location: str, pool: str, provider: str
                      ) -> dict[str, Any]:
    w = _Where(svc, project, location, pool, provider)
    _authorize(svc, caller, "iam.workloadIdentityPoolProviders.undelete", w.full, w.shown)
    rec = _provider_record(svc, w)
    return _undelete(svc, caller, rec, "WorkloadIdentityPoolProvider", "UndeleteWorkloadIdentityPoolProvider")


def get_operation(svc: Services, caller: Caller, project: str, location: str, pool: str, provider: str | None,
                  op_id: str) -> dict[str, Any]:
    w = _Where(svc, project, location, pool, provider)
    verb = "iam.workloadIdentityPoolProviders.get" if provider else "iam.workloadIdentityPools.get"
    _authorize(svc, caller, verb, w.full, w.shown)
    rec = svc.runtime.store.get("operation", f"{w.relative}/operations/{op_id}")
    if rec is None:
        raise NotFound(f"Operation {w.shown.split('/', 3)[3]}/operations/{op_id} not found.", field="name")
    return {k: v for k, v in rec.data.items() if k != "keycardCaller"}


# =========================================================================================== STS

class StsError(Exception):
    """An OAuth2 error answer of the token exchange (RFC 6749 §5.2, RFC 8693 §2.2.2): always 400."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description

    def to_json(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


_STS_FIELDS = {"grant_type": "grantType", "audience": "audience", "scope": "scope",
               "requested_token_type": "requestedTokenType", "subject_token": "subjectToken",
               "subject_token_type": "subjectTokenType", "actor_token": "actorToken",
               "actor_token_type": "actorTokenType", "options": "options"}


def _sts_request(body: object) -> dict[str, str]:
    """The request's fields by their form (snake_case) names; JSON bodies may use camelCase."""
    if not isinstance(body, Mapping):
        raise StsError("invalid_request", "The request body must be a form or a JSON object.")
    out: dict[str, str] = {}
    for snake, camel in _STS_FIELDS.items():
        value = body.get(snake, body.get(camel))
        if value is None or value == "":
            continue
        if snake == "options" and isinstance(value, Mapping):
            value = json.dumps(value)
        if not isinstance(value, str):
            raise StsError("invalid_request", f'Invalid value for "{snake}": expected a string.')
        out[snake] = value
    return out


def exchange_token(svc: Services, keys: KeySet, body: object) -> dict[str, Any]:
    """STS v1 token exchange: an external OIDC token for a keycard access token of the federated principal."""
    req = _sts_request(body)
    if req.get("grant_type") != TOKEN_EXCHANGE:
        raise StsError("unsupported_grant_type" if "grant_type" in req else "invalid_request",
                       f'Invalid value for "grant_type": expected {TOKEN_EXCHANGE}.')
    m = _AUDIENCE_RE.fullmatch(req.get("audience", ""))
    if m is None:
        raise StsError("invalid_request", 'Invalid value for "audience". This value should be the full resource '
                                          "name of the Identity Provider, "
                                          "//iam.googleapis.com/projects/NUMBER/locations/global/"
                                          "workloadIdentityPools/POOL/providers/PROVIDER.")
    if req.get("requested_token_type", ACCESS_TOKEN_TYPE) != ACCESS_TOKEN_TYPE:
        raise StsError("invalid_request", f'Invalid value for "requested_token_type": expected {ACCESS_TOKEN_TYPE}.')
    if "actor_token" in req or "actor_token_type" in req:
        raise StsError("invalid_request", "Actor tokens are not supported by workload identity pools here.")
    if req.get("subject_token_type") not in _SUBJECT_TYPES:
        raise StsError("invalid_request", 'Invalid value for "subject_token_type": OIDC providers take '
                                          f"{' or '.join(_SUBJECT_TYPES)}.")
    subject_token = req.get("subject_token")
    if not subject_token:
        raise StsError("invalid_request", 'Missing required parameter "subject_token".')
    scopes = req.get("scope", "").split()
    if len(scopes) > 100 or any(len(s) > 256 for s in scopes):
        raise StsError("invalid_scope", "Too many or too long scopes.")
    provider_name = m.group(1)
    registry = svc.runtime.identities
    provider = registry.providers.get(provider_name)
    if provider is None or not registry.provider_live(provider_name):
        raise StsError("invalid_target", 'The target service indicated by the "audience" parameters is invalid. '
                                         "This might either be because the pool or provider is disabled or deleted "
                                         "or because it doesn't exist.")
    now = svc.clock()
    claims = _verify_subject_token(subject_token, provider, provider_name, now)
    subject, groups, attrs = _map_attributes(provider, claims)
    pool_name = provider_name.split("/providers/", 1)[0]
    principal = f"principal://iam.googleapis.com/{pool_name}/subject/{subject}"
    try:
        names.parse_member(principal)
    except InvalidArgument:
        raise StsError("invalid_grant", "The mapped google.subject cannot be used in an IAM principal identifier "
                                        "(it must not contain whitespace).") from None
    condition = provider.get("attributeCondition")
    if isinstance(condition, str) and condition:
        data = {"assertion": _cel_value(claims), "google": {"subject": subject, "groups": groups},
                "attribute": attrs}
        try:
            ok = _evaluate("condition", condition, data)
        except _Missing:
            ok = False
        if ok is not True:
            raise StsError("invalid_grant", "The given credential is rejected by the attribute condition.")
    exp = int(claims["exp"])
    lifetime = min(_MAX_ACCESS_LIFETIME, exp - int(now.timestamp()))
    if lifetime < 1:
        raise StsError("invalid_grant", "The subject token has expired.")
    extra: dict[str, Any] = {"fed": provider_name}
    if groups:
        extra["grp"] = groups
    if attrs:
        extra["attr"] = attrs
    at = keys.mint(principal, now=now, lifetime=lifetime, scopes=scopes, extra=extra)
    audit_sts_exchange(svc, principal=principal, provider=provider_name, request=req, subject=subject, groups=groups,
                       attributes=attrs, lifetime=lifetime)
    return {"access_token": at.token, "issued_token_type": ACCESS_TOKEN_TYPE, "token_type": "Bearer",
            "expires_in": lifetime}


def _grant(description: str) -> StsError:
    return StsError("invalid_grant", description)


def _verify_subject_token(token: str, provider: Mapping[str, Any], provider_name: str,
                          now: dt.datetime) -> dict[str, Any]:
    if len(token) > _SUBJECT_TOKEN_MAX or token.count(".") != 2:
        raise _grant("The subject token is not a JWT.")
    oidc = provider.get("oidc") if isinstance(provider.get("oidc"), Mapping) else None
    if oidc is None:
        raise StsError("invalid_target", "The provider has no OIDC configuration.")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise _grant("The subject token is not a valid JWT.") from None
    alg = header.get("alg")
    if alg not in _ALGORITHMS:
        raise _grant(f"The subject token's signing algorithm {alg!r} is not supported; RS256 or ES256 are.")
    if any(h in header for h in ("jku", "jwk", "x5u", "x5c")):
        raise _grant("The subject token's header names its own key; keys come only from the provider's JWKS.")
    try:
        jwks = _jwks_keys(str(oidc.get("jwksJson", "")))
    except ValueError:
        raise _grant("The provider's JWKS is unusable.") from None
    kid = header.get("kid")
    candidates = [k for k in jwks if k[1] == alg and (kid is None or k[0] == kid)]
    if kid is None and len(candidates) > 1:
        raise _grant("The subject token has no kid and the provider's JWKS holds several keys.")
    if not candidates:
        raise _grant(f"The subject token's key {kid!r} is not in the provider's JWKS (Invalid JWT signature).")
    try:
        claims: dict[str, Any] = jwt.decode(
            token, candidates[0][2], algorithms=[alg], leeway=_SKEW,
            options={"require": ["exp", "iat", "iss", "aud"], "verify_aud": False, "verify_iss": False,
                     "verify_exp": True, "verify_iat": True, "verify_nbf": True},
        )
    except jwt.ExpiredSignatureError:
        raise _grant("The subject token has expired.") from None
    except jwt.ImmatureSignatureError:
        raise _grant("The subject token is not valid yet (nbf or iat in the future).") from None
    except jwt.InvalidSignatureError:
        raise _grant("Invalid JWT signature.") from None
    except jwt.PyJWTError as e:
        raise _grant(f"The subject token is invalid: {e}.") from None
    try:
        exp, iat = int(claims["exp"]), int(claims["iat"])
    except (TypeError, ValueError):
        raise _grant("The subject token's exp and iat must be numbers.") from None
    ts = int(now.timestamp())
    if iat > ts + _SKEW:
        raise _grant("The subject token was issued in the future.")
    if exp - iat > _MAX_SUBJECT_TOKEN_LIFETIME:
        raise _grant("The subject token's lifetime (exp - iat) exceeds 24 hours.")
    if claims["iss"] != oidc.get("issuerUri"):
        raise _grant(f"The issuer in the subject token [{str(claims['iss'])[:200]}] does not match the provider's "
                     "issuer URI.")
    allowed = list(oidc.get("allowedAudiences") or []) or [f"//iam.googleapis.com/{provider_name}",
                                                            f"https://iam.googleapis.com/{provider_name}"]
    aud = claims["aud"]
    auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if not any(isinstance(a, str) and a in allowed for a in auds):
        raise _grant(f"The audience in the subject token [{str(aud)[:200]}] does not match the expected audience.")
    return claims


def _strings(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v for v in value if v]
    raise _grant(f"The mapped attribute {what} must be a string or a list of strings.")


def _map_attributes(provider: Mapping[str, Any], claims: Mapping[str, Any]
                    ) -> tuple[str, list[str], dict[str, str | list[str]]]:
    mapping = provider.get("attributeMapping")
    if not isinstance(mapping, Mapping) or "google.subject" not in mapping:
        raise _grant("The provider has no mapping for google.subject.")
    data = {"assertion": _cel_value(dict(claims))}
    try:
        subject = _evaluate("mapping", str(mapping["google.subject"]), data)
    except _Missing as e:
        raise _grant(f"The mapped attribute google.subject is empty: attributeMapping['google.subject'] "
                     f"({mapping['google.subject']}) has no value for this credential ({e}).") from None
    if not isinstance(subject, str) or not subject:
        raise _grant("The mapped attribute google.subject must be a non-empty string.")
    if len(subject.encode()) > _SUBJECT_MAX_BYTES:
        raise _grant(f"The mapped attribute google.subject exceeds {_SUBJECT_MAX_BYTES} bytes.")
    groups: list[str] = []
    attrs: dict[str, str | list[str]] = {}
    size = len(subject.encode())
    for key, expr in mapping.items():
        if key == "google.subject":
            continue
        try:
            value = _evaluate("mapping", str(expr), data)
        except _Missing:
            continue                                   # a claim this credential does not carry: not mapped
        if value is None:
            continue
        values = _strings(value, key)
        if not values:
            continue
        size += sum(len(v.encode()) for v in values)
        if key == "google.groups":
            groups = list(dict.fromkeys(values))
        elif key.startswith("attribute."):
            attrs[key[len("attribute."):]] = values[0] if isinstance(value, str) else values
    if size > _MAPPED_MAX_BYTES:
        raise _grant(f"The mapped attributes exceed {_MAPPED_MAX_BYTES} bytes.")
    return subject, groups, attrs
