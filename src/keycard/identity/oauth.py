"""The OAuth2 token endpoint's logic: the JWT-bearer grant (RFC 7523) and token introspection.

``verify_assertion`` checks a service account's signed assertion exactly as google-auth's
``service_account.Credentials`` sends it (form ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``,
``assertion=`` an RS256 JWT with ``kid`` = the key id, ``iss`` = the account's email, ``aud`` =
``https://oauth2.googleapis.com/token`` or this server's token URL, ``scope`` or ``target_audience``,
``exp - iat <= 3600``). Only the key registered under ``kid`` verifies it: key-carrying headers
(``jku``, ``jwk``, ``x5u``, ``x5c``) are never followed, and an assertion that carries one is refused.
The signature is checked before anything about the key's or account's state is revealed.

``issue`` then mints a keycard access token (``kc1.``, one hour) or, for ``target_audience``, an
OpenID Connect ID token signed by the server (verifiable with ``/.well-known/jwks.json``).

Every refusal is an :class:`OAuthError` rendered as OAuth2 error JSON with HTTP 400: google-auth
retries 5xx answers, never 400.
"""

from __future__ import annotations

import base64
import datetime as dt
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keycard import names
from keycard.identity.registry import AccountKey, Registry, ServiceAccount
from keycard.identity.tokens import ISSUER as ACCESS_TOKEN_ISSUER
from keycard.identity.tokens import AccessToken, KeySet

__all__ = [
    "ACCESS_TOKEN_LIFETIME",
    "CLOCK_SKEW",
    "GOOGLE_TOKEN_AUDIENCES",
    "JWT_BEARER",
    "MAX_ASSERTION_LIFETIME",
    "Grant",
    "KeyUse",
    "OAuthError",
    "Verifier",
    "account_certificates",
    "account_jwks",
    "issue",
    "openid_configuration",
    "token_audiences",
    "tokeninfo_v2",
    "tokeninfo_v3",
]

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# What Google's token endpoint accepts as ``aud``: google-auth sends the first, older clients the others.
GOOGLE_TOKEN_AUDIENCES = frozenset({"https://oauth2.googleapis.com/token",
                                    "https://www.googleapis.com/oauth2/v4/token",
                                    "https://accounts.google.com/o/oauth2/token"})
TOKEN_PATHS = ("/token", "/oauth2/v4/token")
MAX_ASSERTION_LIFETIME = 3600
ACCESS_TOKEN_LIFETIME = 3600
CLOCK_SKEW = 300
MAX_ASSERTION_BYTES = 16 * 1024
# Headers that name a key other than the registered one (RFC 7515 §4.1): never fetched, never trusted.
KEY_HEADERS = ("jku", "jwk", "x5u", "x5c")
_TIMEFRAME = ("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
              "Check your iat and exp values in the JWT claim.")
_BAD_SIGNATURE = "Invalid JWT Signature."


