"""Bearer credentials → the principal of a request.

Accepted, in this order:

1. keycard access tokens (``kc1.`` + ES256 JWT signed by the server), minted by the token
   endpoint, IAM Credentials, STS, the metadata server or ``keycard auth print-access-token``;
2. Google-style self-signed service-account JWTs (RS256, ``iss == sub ==`` the account's email,
   ``kid`` = one of the account's registered keys): what GAPIC clients send instead of calling the
   token endpoint. ``aud`` must be ``https://SERVICE.googleapis.com/`` (or this server's URL), or
   the JWT carries a ``scope`` claim instead; lifetime at most one hour. Using one counts as a use
   of its key (``keycardLastUsedTime``, written at most once a minute per key, like the token endpoint).
3. ID tokens of an organization's own OpenID Connect identity provider (a JWT whose ``iss`` is a
   configured provider's issuer; :mod:`keycard.identity.oidc`): the user ``user:EMAIL`` it maps to.

Every accepted credential is then checked against the live identity registry: a token of an
account or key that has been disabled or deleted since, or of a federation provider that has, or
minted through a metadata-server attachment that has since been deleted, is refused at the next
request — no propagation delay on this replica.

The returned :class:`AccessToken` carries the principal sets its credential puts the caller in
(``extra_members``: a federated token's ``principalSet://…/group/G`` and ``…/attribute.NAME/VALUE``,
an IdP ID token's groups). They travel with the request to the engine; nothing about a caller is
recorded anywhere, so two credentials of one principal with different sets never see each other's.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keycard.errors import Unauthenticated
from keycard.identity.oauth import KeyUse
from keycard.identity.oidc import OidcAuthenticator
from keycard.identity.registry import Registry
from keycard.identity.tokens import PREFIX, AccessToken, KeySet

__all__ = ["SELF_SIGNED_MAX_LIFETIME", "Authenticator"]

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
    oidc: OidcAuthenticator | None = None    # human users' company IdPs (default: those in the registry)
    # When a service-account key is used (a self-signed JWT here, the JWT-bearer grant at /token): at most
    # once per key per minute (``key_use``, shared with the token endpoint), ``key_used(key_id, now)`` is
    # called to write the key's keycardLastUsedTime. It must not block: the caller may be the event loop.
    key_used: Callable[[str, dt.datetime], None] | None = None
    key_use: KeyUse = field(default_factory=KeyUse)

    def __post_init__(self) -> None:
        if self.oidc is None:
            self.oidc = OidcAuthenticator(lambda: self.registry.oidc)

    def authenticate(self, token: str) -> AccessToken:
        now = self.clock()
        if token.startswith(PREFIX):
            at = self.keys().verify(token, now=now)
            self.check_live(at, now)
            return at
        if token.count(".") != 2:
            raise _invalid("not a keycard access token or a service account's signed JWT; get a token with "
                           "`keycard auth print-access-token`", "ACCESS_TOKEN_TYPE_UNSUPPORTED")
        at = self._oidc_user(token, now) or self._self_signed_jwt(token, now)
        self.check_live(at, now)
        kid = at.claims.get("sak")                 # a service account's self-signed JWT: a use of its key
        if kid is not None and self.key_used is not None and self.key_use.due(kid, time.monotonic()):
            self.key_used(kid, now)
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
        return AccessToken(token, user.principal, user.expires_at, {**user.claims, "idp": user.provider},
                           frozenset(user.groups) or None)

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
