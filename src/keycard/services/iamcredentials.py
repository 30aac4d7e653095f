"""IAM Service Account Credentials v1: generateAccessToken, generateIdToken, signJwt, signBlob.

Who may impersonate whom, as Google checks it. The caller needs the method's permission
(``iam.serviceAccounts.getAccessToken`` / ``getOpenIdToken`` / ``signJwt`` / ``signBlob``, all in
``roles/iam.serviceAccountTokenCreator``) on the target account. With ``delegates``
(``projects/-/serviceAccounts/EMAIL_OR_UNIQUE_ID``, a delegation chain) the caller instead needs
``iam.serviceAccounts.getAccessToken`` on the first delegate, each delegate the same on the next one,
and the last delegate the method's permission on the target: "each service account in the chain
must be granted the Service Account Token Creator role on the next service account in the chain".
Every hop is checked before anything is revealed about the account it names: a caller without the
permission gets the same 403 whether the account exists or not. An account in the chain that is
deleted or unknown → 404, disabled → 400 FAILED_PRECONDITION. Federated callers
(``principal://…``) are checked the same way: ``roles/iam.workloadIdentityUser`` carries
``getAccessToken``.

Tokens: an access token of ``serviceAccount:EMAIL`` carrying ``uid`` (so it dies with the account)
and ``act`` (RFC 8693: the outermost actor is the last delegate, nested down to the caller and the
caller's own ``act``); a federated caller's ``fed`` claim is kept, so disabling the provider also
kills the service-account tokens obtained through it (safer than Google). Lifetime 1 hour by
default and at most; up to 12 hours when the organization policy list constraint
``iam.allowServiceAccountCredentialLifetimeExtension`` allows the account's email.

Signing: signJwt and signBlob sign with the account's Google-managed (``SYSTEM_MANAGED``) key, made
on first use: RSA 2048, valid two weeks, replaced once less than 12 hours of validity remain so that
every signature stays verifiable for at least 12 hours, as Google promises. Its public half is an
ordinary ``sa_key`` record (listed by keys.list with ``keyTypes=SYSTEM_MANAGED``, served by keys.get in
X.509, trusted by the self-signed-JWT verifier); its private half is server-held key material in a
``system_key`` record, like the server's own signing keys — never returned by any API, never in an
audit record. User-managed private keys are never stored.

The IAM v1 methods ``signBlob`` (``bytesToSign`` → ``{keyId, signature}``) and ``signJwt`` share
these paths; :func:`sign_blob` answers both shapes, told apart by the body.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import math
import re
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from keycard import names
from keycard.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from keycard.identity.registry import ServiceAccount
from keycard.identity.tokens import KeySet
from keycard.services.common import Caller, Services
from keycard.services.credential_audit import audit_iam_credentials
from keycard.store.base import Delete, Expect, Put

__all__ = ["DEFAULT_LIFETIME", "EXTENDED_MAX_LIFETIME", "LIFETIME_CONSTRAINT", "MAX_LIFETIME", "SERVICE",
           "SystemKeys", "generate_access_token", "generate_id_token", "sign_blob", "sign_jwt"]

SERVICE = "iamcredentials.googleapis.com"
IAM = "iam.googleapis.com"
DEFAULT_LIFETIME = 3600
MAX_LIFETIME = 3600
EXTENDED_MAX_LIFETIME = 43200
LIFETIME_CONSTRAINT = "iam.allowServiceAccountCredentialLifetimeExtension"
ID_TOKEN_LIFETIME = 3600
SIGNED_JWT_DEFAULT_LIFETIME = 3600
SIGNED_JWT_MAX_AHEAD = 12 * 3600
SYSTEM_KEY_VALIDITY = dt.timedelta(days=14)
SYSTEM_KEY_MIN_REMAINING = dt.timedelta(hours=12)     # a signature stays verifiable at least this long
_GET_ACCESS_TOKEN = "iam.serviceAccounts.getAccessToken"
_DELEGATE = re.compile(r"^projects/-/serviceAccounts/([^/]+)$")
_DURATION = re.compile(r"^(-?)(\d+)(?:\.(\d{1,9}))?s$")


# ------------------------------------------------------------------------- the delegation chain

def _shown(account: str) -> str:
    return f"//{IAM}/projects/-/serviceAccounts/{account}"


def _where(project: str, account: str) -> str | None:
    """The full name to check a permission on for an account that does not exist (None: nowhere)."""
    if project != "-":
        return f"//{IAM}/projects/{project}/serviceAccounts/{account}"
    local, _, domain = account.lower().partition("@")
    if local and domain.endswith(".iam.gserviceaccount.com") and domain.count(".") == 3:
        return f"//{IAM}/projects/{domain.split('.', 1)[0]}/serviceAccounts/{account.lower()}"
    return None


def _hop(svc: Services, caller: Caller, actor: str | None, permission: str, project: str, account: str,
         fld: str) -> ServiceAccount:
    """``actor`` (None: the caller) must hold ``permission`` on ``account``; then it must exist and be
    enabled. The 403 is the same whether or not the account exists."""
    acct = svc.runtime.identities.account(account)
    if acct is not None and (acct.deleted or (project != "-" and project not in (acct.project_id,
                                                                                 acct.project_number))):
        acct = None
    target = acct.resource if acct is not None else _where(project, account)
    shown = f"//{IAM}/projects/{project}/serviceAccounts/{account}"
    if actor is None:
        if target is None:
            _deny(svc, caller, permission, shown, None)
        else:
            svc.authorize(caller, permission, target, service=IAM, shown=shown)
    else:
        granted = target is not None and svc.runtime.engine.check(actor, permission, target,
                                                                  time=svc.clock()).allowed
        caller.authorizations.append({"resource": shown.split("/", 3)[3], "permission": permission,
                                      "granted": granted, "principal": actor})
        if not granted:
            _deny(svc, caller, permission, shown, actor)
    if acct is None:
        raise NotFound(f"Service account {shown.split('/', 3)[3]} not found ({fld}).", field=fld,
                       reason="SERVICE_ACCOUNT_NOT_FOUND")
    if acct.disabled:
        raise FailedPrecondition(f"Service account {acct.email} ({fld}) is disabled; enable it first.",
                                 reason="SERVICE_ACCOUNT_DISABLED", metadata={"field": fld})
    return acct


def _deny(svc: Services, caller: Caller, permission: str, shown: str, actor: str | None) -> None:
    relative = shown.split("/", 3)[3]
    if svc.enforcement == "dry-run":
        caller.would_deny.append(f"{permission} on {relative}" + (f" for {actor}" if actor else ""))
        return
    who = f" for delegate {actor}" if actor else ""
    raise PermissionDenied(f"Permission '{permission}' denied on resource '{shown}'{who} (or it may not exist).",
                           reason="IAM_PERMISSION_DENIED",
                           metadata={"permission": permission, "resource": relative, "domain": IAM,
                                     **({"principal": actor} if actor else {})})


def _delegates(body: Mapping[str, Any]) -> list[str]:
    raw = body.get("delegates")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidArgument("Invalid delegates: expected a list of 'projects/-/serviceAccounts/EMAIL_OR_UNIQUE_ID'.",
                              field="delegates")
    out = []
    for i, d in enumerate(raw):
        m = _DELEGATE.match(d) if isinstance(d, str) else None
        if m is None:
            raise InvalidArgument(f"Invalid delegates[{i}] {d!r}: expected 'projects/-/serviceAccounts/"
                                  "EMAIL_OR_UNIQUE_ID' (the '-' wildcard is required).", field=f"delegates[{i}]")
        out.append(m.group(1))
    return out


def _chain(svc: Services, caller: Caller, project: str, account: str, body: Mapping[str, Any], permission: str
           ) -> tuple[ServiceAccount, list[ServiceAccount]]:
    """Check the whole chain caller → delegates… → target; return (target, delegates)."""
    if not account:
        raise InvalidArgument("Invalid name: expected projects/-/serviceAccounts/EMAIL_OR_UNIQUE_ID.", field="name")
    ids = _delegates(body)
    delegates: list[ServiceAccount] = []
    actor: str | None = None
    for i, ident in enumerate(ids):
        d = _hop(svc, caller, actor, _GET_ACCESS_TOKEN, "-", ident, f"delegates[{i}]")
        delegates.append(d)
        actor = d.member
    target = _hop(svc, caller, actor, permission, project, account, "name")
    return target, delegates


def _body(body: object) -> Mapping[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected a JSON object.", field="body")
    return body


def _wildcard_only(project: str) -> None:
    if project != "-":
        raise InvalidArgument(f"Invalid name projects/{project}/serviceAccounts/…: IAM Credentials takes "
                              "projects/-/serviceAccounts/EMAIL_OR_UNIQUE_ID (the '-' wildcard is required).",
                              field="name")


# ------------------------------------------------------------------------------------ access tokens

def parse_lifetime(raw: object) -> int:
    """A google.protobuf.Duration in JSON (``"600s"``, ``"1.5s"``) → whole seconds (rounded up); unset → default."""
    if raw is None or raw == "":
        return DEFAULT_LIFETIME
    m = _DURATION.match(raw) if isinstance(raw, str) else None
    if m is None:
        raise InvalidArgument(f"Invalid lifetime {raw!r}: expected a duration in seconds such as \"3600s\".",
                              field="lifetime")
    if m.group(1):
        raise InvalidArgument(f"Invalid lifetime {raw!r}: must not be negative.", field="lifetime")
    seconds = math.ceil(int(m.group(2)) + (int(m.group(3).ljust(9, "0")) / 1e9 if m.group(3) else 0))
    return seconds or DEFAULT_LIFETIME


def _max_lifetime(svc: Services, acct: ServiceAccount) -> int:
    from keycard.services.orgpolicy_api import effective
    eff = effective(svc, LIFETIME_CONSTRAINT, acct.resource)
    email = acct.email.lower()
    if eff.deny_all or email in {v.lower() for v in eff.denied_values}:
        return MAX_LIFETIME
    if eff.allow_all or email in {v.lower() for v in eff.allowed_values}:
        return EXTENDED_MAX_LIFETIME
    return MAX_LIFETIME


def _scopes(body: Mapping[str, Any]) -> list[str]:
    raw = body.get("scope")
    if isinstance(raw, str):
        raw = raw.split()
    if not isinstance(raw, list) or not raw or not all(isinstance(s, str) and s.strip() for s in raw):
        raise InvalidArgument("Invalid scope: at least one OAuth 2.0 scope is required, e.g. "
                              "[\"https://www.googleapis.com/auth/cloud-platform\"].", field="scope")
    return list(dict.fromkeys(s.strip() for s in raw))


def _act(caller: Caller, delegates: list[ServiceAccount]) -> dict[str, Any]:
    """RFC 8693 ``act``: the current actor outermost, the original caller innermost."""
    act: dict[str, Any] = {"sub": caller.principal}
    prior = (caller.claims or {}).get("act")
    if isinstance(prior, Mapping):
        act["act"] = dict(prior)
    for d in delegates:
        act = {"sub": d.member, "act": act}
    return act


def generate_access_token(svc: Services, caller: Caller, keys: KeySet, project: str, account: str, body: object
                          ) -> dict[str, Any]:
    body = _body(body)
    _wildcard_only(project)
    scopes = _scopes(body)
    lifetime = parse_lifetime(body.get("lifetime"))
    target, delegates = _chain(svc, caller, project, account, body, _GET_ACCESS_TOKEN)
    limit = _max_lifetime(svc, target)
    if lifetime > limit:
        how = (f" Up to {EXTENDED_MAX_LIFETIME}s (12 hours) needs an organization policy on "
               f"constraints/{LIFETIME_CONSTRAINT} that allows {target.email}." if limit == MAX_LIFETIME else "")
        raise InvalidArgument(f"Invalid lifetime {lifetime}s: the maximum for {target.email} is {limit}s.{how}",
                              field="lifetime", reason="LIFETIME_TOO_LONG")
    extra: dict[str, Any] = {"uid": target.unique_id, "act": _act(caller, delegates)}
    fed = (caller.claims or {}).get("fed")
    if fed is not None:
        extra["fed"] = fed
    at = keys.mint(target.member, now=svc.clock(), lifetime=lifetime, scopes=scopes, extra=extra)
    audit_iam_credentials(svc, caller, method="GenerateAccessToken", target=target, delegates=delegates, body=body)
    return {"accessToken": at.token, "expireTime": at.expires_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


# ---------------------------------------------------------------------------------------- ID tokens

def _organization_number(svc: Services, acct: ServiceAccount) -> str | None:
    for node in reversed(svc.runtime.engine.ancestry(acct.resource)):
        if node.startswith(f"//{names.CRM}/organizations/"):
            return node.rsplit("/", 1)[1]
    return None


def generate_id_token(svc: Services, caller: Caller, keys: KeySet, issuer: str, project: str, account: str,
                      body: object) -> dict[str, Any]:
    body = _body(body)
    _wildcard_only(project)
    audience = body.get("audience")
    if not isinstance(audience, str) or not audience.strip():
        raise InvalidArgument("Invalid audience: required, the API or client the ID token is for, e.g. "
                              "\"https://my-service.example.com\".", field="audience")
    for flag in ("includeEmail", "organizationNumberIncluded"):
        if not isinstance(body.get(flag, False), bool):
            raise InvalidArgument(f"Invalid {flag}: expected true or false.", field=flag)
    target, delegates = _chain(svc, caller, project, account, body, "iam.serviceAccounts.getOpenIdToken")
    extra: dict[str, Any] = {"azp": target.unique_id}
    if body.get("includeEmail"):
        extra.update(email=target.email, email_verified=True)
    if body.get("organizationNumberIncluded"):
        number = _organization_number(svc, target)
        extra["google"] = {"organization_number": int(number) if number else None}
    token = keys.mint_id_token(issuer=issuer, subject=target.unique_id, audience=audience.strip(), now=svc.clock(),
                               lifetime=ID_TOKEN_LIFETIME, extra=extra)
    audit_iam_credentials(svc, caller, method="GenerateIdToken", target=target, delegates=delegates, body=body)
    return {"token": token}


# ------------------------------------------------------------------------ Google-managed signing keys

@dataclass(slots=True)
class SystemKeys:
    """Loaded private halves of system-managed keys (key id → key), per app: loading a PEM costs more
    than signing. Key ids are never reused, so an entry never goes stale."""

    loaded: dict[str, rsa.RSAPrivateKey]
    lock: threading.Lock

    @classmethod
    def new(cls) -> SystemKeys:
        return cls({}, threading.Lock())

    def get(self, svc: Services, key_id: str) -> rsa.RSAPrivateKey | None:
        hit = self.loaded.get(key_id)
        if hit is not None:
            return hit
        rec = svc.runtime.store.get("system_key", key_id)
        if rec is None:
            return None
        key = serialization.load_pem_private_key(str(rec.data["privateKeyPem"]).encode(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            return None
        with self.lock:
            if len(self.loaded) >= 10_000:
                self.loaded.clear()
            self.loaded[key_id] = key
        return key


def _ts(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def signing_key(svc: Services, caller: Caller, acct: ServiceAccount, cache: SystemKeys
                ) -> tuple[str, rsa.RSAPrivateKey]:
    """The account's current system-managed key, made (and expired ones dropped) when there is none."""
    for _attempt in range(3):
        now = svc.clock()
        live = [k for k in svc.runtime.identities.keys_of(acct.email)
                if k.key_type == "SYSTEM_MANAGED" and k.unique_id == acct.unique_id and k.usable_at(now)
                and k.valid_before - now >= SYSTEM_KEY_MIN_REMAINING]
        for k in sorted(live, key=lambda k: (k.valid_after, k.key_id), reverse=True):
            private = cache.get(svc, k.key_id)
            if private is not None:
                return k.key_id, private
        try:
            return _new_system_key(svc, caller, acct, cache)
        except Aborted:
            continue                      # another request made one (or changed the account) meanwhile
    raise Aborted("Concurrent changes to the service account's keys; retry.", reason="CONCURRENT_KEY_ROTATION")


