"""Server signing keys and keycard access tokens.

Access tokens are ES256 JWTs (PyJWT + cryptography) behind the prefix ``kc1.`` so that no
tool, log scanner or Google endpoint can mistake them for Google's ``ya29.`` tokens, and a
leaked one is visibly keycard's. Keys rotate: the newest active key signs; every key not yet
retired verifies, so tokens minted before a rotation stay valid until they expire. Public keys
are published as a JWKS.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keycard import names
from keycard.errors import InvalidArgument, Unauthenticated

__all__ = ["PREFIX", "AccessToken", "KeySet", "SigningKey", "federated_sets", "generate_key"]

PREFIX = "kc1."
ISSUER = "keycard"
AUDIENCE = "keycard"
DEFAULT_LIFETIME = 3600


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private_pem: str            # the server's own key: stored so every replica can sign and verify
    created: str                # RFC 3339
    retired: bool = False

    def to_record(self) -> dict[str, Any]:
        return {"kid": self.kid, "privateKeyPem": self.private_pem, "created": self.created, "retired": self.retired}

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> SigningKey:
        return cls(str(data["kid"]), str(data["privateKeyPem"]), str(data["created"]), bool(data.get("retired")))


def generate_key(now: dt.datetime) -> SigningKey:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    pub = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    kid = hashlib.sha256(pub).hexdigest()[:20]
    return SigningKey(kid, pem, now.strftime("%Y-%m-%dT%H:%M:%SZ"))


@dataclass(frozen=True, slots=True)
class AccessToken:
    token: str
    principal: str              # member key: user:…, serviceAccount:…
    expires_at: dt.datetime
    claims: Mapping[str, Any] = field(default_factory=dict)
    # the sets this credential puts its principal in, for this request only (Engine.check's extra_members):
    # a federated token's principalSet://…/group/G and …/attribute.NAME/VALUE, an IdP ID token's group: keys
    extra_members: frozenset[str] | None = None       # None: no sets

    @property
    def expires_in(self) -> int:
        return max(0, int((self.expires_at - dt.datetime.now(dt.UTC)).total_seconds()))


class KeySet:
    """The server's signing keys, loaded from the store."""

    def __init__(self, keys: Iterable[SigningKey]) -> None:
        self._keys: dict[str, SigningKey] = {}
        self._private: dict[str, ec.EllipticCurvePrivateKey] = {}
        # token → its verified claims: an ECDSA verification costs ~150 µs, a dict hit ~0.1 µs. A cached
        # token is still checked for expiry; the cache dies with this KeySet when keys change.
        self._verified: dict[str, AccessToken] = {}
        for k in keys:
            self.add(k)

    def add(self, key: SigningKey) -> None:
        priv = serialization.load_pem_private_key(key.private_pem.encode(), password=None)
        if not isinstance(priv, ec.EllipticCurvePrivateKey):
            raise ValueError(f"signing key {key.kid} is not an EC key")
        self._keys[key.kid] = key
        self._private[key.kid] = priv

    @property
    def active(self) -> SigningKey | None:
        live = [k for k in self._keys.values() if not k.retired]
        return max(live, key=lambda k: (k.created, k.kid)) if live else None

    def jwks(self) -> dict[str, Any]:
        out = []
        for kid, key in sorted(self._keys.items()):
            if key.retired:
                continue
            nums = self._private[kid].public_key().public_numbers()
            out.append({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                        "x": _b64(nums.x.to_bytes(32, "big")), "y": _b64(nums.y.to_bytes(32, "big"))})
        return {"keys": out}

    def mint(self, principal: str, *, now: dt.datetime, lifetime: int = DEFAULT_LIFETIME,
             scopes: Iterable[str] = (), extra: Mapping[str, Any] | None = None) -> AccessToken:
        key = self.active
        if key is None:
            raise RuntimeError("no active signing key: run `keycard init` first")
        exp = now + dt.timedelta(seconds=lifetime)
        claims: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": principal, "iat": int(now.timestamp()),
                                  "exp": int(exp.timestamp()), "jti": secrets.token_urlsafe(12)}
        scope_list = list(scopes)
        if scope_list:
            claims["scope"] = " ".join(scope_list)
        if extra:
            claims.update(extra)
        token = jwt.encode(claims, self._private[key.kid], algorithm="ES256", headers={"kid": key.kid})
        return AccessToken(PREFIX + token, principal, exp.replace(microsecond=0), claims)

    def mint_id_token(self, *, issuer: str, subject: str, audience: str, now: dt.datetime,
                      lifetime: int = DEFAULT_LIFETIME, extra: Mapping[str, Any] | None = None) -> str:
        """An OpenID Connect ID token (plain ES256 JWT, no ``kc1.`` prefix: any OIDC library verifies it
        against this server's JWKS at ``/.well-known/jwks.json``). ``subject``: the account's uniqueId
        (as Google does), ``extra``: e.g. ``email``, ``email_verified``, ``azp``."""
        key = self.active
        if key is None:
            raise RuntimeError("no active signing key: run `keycard init` first")
        claims: dict[str, Any] = {"iss": issuer, "aud": audience, "sub": subject, "iat": int(now.timestamp()),
                                  "exp": int(now.timestamp()) + lifetime}
        if extra:
            claims.update(extra)
        return jwt.encode(claims, self._private[key.kid], algorithm="ES256", headers={"kid": key.kid, "typ": "JWT"})

    def public_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        priv = self._private.get(kid)
        key = self._keys.get(kid)
        return priv.public_key() if priv is not None and key is not None and not key.retired else None

    def verify(self, token: str, *, now: dt.datetime) -> AccessToken:
        """Verify a keycard access token; raise Unauthenticated with a reason otherwise."""
        hit = self._verified.get(token)
        if hit is not None and hit.expires_at > now:
            return hit
        at = self._verify(token, now=now)
        if len(self._verified) >= 50_000:
            self._verified.clear()
        self._verified[token] = at
        return at

    def _verify(self, token: str, *, now: dt.datetime) -> AccessToken:
        if not token.startswith(PREFIX):
            raise Unauthenticated("Request had invalid authentication credentials: not a keycard access token. "
                                  "Get one with `keycard auth print-access-token`.",
                                  reason="ACCESS_TOKEN_TYPE_UNSUPPORTED")
        raw = token[len(PREFIX):]
        try:
            header = jwt.get_unverified_header(raw)
        except jwt.PyJWTError:
            raise Unauthenticated("Request had invalid authentication credentials: malformed token.",
                                  reason="ACCESS_TOKEN_INVALID") from None
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None or key.retired:
            raise Unauthenticated("Request had invalid authentication credentials: unknown or retired signing key.",
                                  reason="ACCESS_TOKEN_INVALID")
        try:
            claims = jwt.decode(raw, self._private[key.kid].public_key(), algorithms=["ES256"], audience=AUDIENCE,
                                issuer=ISSUER, options={"require": ["exp", "iat", "sub"], "verify_exp": False})
        except jwt.PyJWTError as e:
            raise Unauthenticated(f"Request had invalid authentication credentials: {e}.",
                                  reason="ACCESS_TOKEN_INVALID") from None
        exp = dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC)
        if exp <= now:
            raise Unauthenticated("Request had invalid authentication credentials: the access token expired. "
                                  "Get a new one.", reason="ACCESS_TOKEN_EXPIRED")
        sub = str(claims["sub"])
        return AccessToken(token, sub, exp, claims, (federated_sets(sub, claims) or None) if "fed" in claims else None)


def federated_sets(principal: str, claims: Mapping[str, Any]) -> frozenset[str]:
    """The ``principalSet://…/group/G`` and ``…/attribute.NAME/VALUE`` sets of a federated token
    (STS puts the mapped groups in ``grp`` and the attributes in ``attr``). Values that no policy
    member could name (whitespace, over 127 characters) are left out. Computed once per token: the
    verified token (with its sets) is cached."""
    if not principal.startswith("principal://") or "/subject/" not in principal:
        return frozenset()
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
    valid = set()
    for s in out:
        try:
            valid.add(names.parse_member(s, "principalSet"))
        except InvalidArgument:
            continue
    return frozenset(valid)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
