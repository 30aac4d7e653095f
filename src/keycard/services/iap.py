"""Identity-Aware Proxy web resources: their IAM policies and the decisions of ``keycard proxy``.

Resources are Google's IAP web names (:mod:`keycard.names`): ``projects/P/iap_web`` →
``…/iap_web/TYPE`` → ``…/services/S`` → ``…/versions/V``, each a node under its project, so a
binding on the project, the type or the service is inherited by what is below it. They need no
creation: the name alone places them in the hierarchy (a policy set on one makes it a stored node).

Access is ``iap.webServiceVersions.accessViaIAP`` (``roles/iap.httpsResourceAccessor``), with
``request.path``, ``request.host`` and ``request.time`` visible to IAM Conditions.

Two keycard extension methods serve the proxy, which calls them with *its own* credentials and
must hold ``iap.webServices.getSettings`` on the resource (``roles/iap.settingsAdmin``,
``roles/iap.viewer``; the basic roles): the proxy is trusted to speak for the resource, not to
choose who its callers are.

* ``:keycardCheckAccess`` — the end user's credential as presented (a keycard access token, a
  service account's self-signed JWT, an ID token of the organization's OIDC provider, or a
  keycard-minted ID token for one of the proxy's audiences) plus the request's path, host and
  method → the decision, the principal, and for an allowed request the signed identity assertion
  (``X-Goog-IAP-JWT-Assertion``: ES256, verifiable at ``/.well-known/jwks.json``). Each call is a
  Data Access audit entry, allowed or denied — except a renewal (``"renewal": true``), which the
  proxy makes ahead of time for a decision it caches and which decides no request by itself.
* ``:keycardRecordAccess`` — the requests the proxy let through or refused from its ≤ 1 s decision
  cache, in batches, each written as a Data Access entry, so every request is on record.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import jwt

from keycard import names
from keycard.errors import InvalidArgument, KeycardError, Unauthenticated
from keycard.identity.authn import Authenticator
from keycard.identity.tokens import AccessToken, KeySet
from keycard.services import iam_policy
from keycard.services.common import Caller, Services, rfc3339

__all__ = ["ACCESS", "PROXY_PERMISSION", "SERVICE", "check_access", "get_policy", "parse_iap_resource",
           "record_access", "set_policy", "test_permissions", "user_id"]

SERVICE = "iap.googleapis.com"
ACCESS = "iap.webServiceVersions.accessViaIAP"
PROXY_PERMISSION = "iap.webServices.getSettings"
ASSERTION_LIFETIME = 600          # seconds, as Google's IAP JWT
MAX_RECORDS = 5000
_TYPES = {"iap.googleapis.com/Web": "web", "iap.googleapis.com/WebType": "webTypes",
          "iap.googleapis.com/WebService": "webServices",
          "iap.googleapis.com/WebServiceVersion": "webServiceVersions"}
_SERVED = ("iap.googleapis.com/WebService", "iap.googleapis.com/WebServiceVersion")
_ATTR_MAX = 2048


def parse_iap_resource(relative: str, fld: str = "resource", *, served: bool = False) -> names.ResourceName:
    """``projects/P/iap_web/…`` → its parsed name; ``served``: a service or version (what a proxy fronts)."""
    rn = names.parse_resource(f"//{SERVICE}/{relative}", fld)
    if rn.type not in _TYPES or (served and rn.type not in _SERVED):
        want = ("projects/PROJECT/iap_web/TYPE/services/SERVICE (or …/versions/VERSION)" if served
                else "projects/PROJECT/iap_web, optionally followed by /TYPE, /services/SERVICE, /versions/VERSION")
        raise InvalidArgument(f"Invalid {fld} {relative!r}: expected {want}, e.g. "
                              "projects/my-project/iap_web/compute/services/model-api (TYPE: lower-case letters, "
                              "digits and '-').", field=fld)
    return rn


def _permission(rn: names.ResourceName, verb: str) -> str:
    return f"iap.{_TYPES[rn.type]}.{verb}"


# ------------------------------------------------------------------------------------ IAM policy

def get_policy(svc: Services, caller: Caller, relative: str, body: object) -> dict[str, Any]:
    rn = parse_iap_resource(relative)
    opts = body.get("options") if isinstance(body, Mapping) else None
    version = iam_policy.requested_version(opts.get("requestedPolicyVersion") if isinstance(opts, Mapping) else None)
    return iam_policy.get_iam_policy(svc, caller, rn.full, permission=_permission(rn, "getIamPolicy"),
                                     service=SERVICE, version=version)


def set_policy(svc: Services, caller: Caller, relative: str, body: object, *, allow_lockout: bool
               ) -> dict[str, Any]:
    rn = parse_iap_resource(relative)
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected {\"policy\": {...}}.", field="policy")
    return iam_policy.set_iam_policy(svc, caller, rn.full, body, permission=_permission(rn, "setIamPolicy"),
                                     service=SERVICE, method="google.cloud.iap.v1.IdentityAwareProxyAdminService."
                                                             "SetIamPolicy", allow_lockout=allow_lockout)


def test_permissions(svc: Services, caller: Caller, relative: str, body: object) -> dict[str, Any]:
    rn = parse_iap_resource(relative)
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected {\"permissions\": [...]}.", field="permissions")
    return iam_policy.test_iam_permissions(svc, caller, rn.full, body)


# -------------------------------------------------------------------------------- proxy decisions

def user_id(principal: str, claims: Mapping[str, Any], svc: Services) -> str:
    """The stable id behind ``X-Goog-Authenticated-User-Id``: a service account's uniqueId; for others
    a 21-digit number derived from the principal (keycard keeps no user records)."""
    if principal.startswith("serviceAccount:"):
        acct = svc.runtime.identities.accounts.get(principal[15:])
        if acct is not None:
            return acct.unique_id
    return str(int.from_bytes(hashlib.sha256(principal.lower().encode()).digest()[:9], "big")).zfill(21)[:21]


def _attributes(body: Mapping[str, Any], fld: str) -> dict[str, str]:
    raw = body.get("request", {})
    if not isinstance(raw, Mapping):
        raise InvalidArgument(f"Invalid {fld}: expected {{path, host, method}}.", field=fld)
    out: dict[str, str] = {}
    for key in ("path", "host", "method"):
        v = raw.get(key, "/" if key == "path" else "")
        if not isinstance(v, str) or len(v) > _ATTR_MAX or any(c in v for c in "\r\n\x00"):
            raise InvalidArgument(f"Invalid {fld}.{key}: a string of at most {_ATTR_MAX} characters without line "
                                  "breaks.", field=f"{fld}.{key}")
        out[key] = v
    if not out["path"].startswith("/"):
        raise InvalidArgument(f"Invalid {fld}.path {out['path']!r}: must start with '/'.", field=f"{fld}.path")
    return out


def _keycard_id_token(token: str, keys: KeySet, issuer: str, audiences: Sequence[str], authn: Authenticator,
                      svc: Services, now: dt.datetime) -> AccessToken | None:
    """A keycard-minted ID token (generateIdToken) for one of ``audiences`` → its service account;
    None when the token is not one of keycard's (another verifier may know it)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return None
    kid = header.get("kid")
    public = keys.public_key(kid) if header.get("alg") == "ES256" and isinstance(kid, str) else None
    if public is None or not issuer or not audiences:
        return None
    try:
        claims = jwt.decode(token, public, algorithms=["ES256"], audience=list(audiences), issuer=issuer,
                            options={"require": ["exp", "iat", "sub", "aud", "iss"]}, leeway=30)
    except jwt.InvalidAudienceError:
        raise Unauthenticated("Invalid credential: the ID token's audience is not this proxy; ask "
                              f"generateIdToken for audience {audiences[0]!r}.", reason="ID_TOKEN_AUDIENCE") from None
    except jwt.PyJWTError as e:
        raise Unauthenticated(f"Invalid credential: the ID token does not verify: {e}.",
                              reason="ID_TOKEN_INVALID") from None
    email = svc.runtime.identities.by_unique_id.get(str(claims["sub"]))
    if email is None:
        raise Unauthenticated("Invalid credential: the ID token's service account does not exist.",
                              reason="ACCOUNT_DELETED")
    at = AccessToken(token, f"serviceAccount:{email}", dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC),
                     {**claims, "uid": str(claims["sub"])})
    authn.check_live(at, now)
    return at