class OAuthError(Exception):
    """An OAuth2 error answer (RFC 6749 §5.2): ``{"error": …, "error_description": …}``."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def to_json(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def _grant_error(description: str) -> OAuthError:
    return OAuthError("invalid_grant", description)


@dataclass(frozen=True, slots=True)
class Grant:
    """A verified assertion: who it is, which key signed it, what it asks for."""

    account: ServiceAccount
    key: AccountKey
    claims: Mapping[str, Any]
    scopes: tuple[str, ...]
    target_audience: str | None


def token_audiences(*base_urls: str) -> frozenset[str]:
    """Audiences an assertion may name: Google's token URLs and this server's token endpoints."""
    own = {b.rstrip("/") + p for b in base_urls if b for p in TOKEN_PATHS}
    return GOOGLE_TOKEN_AUDIENCES | own


def _field(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    if value is None or value == "":
        raise OAuthError("invalid_request", f"Missing required parameter: {name}")
    if not isinstance(value, str):
        raise OAuthError("invalid_request", f"Invalid parameter: {name} must be a string")
    return value


class Verifier:
    """Verifies JWT-bearer assertions against the registered public keys (loaded keys are cached)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._public: dict[str, rsa.RSAPublicKey] = {}
        self._lock = threading.Lock()

    def grant(self, form: object, *, now: dt.datetime, audiences: Collection[str]) -> Grant:
        """A token request's form (``grant_type``, ``assertion``) → the verified grant, or OAuthError."""
        if not isinstance(form, Mapping):
            raise OAuthError("invalid_request", "Expected a form body: grant_type=…&assertion=…")
        grant_type = _field(form, "grant_type")
        if grant_type != JWT_BEARER:
            raise OAuthError("unsupported_grant_type", f"Invalid grant_type: {grant_type[:200]}. This endpoint "
                             f"serves {JWT_BEARER} (service account keys); exchange external tokens at /v1/token.")
        return self.verify_assertion(_field(form, "assertion"), now=now, audiences=audiences)

    def _public_key(self, key: AccountKey) -> rsa.RSAPublicKey:
        cached = self._public.get(key.key_id)
        if cached is not None:
            return cached
        try:
            loaded = serialization.load_pem_public_key(key.public_pem.encode())
        except ValueError:
            raise _grant_error(_BAD_SIGNATURE) from None
        if not isinstance(loaded, rsa.RSAPublicKey):
            raise _grant_error(_BAD_SIGNATURE)
        with self._lock:
            if len(self._public) >= 50_000:
                self._public.clear()
            self._public[key.key_id] = loaded
        return loaded

    def verify_assertion(self, assertion: str, *, now: dt.datetime, audiences: Collection[str]) -> Grant:
        if len(assertion) > MAX_ASSERTION_BYTES:
            raise _grant_error(f"Invalid JWT: the assertion is over {MAX_ASSERTION_BYTES} bytes.")
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            raise _grant_error("Invalid JWT: the assertion is not a JWS compact serialization.") from None
        if header.get("alg") != "RS256":
            raise _grant_error("Invalid JWT: the assertion must be signed with RS256 by a service account key.")
        carried = [h for h in KEY_HEADERS if h in header]
        if carried or "crit" in header:
            raise _grant_error(f"Invalid JWT: header parameters {carried or ['crit']} are not accepted; the key is "
                               "the service account key named by kid.")
        kid = header.get("kid")
        key = self.registry.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise _grant_error(_BAD_SIGNATURE)
        try:
            claims = jwt.decode(assertion, self._public_key(key), algorithms=["RS256"],
                                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                                         "verify_aud": False, "verify_iss": False})
        except jwt.PyJWTError:
            raise _grant_error(_BAD_SIGNATURE) from None
        # The signer holds the key's private half from here on: the key's and account's state may be told.
        if key.disabled:
            raise _grant_error(f"Service account key {key.key_id} is disabled.")
        if not key.usable_at(now):
            raise _grant_error(f"Service account key {key.key_id} is not valid now (valid from "
                               f"{key.valid_after:%Y-%m-%dT%H:%M:%SZ} to {key.valid_before:%Y-%m-%dT%H:%M:%SZ}).")
        acct = self.registry.accounts.get(key.email)
        if acct is None or acct.deleted or acct.unique_id != key.unique_id:
            raise _grant_error("Invalid grant: account not found")
        if acct.disabled:
            raise _grant_error(f"Service account {acct.email} is disabled.")
        iss = claims.get("iss")
        if not isinstance(iss, str) or iss.lower() != acct.email:
            raise _grant_error("Invalid JWT: iss must be the email of the service account that owns the key.")
        sub = claims.get("sub")
        if sub is not None and (not isinstance(sub, str) or sub.lower() != acct.email):
            raise OAuthError("unauthorized_client", "Client is unauthorized to retrieve access tokens using this "
                             "method: domain-wide delegation (a sub other than the service account) is not "
                             "supported.")
        aud = claims.get("aud")
        if not isinstance(aud, str) or aud.rstrip("/") not in {a.rstrip("/") for a in audiences}:
            raise _grant_error("Invalid JWT: Failed audience check. The audience must be "
                               "https://oauth2.googleapis.com/token or this server's token endpoint.")
        self._check_times(claims, now)
        target = claims.get("target_audience")
        if target is not None:
            if not isinstance(target, str) or not target.strip() or len(target) > 2048:
                raise OAuthError("invalid_request", "Invalid target_audience: expected a non-empty string.")
            return Grant(acct, key, claims, (), target)
        scope = claims.get("scope")
        if not isinstance(scope, str) or not scope.split():
            raise OAuthError("invalid_scope", "Invalid OAuth scope or ID token audience provided: the assertion "
                             "needs a scope or a target_audience claim.")
        scopes = tuple(dict.fromkeys(scope.split()))
        if len(scopes) > 100 or any(len(s) > 512 for s in scopes):
            raise OAuthError("invalid_scope", "Invalid OAuth scope: too many or too long scopes.")
        return Grant(acct, key, claims, scopes, None)

    @staticmethod
    def _check_times(claims: Mapping[str, Any], now: dt.datetime) -> None:
        values = {}
        for name in ("iat", "exp", "nbf"):
            v = claims.get(name)
            if v is None and name == "nbf":
                continue
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise _grant_error(_TIMEFRAME)
            values[name] = float(v)
        t = now.timestamp()
        iat, exp = values["iat"], values["exp"]
        if exp <= iat or exp - iat > MAX_ASSERTION_LIFETIME:
            raise _grant_error(_TIMEFRAME)
        if iat > t + CLOCK_SKEW or exp < t - CLOCK_SKEW or values.get("nbf", iat) > t + CLOCK_SKEW:
            raise _grant_error(_TIMEFRAME)