def _new_system_key(svc: Services, caller: Caller, acct: ServiceAccount, cache: SystemKeys
                    ) -> tuple[str, rsa.RSAPrivateKey]:
    store = svc.runtime.store
    acct_rec = store.get("service_account", acct.email)
    if acct_rec is None:
        raise NotFound(f"Service account {acct.relative} not found.", field="name", reason="SERVICE_ACCOUNT_NOT_FOUND")
    now = svc.clock().replace(microsecond=0)
    before = now + SYSTEM_KEY_VALIDITY
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_id = secrets.token_hex(20)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, key_id)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(private.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(before).sign(private, hashes.SHA256()))
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode()
    public = {"name": f"{acct.relative}/keys/{key_id}", "keyAlgorithm": "KEY_ALG_RSA_2048",
              "keyOrigin": "GOOGLE_PROVIDED", "keyType": "SYSTEM_MANAGED", "validAfterTime": _ts(now),
              "validBeforeTime": _ts(before), "keycardEmail": acct.email, "keycardUniqueId": acct.unique_id,
              "keycardPublicKeyPem": public_pem,
              "keycardCertificatePem": cert.public_bytes(serialization.Encoding.PEM).decode()}
    held = {"keyId": key_id, "email": acct.email, "uniqueId": acct.unique_id, "privateKeyPem": private_pem,
            "createTime": _ts(now)}
    # drop expired system-managed keys of the account, and private halves whose public half is gone
    deletes: list[Delete] = []
    expect = [Expect("sa_key", key_id, None), Expect("system_key", key_id, None),
              Expect("service_account", acct.email, acct_rec.revision)]
    registry = svc.runtime.identities
    for rec in store.list("system_key", parent=acct.email).records:
        pub = registry.keys.get(rec.name)
        if pub is None or pub.valid_before <= now:
            deletes.append(Delete("system_key", rec.name))
            expect.append(Expect("system_key", rec.name, rec.revision))
            pub_rec = store.get("sa_key", rec.name) if pub is not None else None
            if pub_rec is not None:
                deletes.append(Delete("sa_key", rec.name))
                expect.append(Expect("sa_key", rec.name, pub_rec.revision))
    svc.commit(caller, puts=[Put("sa_key", key_id, public, parent=acct.email),
                             Put("system_key", key_id, held, parent=acct.email)],
               deletes=deletes, expect=expect, method="keycard.iam.CreateSystemManagedKey", service=IAM,
               resource_name=f"{acct.relative}/keys/{key_id}",
               request={"name": acct.relative, "keyType": "SYSTEM_MANAGED", "replaced": [d.name for d in deletes
                                                                                           if d.kind == "sa_key"]})
    with cache.lock:
        cache.loaded[key_id] = private
    return key_id, private