def _authenticate(token: str, keys: KeySet, issuer: str, audiences: Sequence[str], authn: Authenticator,
                  svc: Services, now: dt.datetime) -> AccessToken:
    if token.count(".") == 2 and not token.startswith("kc1."):
        at = _keycard_id_token(token, keys, issuer, audiences, authn, svc, now)
        if at is not None:
            return at
    return authn.authenticate(token)


def _sign_in(svc: Services, resource: str) -> dict[str, Any] | None:
    """The organization's first enabled OIDC provider: where the proxy sends a browser to sign in."""
    orgs = [a.rsplit("/", 1)[1] for a in svc.runtime.engine.ancestry(resource)
            if a.startswith(f"//{names.CRM}/organizations/")]
    for name, data in sorted(svc.runtime.identities.oidc.items()):
        if orgs and name.split("/")[1] != orgs[-1]:
            continue
        oidc = data.get("oidc")
        if data.get("disabled") or not isinstance(oidc, Mapping) or not oidc.get("clientIds"):
            continue
        return {"identityProvider": name, "issuerUri": oidc.get("issuerUri"), "clientId": oidc["clientIds"][0]}
    return None


def check_access(svc: Services, caller: Caller, authn: Authenticator, keys: KeySet, issuer: str, relative: str,
                 body: object) -> dict[str, Any]:
    """The decision for one request arriving at the proxy (see the module docstring)."""
    rn = parse_iap_resource(relative, served=True)
    svc.authorize(caller, PROXY_PERMISSION, rn.full, service=SERVICE)
    if not isinstance(body, Mapping):
        raise InvalidArgument("Invalid request body: expected {credential, request, audiences}.", field="body")
    attrs = _attributes(body, "request")
    credential = body.get("credential")
    audiences = body.get("audiences", [])
    if not isinstance(audiences, list) or len(audiences) > 10 or not all(
            isinstance(a, str) and 0 < len(a) <= 512 for a in audiences):
        raise InvalidArgument("Invalid audiences: up to 10 strings (the proxy's URLs ID tokens are minted for).",
                              field="audiences")
    if credential is not None and (not isinstance(credential, str) or len(credential) > 16384):
        raise InvalidArgument("Invalid credential: the caller's bearer credential as a string.", field="credential")
    now = svc.clock()
    out: dict[str, Any] = {"permission": ACCESS, "resource": rn.relative}
    user = Caller(None)
    at: AccessToken | None = None
    if not credential:
        out.update(decision="UNAUTHENTICATED", message="The request carries no credential.")
    else:
        try:
            at = _authenticate(credential, keys, issuer, [*audiences, rn.relative], authn, svc, now)
        except KeycardError as e:
            if not isinstance(e, Unauthenticated | InvalidArgument):
                raise
            out.update(decision="UNAUTHENTICATED", message=str(e))
    if at is not None:
        user.principal = at.principal
        request_attrs = {"request.path": attrs["path"], "request.host": attrs["host"]}
        d = svc.runtime.engine.check(at.principal, ACCESS, rn.full, time=now, attributes=request_attrs,
                                     extra_members=at.extra_members)
        uid = user_id(at.principal, at.claims, svc)
        email = user.email
        out.update(principal=at.principal, email=email, userId=f"accounts.keycard:{uid}",
                   credentialExpireTime=rfc3339(at.expires_at))
        if d.allowed:
            out["decision"] = "ALLOW"
            out["assertion"] = keys.mint_id_token(
                issuer=issuer, subject=f"accounts.keycard:{uid}", audience=rn.full, now=now,
                lifetime=ASSERTION_LIFETIME, extra={"email": email, "principal": at.principal,
                                                    "keycard": {"path": attrs["path"], "host": attrs["host"]}})
        else:
            out["decision"] = "DENY"
            out["message"] = (f"Permission '{ACCESS}' denied on resource '{rn.relative}' for {at.principal}. "
                              f"An administrator can grant roles/iap.httpsResourceAccessor to {at.principal} "
                              f"on it: POST /v1/{rn.relative}:setIamPolicy.")
    if out["decision"] == "UNAUTHENTICATED":
        sign_in = _sign_in(svc, rn.full)
        if sign_in is not None:
            out["signIn"] = sign_in
    if body.get("renewal") is not True:   # a renewal decides no request: the proxy records those it serves
        entry = _entry(svc, rn.relative, user.principal, out["decision"], attrs, rfc3339(now),
                       str(body.get("callerIp", ""))[:64], proxy=caller.principal)
        svc.runtime.store.append_audit([entry])
    return out


