"""Bearer credentials → the principal of a request.

Accepted, in this order:

1. keycard access tokens (``kc1.`` + ES256 JWT signed by the server), minted by the token
   endpoint, IAM Credentials, STS, the metadata server or ``keycard auth print-access-token``;
2. Google-style self-signed service-account JWTs (RS256, ``iss == sub ==`` the account's email,
   ``kid`` = one of the account's registered keys): what GAPIC clients send instead of calling the
   token endpoint. ``aud`` must be ``https://SERVICE.googleapis.com/`` (or this server's URL), or
   the JWT carries a ``scope`` claim instead; lifetime at most one hour.
3. ID tokens of an organization's own OpenID Connect identity provider (a JWT whose ``iss`` is a
   configured provider's issuer; :mod:`keycard.identity.oidc`): the user ``user:EMAIL`` it maps to.

Every accepted credential is then checked against the live identity registry: a token of an
account or key that has been disabled or deleted since, or of a federation provider that has, or
minted through a metadata-server attachment that has since been deleted, is refused at the next
request — no propagation delay on this replica.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keycard import names
from keycard.errors import InvalidArgument, Unauthenticated
from keycard.identity.oidc import OidcAuthenticator
from keycard.identity.registry import Registry
from keycard.identity.tokens import PREFIX, AccessToken, KeySet

__all__ = ["SELF_SIGNED_MAX_LIFETIME", "Authenticator", "federated_sets"]

SELF_SIGNED_MAX_LIFETIME = 3600
_CLOCK_SKEW = 300


def _invalid(why: str, reason: str = "ACCESS_TOKEN_INVALID") -> Unauthenticated:
    return Unauthenticated(f"Request had invalid authentication credentials: {why}.", reason=reason)


@dataclass(slots=True)
class Authenticator:
    keys: Callable[[], KeySet]
    registry: Registry
    clock: Callable[[], dt.datetime]
    base_urls: set[str] = field(default_factory=set)          # this server's own URLs, accepted as audiences
    _self_signed: dict[str, AccessToken] = field(default_factory=dict)
    _public: dict[str, rsa.RSAPublicKey] = field(default_factory=dict)      # key id → loaded public key
    # Engine hook: the principal sets a federated caller belongs to by its token (Engine.set_principal_sets).
    principal_sets: Callable[[str, tuple[str, ...]], None] | None = None
    oidc: OidcAuthenticator | None = None    # human users' company IdPs (default: those in the registry)

    def __post_init__(self) -> None:
        if self.oidc is None:
            self.oidc = OidcAuthenticator(lambda: self.registry.oidc)

    def authenticate(self, token: str) -> AccessToken:
        now = self.clock()
        if token.startswith(PREFIX):
            at = self.keys().verify(token, now=now)
        elif token.count(".") == 2:
            at = self._oidc_user(token, now) or self._self_signed_jwt(token, now)
        else:
            raise _invalid("not a keycard access token or a service account's signed JWT; get a token with "
                           "`keycard auth print-access-token`", "ACCESS_TOKEN_TYPE_UNSUPPORTED")
        self.check_live(at, now)
        if self.principal_sets is not None and "fed" in at.claims:
            self.principal_sets(at.principal, federated_sets(at.principal, at.claims))
        if self.principal_sets is not None and at.principal.startswith("user:"):
            # a user's groups mapped from their IdP's ID token count while they present that token
            # (and are cleared when they present any other credential)
            self.principal_sets(at.principal, tuple(at.claims.get("idp_groups", ())))
        return at

    # ------------------------------------------------------------------------------ liveness
    def check_live(self, at: AccessToken, now: dt.datetime) -> None:
        claims = at.claims
        reg = self.registry
        if at.principal.startswith("serviceAccount:"):
            acct = reg.accounts.get(at.principal[15:])
            uid = claims.get("uid")
            if acct is None or acct.deleted or (uid is not None and uid != acct.unique_id):
                raise _invalid(f"service account {at.principal[15:]} was deleted", "ACCOUNT_DELETED")
            if acct.disabled:
                raise _invalid(f"service account {acct.email} is disabled", "ACCOUNT_DISABLED")
        kid = claims.get("sak")
        if kid is not None:
            key = reg.keys.get(kid)
            acct = reg.accounts.get(key.email) if key is not None else None
            if key is None or acct is None or key.unique_id != acct.unique_id:
                raise _invalid(f"the service account key {kid} that issued this token was deleted", "KEY_DELETED")
            if not key.usable_at(now):
                raise _invalid(f"the service account key {kid} that issued this token is disabled or expired",
                               "KEY_DISABLED")
        att = claims.get("att")
        if att is not None:
            attachment = reg.attachments.get(att)
            if attachment is None or attachment.get("uniqueId") != claims.get("uid"):
                raise _invalid(f"the metadata-server attachment {att} that issued this token was deleted",
                               "ATTACHMENT_DELETED")
        provider = claims.get("fed")
        if provider is not None and not reg.provider_live(provider):
            raise _invalid(f"the workload identity provider {provider} that issued this token is disabled or "
                           "deleted", "PROVIDER_DISABLED")

    # ------------------------------------------------------------- ID tokens of a company's IdP
    def _oidc_user(self, token: str, now: dt.datetime) -> AccessToken | None:
        """An ID token of a configured OIDC provider (keycard.identity.oidc) → its user; None if
        the token's issuer is not a configured provider."""
        if self.oidc is None or token in self._self_signed:      # a service account's JWT seen before
            return None
        user = self.oidc.authenticate(token, now)
        if user is None:
            return None
        return AccessToken(token, user.principal, user.expires_at,
                           {**user.claims, "idp": user.provider, "idp_groups": list(user.groups)})

    # ------------------------------------------------------------------------ self-signed JWTs
    def _self_signed_jwt(self, token: str, now: dt.datetime) -> AccessToken:
        hit = self._self_signed.get(token)
        if hit is not None and hit.expires_at > now:
            return hit
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("malformed token") from None
        if header.get("alg") != "RS256":
            raise _invalid("a service account's signed JWT must use RS256")
        kid = header.get("kid")
        key = self.registry.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise _invalid("the JWT's key id is not a registered key of any service account")
        if not key.usable_at(now):
            raise _invalid(f"service account key {kid} is disabled or outside its validity period", "KEY_DISABLED")
        public = self._public.get(key.key_id)
        if public is None:
            loaded = serialization.load_pem_public_key(key.public_pem.encode())
            if not isinstance(loaded, rsa.RSAPublicKey):
                raise _invalid(f"service account key {kid} is not an RSA key")
            public = self._public[key.key_id] = loaded
        try:
            claims = jwt.decode(token, public, algorithms=["RS256"],
                                options={"require": ["exp", "iat", "iss", "sub"], "verify_aud": False},
                                leeway=_CLOCK_SKEW)
        except jwt.PyJWTError as e:
            raise _invalid(f"the signed JWT does not verify: {e}") from None
        if claims["iss"] != claims["sub"] or str(claims["iss"]).lower() != key.email:
            raise _invalid("a self-signed JWT's iss and sub must both be the email of the key's service account")
        if int(claims["exp"]) - int(claims["iat"]) > SELF_SIGNED_MAX_LIFETIME:
            raise _invalid("a self-signed JWT may live at most one hour")
        if int(claims["iat"]) > now.timestamp() + _CLOCK_SKEW:
            raise _invalid("the JWT was issued in the future")
        aud = claims.get("aud")
        if aud is None:
            if not claims.get("scope"):
                raise _invalid("a self-signed JWT needs an aud (https://SERVICE.googleapis.com/) or a scope")
        elif not isinstance(aud, str) or not self._audience_ok(aud):
            raise _invalid(f"audience {aud!r} is not a Google API or this server")
        at = AccessToken(token, f"serviceAccount:{key.email}",
                         dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC),
                         {**claims, "sak": key.key_id, "uid": key.unique_id})
        if len(self._self_signed) >= 20_000:
            self._self_signed.clear()
        self._self_signed[token] = at
        return at

    def _audience_ok(self, aud: str) -> bool:
        a = aud.rstrip("/")
        if a in self.base_urls:
            return True
        if not a.startswith("https://"):
            return False
        host = a[8:].split("/", 1)[0]
        return host.endswith(".googleapis.com") and host.count(".") == 2


def federated_sets(principal: str, claims: Mapping[str, Any]) -> tuple[str, ...]:
    """The ``principalSet://…/group/G`` and ``…/attribute.NAME/VALUE`` sets of a federated token
    (STS puts the mapped groups in ``grp`` and the attributes in ``attr``). Values that no policy
    member could name (whitespace, over 127 characters) are left out."""
    if not principal.startswith("principal://") or "/subject/" not in principal:
        return ()
    pool = "principalSet://" + principal[len("principal://"):].split("/subject/", 1)[0]
    out: list[str] = []
    groups = claims.get("grp")
    for g in groups if isinstance(groups, list) else ():
        if isinstance(g, str):
            out.append(f"{pool}/group/{g}")
    attrs = claims.get("attr")
    for name, value in attrs.items() if isinstance(attrs, Mapping) else ():
        for v in value if isinstance(value, list) else (value,):
            if isinstance(v, str):
                out.append(f"{pool}/attribute.{name}/{v}")
    valid = []
    for s in out:
        try:
            valid.append(names.parse_member(s, "principalSet"))
        except InvalidArgument:
            continue
    return tuple(dict.fromkeys(valid))