def _sign(private: rsa.RSAPrivateKey, data: bytes) -> bytes:
    return private.sign(data, padding.PKCS1v15(), hashes.SHA256())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# ---------------------------------------------------------------------------------- signJwt, signBlob

def sign_jwt(svc: Services, caller: Caller, cache: SystemKeys, project: str, account: str, body: object
             ) -> dict[str, Any]:
    """iamcredentials ``signJwt`` (and IAM v1's, same path and shape: project ids are accepted here)."""
    body = _body(body)
    raw = body.get("payload")
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidArgument("Invalid payload: required, a serialized JSON object holding a JWT Claims Set.",
                              field="payload")
    try:
        claims = json.loads(raw)
    except ValueError:
        claims = None
    if not isinstance(claims, dict):
        raise InvalidArgument("Invalid payload: must be a serialized JSON object holding a JWT Claims Set.",
                              field="payload")
    now = int(svc.clock().timestamp())
    exp = claims.get("exp")
    if exp is None:
        claims["exp"] = now + SIGNED_JWT_DEFAULT_LIFETIME
    elif isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        raise InvalidArgument("Invalid payload: exp must be an integer timestamp (seconds since the epoch).",
                              field="payload")
    elif exp < now:
        raise InvalidArgument("Invalid payload: exp is in the past.", field="payload", reason="JWT_EXPIRED")
    elif exp > now + SIGNED_JWT_MAX_AHEAD:
        raise InvalidArgument("Invalid payload: exp may be at most 12 hours in the future.", field="payload",
                              reason="JWT_LIFETIME_TOO_LONG")
    target, delegates = _chain(svc, caller, project, account, body, "iam.serviceAccounts.signJwt")
    key_id, private = signing_key(svc, caller, target, cache)
    header = {"alg": "RS256", "kid": key_id, "typ": "JWT"}
    signing_input = (_b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                     + _b64url(json.dumps(claims, separators=(",", ":")).encode()))
    signature = _sign(private, signing_input.encode())
    audit_iam_credentials(svc, caller, method="SignJwt", target=target, delegates=delegates, body=body, key_id=key_id)
    return {"keyId": key_id, "signedJwt": f"{signing_input}.{_b64url(signature)}"}