def _entry(svc: Services, resource: str, principal: str | None, decision: str, attrs: Mapping[str, str],
           when: str, caller_ip: str, *, proxy: str | None, cached: bool = False) -> dict[str, Any]:
    granted = decision == "ALLOW"
    user = Caller(principal)
    user.authorizations.append({"resource": resource, "permission": ACCESS, "granted": granted})
    entry = svc.audit_entry(user, method="AuthorizeUser", service=SERVICE, resource_name=resource,
                            request={"@type": "type.googleapis.com/cloud.security.gatekeeper.AuthorizeUserRequest",
                                     "httpRequest": {"path": attrs.get("path", ""), "host": attrs.get("host", ""),
                                                     "method": attrs.get("method", "")}},
                            response=None, service_data=None, log="data_access")
    entry["timestamp"] = when
    payload = entry["protoPayload"]
    payload["requestMetadata"] = {"callerIp": caller_ip, "requestAttributes": {
        "path": attrs.get("path", ""), "host": attrs.get("host", ""), "method": attrs.get("method", ""),
        "time": when}}
    payload["status"] = {} if granted else {"code": 16 if decision == "UNAUTHENTICATED" else 7,
                                            "message": decision}
    labels = entry.setdefault("labels", {})
    labels["keycard.dev/proxy"] = proxy or ""
    if cached:
        labels["keycard.dev/decision-cache"] = "hit"
    return entry