def issue(grant: Grant, keys: KeySet, *, issuer: str, now: dt.datetime) -> dict[str, Any]:
    """The token response: an access token for a scope, an ID token for a target_audience."""
    acct = grant.account
    if grant.target_audience is not None:
        token = keys.mint_id_token(issuer=issuer.rstrip("/"), subject=acct.unique_id,
                                   audience=grant.target_audience, now=now, lifetime=ACCESS_TOKEN_LIFETIME,
                                   extra={"email": acct.email, "email_verified": True, "azp": acct.unique_id})
        return {"id_token": token}
    at = keys.mint(acct.member, now=now, lifetime=ACCESS_TOKEN_LIFETIME, scopes=grant.scopes,
                   extra={"uid": acct.unique_id, "sak": grant.key.key_id})
    return {"access_token": at.token, "expires_in": ACCESS_TOKEN_LIFETIME - 1, "token_type": "Bearer"}


class KeyUse:
    """When each key was last used, written to its record at most once per ``interval`` seconds.

    Throttled in memory (per process), so a busy key costs one store write a minute, not one per token.
    """

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def due(self, key_id: str, now: float) -> bool:
        """True (and remembered) when the key's use should be written now."""
        with self._lock:
            last = self._last.get(key_id)
            if last is not None and now - last < self.interval:
                return False
            if len(self._last) >= 100_000:
                self._last.clear()
            self._last[key_id] = now
            return True


# ------------------------------------------------------------------------------ ID tokens, tokeninfo
def verify_id_token(token: str, keys: KeySet, *, issuers: Collection[str], now: dt.datetime) -> dict[str, Any]:
    """Verify an ID token this server minted (ES256, our kid, iss = one of our base URLs, not expired).

    Access tokens are signed by the same keys; their ``iss`` is ``keycard``, so neither passes for the other.
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise ValueError("malformed token") from None
    kid = header.get("kid")
    public = keys.public_key(kid) if isinstance(kid, str) else None
    if header.get("alg") != "ES256" or public is None:
        raise ValueError("not signed by this server")
    try:
        claims: dict[str, Any] = jwt.decode(token, public, algorithms=["ES256"],
                                            options={"require": ["iss", "sub", "aud", "exp", "iat"],
                                                     "verify_aud": False, "verify_exp": False})
    except jwt.PyJWTError as e:
        raise ValueError(str(e)) from None
    iss = claims.get("iss")
    wanted = {i.rstrip("/") for i in issuers if i}
    if not isinstance(iss, str) or iss == ACCESS_TOKEN_ISSUER or iss.rstrip("/") not in wanted:
        raise ValueError("not an ID token of this server")
    if not isinstance(claims.get("exp"), int) or claims["exp"] <= now.timestamp():
        raise ValueError("token expired")
    return claims


def tokeninfo_v2(*, access: AccessToken | None = None, id_claims: Mapping[str, Any] | None = None,
                 now: dt.datetime) -> dict[str, Any]:
    """Google's oauth2 v2 Tokeninfo: issued_to, audience, user_id, scope, expires_in, email, verified_email."""
    if access is not None:
        email = names.member_email(access.principal) or ""
        uid = str(access.claims.get("uid") or email or access.principal)
        out: dict[str, Any] = {"issued_to": uid, "audience": uid, "user_id": uid,
                               "expires_in": max(0, int((access.expires_at - now).total_seconds()))}
        if access.claims.get("scope"):
            out["scope"] = str(access.claims["scope"])
        if email:
            out["email"] = email
            out["verified_email"] = True
        out["access_type"] = "online"
        return out
    assert id_claims is not None
    aud = id_claims["aud"]
    out = {"issuer": id_claims["iss"], "issued_to": str(id_claims.get("azp") or aud),
           "audience": aud if isinstance(aud, str) else " ".join(map(str, aud)), "user_id": str(id_claims["sub"]),
           "expires_in": max(0, int(id_claims["exp"] - now.timestamp())), "issued_at": int(id_claims["iat"])}
    if id_claims.get("email"):
        out["email"] = id_claims["email"]
        out["verified_email"] = bool(id_claims.get("email_verified"))
    return out