def _bytes(raw: object, fld: str) -> bytes:
    """A protobuf ``bytes`` field in JSON: standard or URL-safe base64, padding optional."""
    if not isinstance(raw, str):
        raise InvalidArgument(f"Invalid {fld}: required, the base64 of the bytes to sign.", field=fld)
    text = raw.strip()
    text += "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text.encode())
        return base64.b64decode(text.encode(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"Invalid {fld}: not valid base64.", field=fld) from None


def sign_blob(svc: Services, caller: Caller, cache: SystemKeys, project: str, account: str, body: object
              ) -> dict[str, Any]:
    """iamcredentials ``signBlob`` (``payload`` → ``{keyId, signedBlob}``) or, when the body carries
    ``bytesToSign``, IAM v1's (→ ``{keyId, signature}``; project ids accepted, no delegates)."""
    body = _body(body)
    legacy = "bytesToSign" in body
    if legacy:
        data = _bytes(body.get("bytesToSign"), "bytesToSign")
        if body.get("delegates"):
            raise InvalidArgument("Invalid delegates: IAM v1 signBlob (bytesToSign) takes no delegation chain; "
                                  "use IAM Credentials signBlob (payload) for that.", field="delegates")
    else:
        _wildcard_only(project)
        data = _bytes(body.get("payload"), "payload")
    target, delegates = _chain(svc, caller, project, account, body, "iam.serviceAccounts.signBlob")
    key_id, private = signing_key(svc, caller, target, cache)
    signature = base64.b64encode(_sign(private, data)).decode()
    if legacy:                                           # IAM v1 projects.serviceAccounts.signBlob
        audit_iam_credentials(svc, caller, method="google.iam.admin.v1.SignBlob", target=target, delegates=[],
                              body=body, key_id=key_id, service="iam.googleapis.com")
    else:
        audit_iam_credentials(svc, caller, method="SignBlob", target=target, delegates=delegates, body=body,
                              key_id=key_id)
    return {"keyId": key_id, "signature": signature} if legacy else {"keyId": key_id, "signedBlob": signature}