def record_access(svc: Services, caller: Caller, relative: str, body: object) -> dict[str, Any]:
    """Data Access entries for requests the proxy decided from its decision cache."""
    rn = parse_iap_resource(relative, served=True)
    svc.authorize(caller, PROXY_PERMISSION, rn.full, service=SERVICE)
    rows = body.get("entries") if isinstance(body, Mapping) else None
    if not isinstance(rows, list) or len(rows) > MAX_RECORDS:
        raise InvalidArgument(f"Invalid entries: a list of at most {MAX_RECORDS} requests.", field="entries")
    out = []
    for i, row in enumerate(rows):
        fld = f"entries[{i}]"
        if not isinstance(row, Mapping):
            raise InvalidArgument(f"Invalid {fld}: expected an object.", field=fld)
        principal = row.get("principal")
        if principal is not None:
            principal = names.parse_member(principal, f"{fld}.principal")
        decision = row.get("decision")
        if decision not in ("ALLOW", "DENY"):
            raise InvalidArgument(f"Invalid {fld}.decision: ALLOW or DENY.", field=f"{fld}.decision")
        when = row.get("time")
        try:
            t = dt.datetime.fromisoformat(str(when).replace("Z", "+00:00"))
        except ValueError:
            raise InvalidArgument(f"Invalid {fld}.time {when!r}: an RFC 3339 timestamp.",
                                  field=f"{fld}.time") from None
        if t.tzinfo is None:
            raise InvalidArgument(f"Invalid {fld}.time {when!r}: needs a time zone (Z).", field=f"{fld}.time")
        attrs = _attributes(row, f"{fld}.request")
        out.append(_entry(svc, rn.relative, principal, str(decision), attrs, rfc3339(t),
                          str(row.get("callerIp", ""))[:64], proxy=caller.principal, cached=True))
    if out:
        svc.runtime.store.append_audit(out)
    return {"recorded": len(out)}