def tokeninfo_v3(*, access: AccessToken | None = None, id_claims: Mapping[str, Any] | None = None,
                 header: Mapping[str, Any] | None = None, now: dt.datetime) -> dict[str, Any]:
    """Google's oauth2 v3 tokeninfo: the claims, every value a string (as Google answers)."""
    if access is not None:
        email = names.member_email(access.principal) or ""
        uid = str(access.claims.get("uid") or email or access.principal)
        out = {"azp": uid, "aud": uid, "sub": uid, "exp": str(int(access.expires_at.timestamp())),
               "expires_in": str(max(0, int((access.expires_at - now).total_seconds()))), "access_type": "online"}
        if access.claims.get("scope"):
            out["scope"] = str(access.claims["scope"])
        if email:
            out["email"] = email
            out["email_verified"] = "true"
        return out
    assert id_claims is not None
    out = {k: (("true" if v else "false") if isinstance(v, bool) else str(v)) for k, v in id_claims.items()
           if isinstance(v, str | int | float | bool)}
    for k in ("alg", "kid", "typ"):
        if header and isinstance(header.get(k), str):
            out[k] = header[k]
    return out


# ------------------------------------------------------------------------------ public discovery
def openid_configuration(base: str) -> dict[str, Any]:
    base = base.rstrip("/")
    return {"issuer": base, "jwks_uri": f"{base}/.well-known/jwks.json", "token_endpoint": f"{base}/token",
            "id_token_signing_alg_values_supported": ["ES256"], "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"], "grant_types_supported": [JWT_BEARER],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "claims_supported": ["aud", "azp", "email", "email_verified", "exp", "iat", "iss", "sub"],
            "scopes_supported": ["openid", "email", "https://www.googleapis.com/auth/cloud-platform"]}


def _published_keys(registry: Registry, acct: ServiceAccount, now: dt.datetime) -> list[AccountKey]:
    if not acct.usable:
        return []
    return [k for k in registry.keys_of(acct.email) if k.unique_id == acct.unique_id and k.usable_at(now)]


def account_certificates(registry: Registry, acct: ServiceAccount, now: dt.datetime) -> dict[str, str]:
    """kid → X.509 PEM of the account's usable keys (Google's ``metadata/x509/EMAIL``)."""
    out = {}
    for k in _published_keys(registry, acct, now):
        cert = k.data.get("keycardCertificatePem")
        if isinstance(cert, str) and cert:
            out[k.key_id] = cert
    return out


def account_jwks(registry: Registry, acct: ServiceAccount, now: dt.datetime) -> dict[str, Any]:
    """The account's usable keys as a JWKS (Google's ``jwk/EMAIL``)."""
    out = []
    for k in _published_keys(registry, acct, now):
        try:
            pub = serialization.load_pem_public_key(k.public_pem.encode())
        except ValueError:
            continue
        if not isinstance(pub, rsa.RSAPublicKey):
            continue
        nums = pub.public_numbers()
        out.append({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": k.key_id,
                    "n": _b64(nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big")),
                    "e": _b64(nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big"))})
    return {"keys": out}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
