"""Human users signing in with their organization's own OpenID Connect identity provider.

An organization configures providers (record kind ``oidc_provider``, named
``organizations/N/identityProviders/ID``; the runtime mirrors them into ``Registry.oidc``): an
issuer, the client ids whose ID tokens it accepts (``aud``), the provider's public keys (inline
``jwksJson`` or a ``jwksUri``), and a workforce-pool–style mapping of the token's claims to a
principal. A user then presents the IdP's ID token as ``Authorization: Bearer`` on any API.

Validation follows OpenID Connect Core 1.0 §3.1.3.7:

* the signature, with RS256 or ES256 only (never ``none`` or an HMAC: a public key is not a
  secret), by a key of the provider's JWKS found by ``kid``; JWS headers that point elsewhere
  (``jku``, ``jwk``, ``x5u``, ``x5c``) are never followed, and ``crit`` is refused;
* ``iss`` equal to the configured issuer, character for character;
* ``aud`` containing one of the configured client ids; with several audiences, ``azp`` must be
  present and be one of them;
* ``exp`` (required) not passed, ``nbf`` reached, ``iat`` (required) not in the future, each
  with :data:`CLOCK_SKEW`; a token may live at most :data:`MAX_LIFETIME`.

Then the mapping, in CEL over ``assertion.*`` (the token's claims; the CEL runtime of
:mod:`keycard.engine.conditions`, with Google's ``extract()``): ``attributeCondition`` must be
true; ``google.subject`` (default ``assertion.email``) gives the user's email, whose domain must
be one of the provider's ``allowedDomains`` (default: the organization's domain) so that an IdP
cannot speak for other domains; ``email_verified`` must be true unless ``requireEmailVerified``
is false; ``google.groups`` (default ``assertion.groups``) gives group emails — those outside
the allowed domains are dropped. The principal is ``user:EMAIL``, lower-cased.

Keys fetched from a ``jwksUri`` are cached per provider. A token signed by an unknown ``kid``
triggers a refetch (the IdP may have rotated its keys) at most once per :data:`JWKS_COOLDOWN`
seconds per provider, so a flood of tokens with made-up key ids cannot make keycard hammer the
IdP. Everything here is pure except the injected fetch function.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
import math
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jwt
from cel_expr_python import cel  # type: ignore[import-untyped]
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from keycard import names
from keycard.engine.conditions import extract_template
from keycard.errors import InvalidArgument, KeycardError, Unauthenticated

__all__ = [
    "ALGORITHMS", "CLOCK_SKEW", "JWKS_COOLDOWN", "MAX_LIFETIME", "Expression", "JwksCache", "JwtKey",
    "OidcAuthenticator", "OidcUser", "ProviderConfig", "compile_expression", "compile_provider", "fetch_jwks",
    "parse_jwks",
]

log = logging.getLogger("keycard.identity.oidc")

ALGORITHMS = ("RS256", "ES256")
CLOCK_SKEW = 60                     # seconds of clock difference tolerated on exp, nbf and iat
MAX_LIFETIME = 24 * 3600            # exp - iat of an acceptable ID token
MAX_GROUPS = 400                    # google.groups values per token (Google's workforce limit)
JWKS_COOLDOWN = 60.0                # at most one JWKS refetch per provider per this many seconds
JWKS_MAX_AGE = 3600.0               # fetched keys are refreshed (on use) after this long
MAX_JWKS_BYTES = 512 * 1024
MAX_KEYS = 100
DEFAULT_MAPPING = {"google.subject": "assertion.email", "google.groups": "assertion.groups"}
MAPPING_KEYS = ("google.subject", "google.groups")

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
Fetch = Callable[[str], object]      # URL → the parsed JSON document; raises on any failure


# ----------------------------------------------------------------------------------- keys

@dataclass(frozen=True, slots=True)
class JwtKey:
    kid: str | None
    alg: str                         # RS256 | ES256
    key: PublicKey


def parse_jwk(jwk: object) -> JwtKey:
    """One public JWK → a verification key; ``ValueError`` saying why it cannot be one."""
    if not isinstance(jwk, Mapping):
        raise ValueError("expected a JWK object")
    if any(k in jwk for k in ("d", "p", "q", "k")):
        raise ValueError("holds private or symmetric key material; give the provider's public keys only")
    if jwk.get("use") not in (None, "sig"):
        raise ValueError(f"use {jwk.get('use')!r} is not 'sig'")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ValueError("kid must be a string")
    kty, alg = jwk.get("kty"), jwk.get("alg")
    try:
        if kty == "RSA":
            if alg not in (None, "RS256"):
                raise ValueError(f"alg {alg!r} is not accepted; RSA keys are used with RS256")
            rkey = RSAAlgorithm.from_jwk(dict(jwk))
            if not isinstance(rkey, rsa.RSAPublicKey):
                raise ValueError("not an RSA public key")
            if rkey.key_size < 2048:
                raise ValueError(f"an RSA key of {rkey.key_size} bits is too weak (2048 at least)")
            return JwtKey(kid, "RS256", rkey)
        if kty == "EC":
            if jwk.get("crv") != "P-256" or alg not in (None, "ES256"):
                raise ValueError("EC keys must be P-256, used with ES256")
            ekey = ECAlgorithm.from_jwk(dict(jwk))
            if not isinstance(ekey, ec.EllipticCurvePublicKey):
                raise ValueError("not an EC public key")
            return JwtKey(kid, "ES256", ekey)
    except ValueError:
        raise
    except Exception as e:  # PyJWT's and the decoders' errors on malformed members (n, e, x, y)
        raise ValueError(f"not a valid {kty} JWK: {e}") from None
    raise ValueError(f"kty {kty!r} is not accepted; RSA (RS256) or EC P-256 (ES256)")


def parse_jwks(doc: object, *, field: str = "jwks", strict: bool = True) -> tuple[JwtKey, ...]:
    """A JWKS ``{"keys": [...]}`` → its usable keys.

    ``strict`` (configuration): any unusable key is a 400 naming it, and at least one key is
    needed. Not strict (a fetched JWKS): unusable keys are skipped.
    """
    if isinstance(doc, str | bytes):
        try:
            doc = json.loads(doc)
        except (ValueError, RecursionError):
            if strict:
                raise InvalidArgument(f"Invalid {field}: not JSON.", field=field) from None
            return ()
    keys = doc.get("keys") if isinstance(doc, Mapping) else None
    if not isinstance(keys, list):
        if strict:
            raise InvalidArgument(f'Invalid {field}: expected a JWK set {{"keys": [...]}}.', field=field)
        return ()
    if strict and len(keys) > MAX_KEYS:
        raise InvalidArgument(f"Invalid {field}: at most {MAX_KEYS} keys.", field=field)
    out: list[JwtKey] = []
    for i, jwk in enumerate(keys[:MAX_KEYS]):
        try:
            out.append(parse_jwk(jwk))
        except ValueError as e:
            if strict:
                raise InvalidArgument(f"Invalid {field}.keys[{i}]: {e}.", field=field) from None
    if strict and not out:
        raise InvalidArgument(f"Invalid {field}: it holds no keys.", field=field)
    return tuple(out)


def _pick(keys: Sequence[JwtKey], kid: str | None, alg: str) -> JwtKey | None:
    if kid is not None:
        return next((k for k in keys if k.kid == kid and k.alg == alg), None)
    candidates = [k for k in keys if k.alg == alg]
    return candidates[0] if len(candidates) == 1 else None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None                       # a redirect is an error: keys come from the configured URL only


def fetch_jwks(uri: str, *, timeout: float = 5.0) -> object:
    """GET a JWKS document: http(s) only, no redirects, at most :data:`MAX_JWKS_BYTES`.

    The standard library's client (as the metadata server uses): no runtime dependency for one GET.
    """
    if urlsplit(uri).scheme not in ("https", "http"):
        raise ValueError(f"not an http(s) URL: {uri!r}")
    opener = urllib.request.build_opener(_NoRedirects)
    request = urllib.request.Request(uri, headers={"Accept": "application/json", "User-Agent": "keycard"})
    with opener.open(request, timeout=timeout) as resp:
        if resp.status != 200:
            raise ValueError(f"HTTP {resp.status}")
        body = resp.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError(f"larger than {MAX_JWKS_BYTES} bytes")
    return json.loads(body)


@dataclass(slots=True)
class _JwksEntry:
    uri: str
    keys: tuple[JwtKey, ...] = ()
    fetched: float | None = None          # monotonic time of the last successful fetch
    attempted: float | None = None        # of the last attempt, successful or not
    fetches: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class JwksCache:
    """Keys fetched from providers' ``jwksUri``, with a refetch cool-down per provider."""

    def __init__(self, fetch: Fetch = fetch_jwks, *, cooldown: float = JWKS_COOLDOWN,
                 max_age: float = JWKS_MAX_AGE, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self.cooldown = cooldown
        self.max_age = max_age
        self._monotonic = monotonic
        self._entries: dict[str, _JwksEntry] = {}
        self._lock = threading.Lock()

    def fetches(self, provider: str) -> int:
        entry = self._entries.get(provider)
        return entry.fetches if entry is not None else 0

    def forget(self, provider: str) -> None:
        self._entries.pop(provider, None)

    def _entry(self, provider: str, uri: str) -> _JwksEntry:
        entry = self._entries.get(provider)
        if entry is None or entry.uri != uri:
            with self._lock:
                entry = self._entries.get(provider)
                if entry is None or entry.uri != uri:
                    entry = self._entries[provider] = _JwksEntry(uri)
        return entry

    def _fresh(self, entry: _JwksEntry, now: float) -> bool:
        return entry.fetched is not None and now - entry.fetched < self.max_age

    def lookup(self, provider: str, uri: str, kid: str | None, alg: str) -> JwtKey | None:
        """The key ``kid`` of the provider's JWKS, fetching the JWKS when it was never fetched, is
        older than ``max_age``, or lacks ``kid`` — but never twice within ``cooldown`` seconds."""
        entry = self._entry(provider, uri)
        key = _pick(entry.keys, kid, alg)
        if key is not None and self._fresh(entry, self._monotonic()):
            return key
        with entry.lock:                           # one fetch at a time; the others wait and re-check
            key = _pick(entry.keys, kid, alg)
            now = self._monotonic()
            if key is not None and self._fresh(entry, now):
                return key
            if entry.attempted is not None and now - entry.attempted < self.cooldown:
                return key                         # a known key still serves while stale
            entry.attempted = now
            entry.fetches += 1
            try:
                keys = parse_jwks(self._fetch(uri), strict=False)
            except Exception as e:  # the IdP is down or answers garbage: keep what we had
                log.warning("fetching the JWKS of %s from %s failed: %s", provider, uri, e)
                return key
            if not keys:
                log.warning("the JWKS of %s at %s holds no usable keys", provider, uri)
                return key
            entry.keys = keys
            entry.fetched = now
            return _pick(keys, kid, alg)


# ------------------------------------------------------------------------------------- CEL

_T: Any = cel.Type
_ENV: Any = cel.NewEnv(
    variables={"assertion": _T.Map(_T.STRING, _T.DYN)},
    functions=[cel.FunctionDecl("extract", [cel.Overload("string_extract_string", _T.STRING, [_T.STRING, _T.STRING],
                                                         is_member=True, impl=extract_template)])],
)


def _one_line(message: str) -> str:
    line = next((p.strip() for p in message.splitlines() if p.strip()), "invalid expression")
    for prefix in ("INVALID_ARGUMENT:", "NOT_FOUND:", "UNKNOWN:", "ERROR:", "<input>:"):
        line = line.removeprefix(prefix).strip()
    return line[:300]


class Expression:
    """A compiled CEL expression over ``assertion`` (the token's claims)."""

    __slots__ = ("_program", "source")

    def __init__(self, source: str, program: Any) -> None:
        self.source = source
        self._program = program

    def evaluate(self, assertion: Mapping[str, Any]) -> object:
        """The plain Python value; ``ValueError`` when the expression ends in an error."""
        try:
            result = self._program.eval(data={"assertion": dict(assertion)})
            if result.type() == _T.ERROR:
                raise ValueError(_one_line(str(result.value())))
            return result.plain_value()
        except ValueError:
            raise
        except Exception as e:  # the runtime's own conversion errors
            raise ValueError(_one_line(str(e))) from None


def compile_expression(source: object, *, field: str, boolean: bool = False) -> Expression:
    if not isinstance(source, str) or not source.strip():
        raise InvalidArgument(f"Invalid {field}: expected a CEL expression over assertion.*.", field=field)
    if len(source) > 8192:
        raise InvalidArgument(f"Invalid {field}: at most 8192 characters.", field=field)
    try:
        program = _ENV.compile(source)
        rtype = program.return_type()
    except Exception as e:
        raise InvalidArgument(f"Invalid {field}: {_one_line(str(e))}.", field=field) from None
    if boolean and rtype not in (_T.BOOL, _T.DYN):
        raise InvalidArgument(f"Invalid {field}: must evaluate to bool, not {str(rtype.name()).lower()}.",
                              field=field)
    return Expression(source, program)


# ---------------------------------------------------------------------------- configuration

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def check_url(value: object, field: str, *, what: str) -> str:
    """https://HOST/... (http:// only on loopback), no query, fragment or credentials."""
    if not isinstance(value, str) or not value or len(value) > 2048 or any(c.isspace() for c in value):
        raise InvalidArgument(f"Invalid {field}: expected the {what} URL.", field=field)
    try:
        u = urlsplit(value)
        host = u.hostname
    except ValueError:
        raise InvalidArgument(f"Invalid {field}: {value!r} is not a URL.", field=field) from None
    if u.scheme not in ("https", "http") or not host or u.username or u.password or u.query or u.fragment:
        raise InvalidArgument(f"Invalid {field}: {value!r} must be an https:// URL without query, fragment or "
                              "credentials.", field=field)
    if u.scheme == "http" and host not in _LOOPBACK:
        raise InvalidArgument(f"Invalid {field}: {value!r} must use https (http only on loopback).", field=field)
    return value


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str                           # organizations/N/identityProviders/ID
    issuer: str
    client_ids: frozenset[str]
    jwks_uri: str | None
    keys: tuple[JwtKey, ...]            # inline jwksJson
    subject: Expression
    groups: Expression | None
    condition: Expression | None
    allowed_domains: frozenset[str]
    require_email_verified: bool
    disabled: bool


def _str_list(value: object, field: str, *, limit: int, item_max: int = 256) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or len(value) > limit or not all(
            isinstance(v, str) and 0 < len(v) <= item_max and v.strip() == v for v in value):
        raise InvalidArgument(f"Invalid {field}: expected 1 to {limit} non-empty strings.", field=field)
    return list(dict.fromkeys(value))


def compile_provider(name: str, data: Mapping[str, Any]) -> ProviderConfig:
    """A provider's stored JSON → its compiled configuration; ``InvalidArgument`` naming the field."""
    oidc = data.get("oidc")
    if not isinstance(oidc, Mapping):
        raise InvalidArgument("Invalid oidc: expected {issuerUri, clientIds, jwksJson or jwksUri}.", field="oidc")
    issuer = check_url(oidc.get("issuerUri"), "oidc.issuerUri", what="issuer")
    client_ids = _str_list(oidc.get("clientIds"), "oidc.clientIds", limit=20)
    jwks_json, jwks_uri = oidc.get("jwksJson"), oidc.get("jwksUri")
    if (jwks_json is None) == (jwks_uri is None):
        raise InvalidArgument("Invalid oidc: give exactly one of jwksJson (the provider's public keys) and "
                              "jwksUri (where to fetch them).", field="oidc.jwksJson")
    keys: tuple[JwtKey, ...] = ()
    if jwks_json is not None:
        if isinstance(jwks_json, str) and len(jwks_json) > MAX_JWKS_BYTES:
            raise InvalidArgument(f"Invalid oidc.jwksJson: at most {MAX_JWKS_BYTES} bytes.", field="oidc.jwksJson")
        keys = parse_jwks(jwks_json, field="oidc.jwksJson")
    else:
        jwks_uri = check_url(jwks_uri, "oidc.jwksUri", what="JWKS")
    mapping = data.get("attributeMapping", DEFAULT_MAPPING)
    if not isinstance(mapping, Mapping):
        raise InvalidArgument("Invalid attributeMapping: expected {\"google.subject\": CEL, \"google.groups\": CEL}.",
                              field="attributeMapping")
    for k in mapping:
        if k not in MAPPING_KEYS:
            raise InvalidArgument(f"Invalid attributeMapping key {k!r}: keycard maps google.subject (the user's "
                                  "email) and google.groups (group emails).", field=f"attributeMapping.{k}")
    if "google.subject" not in mapping:
        raise InvalidArgument("Invalid attributeMapping: google.subject is required (e.g. assertion.email).",
                              field="attributeMapping.google.subject")
    subject = compile_expression(mapping["google.subject"], field="attributeMapping.google.subject")
    groups = (compile_expression(mapping["google.groups"], field="attributeMapping.google.groups")
              if mapping.get("google.groups") else None)
    cond_src = data.get("attributeCondition")
    condition = (compile_expression(cond_src, field="attributeCondition", boolean=True)
                 if cond_src not in (None, "") else None)
    domains = _str_list(data.get("allowedDomains"), "allowedDomains", limit=50)
    for i, d in enumerate(domains):
        try:
            names.parse_member(f"domain:{d}", f"allowedDomains[{i}]")
        except InvalidArgument:
            raise InvalidArgument(f"Invalid allowedDomains[{i}] {d!r}: expected a DNS domain such as example.com.",
                                  field="allowedDomains") from None
    verified = data.get("requireEmailVerified", True)
    disabled = data.get("disabled", False)
    if not isinstance(verified, bool):
        raise InvalidArgument("Invalid requireEmailVerified: expected true or false.", field="requireEmailVerified")
    if not isinstance(disabled, bool):
        raise InvalidArgument("Invalid disabled: expected true or false.", field="disabled")
    return ProviderConfig(name, issuer, frozenset(client_ids), jwks_uri if jwks_json is None else None, keys,
                          subject, groups, condition, frozenset(d.lower() for d in domains), verified, disabled)


# ----------------------------------------------------------------------------- verification

@dataclass(frozen=True, slots=True)
class OidcUser:
    principal: str                      # user:EMAIL (lower-cased)
    email: str
    groups: tuple[str, ...]             # group:EMAIL member keys, from google.groups
    provider: str                       # the provider's name
    expires_at: dt.datetime
    claims: Mapping[str, Any]


def _fail(why: str, reason: str = "ID_TOKEN_INVALID") -> Unauthenticated:
    return Unauthenticated(f"Request had invalid authentication credentials: the identity provider's ID token "
                           f"{why}.", reason=reason)


def _number(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    v = claims.get(name)
    if v is None:
        if required:
            raise _fail(f"has no {name} claim", "ID_TOKEN_CLAIM_MISSING")
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise _fail(f"has a {name} claim that is not a number of seconds")
    return float(v)


def unverified_issuer(token: str) -> str | None:
    """The ``iss`` of a compact JWS, unverified (None if it is not a JWT with a string iss)."""
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > 64 * 1024:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        return None
    iss = payload.get("iss") if isinstance(payload, dict) else None
    return iss if isinstance(iss, str) else None


_EMAILISH = re.compile(r"^[^@\s]+@[^@\s]+$")


def verify_id_token(token: str, cfg: ProviderConfig, now: dt.datetime, key_for: Callable[[str | None, str],
                    JwtKey | None]) -> OidcUser:
    """Verify ``token`` against ``cfg`` (OIDC Core §3.1.3.7) and map it to a user; 401 otherwise."""
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.PyJWTError, RecursionError):
        raise _fail("is malformed") from None
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise _fail(f"is signed with alg {alg!r}; only RS256 and ES256 are accepted", "ALGORITHM_NOT_ALLOWED")
    if "crit" in header:
        raise _fail("carries critical header extensions keycard does not understand")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _fail("has a kid header that is not a string")
    key = key_for(kid, alg)
    if key is None:
        raise _fail(f"is signed with key id {kid!r}, which is not in the JWKS of {cfg.name}", "KEY_NOT_FOUND")
    try:
        claims: dict[str, Any] = jwt.decode(token, key.key, algorithms=[alg], options={
            "verify_signature": True, "verify_aud": False, "verify_iss": False, "verify_exp": False,
            "verify_nbf": False, "verify_iat": False, "require": []})
    except jwt.PyJWTError as e:
        raise _fail(f"does not verify: {e}") from None
    # -- iss, sub, aud, azp
    if claims.get("iss") != cfg.issuer:
        raise _fail(f"was issued by {claims.get('iss')!r}, not {cfg.issuer!r}", "ISSUER_MISMATCH")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise _fail("has no sub claim", "ID_TOKEN_CLAIM_MISSING")
    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else None
    if not auds or not all(isinstance(a, str) for a in auds):
        raise _fail("has no aud claim", "ID_TOKEN_CLAIM_MISSING")
    if not cfg.client_ids.intersection(auds):
        raise _fail(f"is for audience {aud!r}, not one of the client ids of {cfg.name}", "AUDIENCE_MISMATCH")
    if len(auds) > 1 and claims.get("azp") not in cfg.client_ids:
        raise _fail("has several audiences but no azp naming one of the provider's client ids", "AUDIENCE_MISMATCH")
    # -- times
    t = now.timestamp()
    exp = _number(claims, "exp", required=True)
    iat = _number(claims, "iat", required=True)
    nbf = _number(claims, "nbf", required=False)
    assert exp is not None and iat is not None
    if t >= exp + CLOCK_SKEW:
        raise _fail("has expired", "ID_TOKEN_EXPIRED")
    if nbf is not None and t + CLOCK_SKEW < nbf:
        raise _fail("is not valid yet (nbf is in the future)", "ID_TOKEN_NOT_YET_VALID")
    if iat > t + CLOCK_SKEW:
        raise _fail("was issued in the future (iat)", "ID_TOKEN_NOT_YET_VALID")
    if exp <= iat or exp - iat > MAX_LIFETIME:
        raise _fail(f"lives {int(exp - iat)} s; at most {MAX_LIFETIME} s are accepted")
    # -- mapping
    if cfg.condition is not None:
        try:
            ok = cfg.condition.evaluate(claims)
        except ValueError as e:
            raise _fail(f"does not satisfy the attributeCondition of {cfg.name} ({e})",
                        "ATTRIBUTE_CONDITION_FAILED") from None
        if ok is not True:
            raise _fail(f"does not satisfy the attributeCondition of {cfg.name}", "ATTRIBUTE_CONDITION_FAILED")
    try:
        mapped = cfg.subject.evaluate(claims)
    except ValueError as e:
        raise _fail(f"cannot be mapped to a user: google.subject ({cfg.subject.source}) failed: {e}",
                    "ATTRIBUTE_MAPPING_FAILED") from None
    if not isinstance(mapped, str) or not _EMAILISH.match(mapped.strip()):
        raise _fail(f"cannot be mapped to a user: google.subject ({cfg.subject.source}) is not an email",
                    "ATTRIBUTE_MAPPING_FAILED")
    email = mapped.strip().lower()
    try:
        principal = names.parse_member(f"user:{email}", "google.subject")
    except KeycardError:
        raise _fail("cannot be mapped to a user: google.subject is not a valid email",
                    "ATTRIBUTE_MAPPING_FAILED") from None
    if cfg.require_email_verified:
        v = claims.get("email_verified")
        if not (v is True or (isinstance(v, str) and v.lower() == "true")):
            raise _fail(f"does not say email_verified for {email}", "EMAIL_NOT_VERIFIED")
    domain = email.rsplit("@", 1)[1]
    if domain not in cfg.allowed_domains:
        raise _fail(f"names {email}, whose domain {domain} is not one {cfg.name} may sign in for",
                    "DOMAIN_NOT_ALLOWED")
    groups = _groups(cfg, claims)
    return OidcUser(principal, email, groups, cfg.name, dt.datetime.fromtimestamp(exp, dt.UTC), claims)


def _groups(cfg: ProviderConfig, claims: Mapping[str, Any]) -> tuple[str, ...]:
    """google.groups → ``group:EMAIL`` keys in the allowed domains (others dropped). A mapping that
    fails (e.g. the token has no groups claim) gives no groups: fewer groups never grant more."""
    if cfg.groups is None:
        return ()
    try:
        value = cfg.groups.evaluate(claims)
    except ValueError:
        return ()
    values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    if len(values) > MAX_GROUPS:
        raise _fail(f"maps to {len(values)} groups; at most {MAX_GROUPS} are accepted", "ATTRIBUTE_MAPPING_FAILED")
    out: dict[str, None] = {}
    for g in values:
        if not isinstance(g, str) or not _EMAILISH.match(g.strip()):
            continue
        email = g.strip().lower()
        if email.rsplit("@", 1)[1] not in cfg.allowed_domains:
            continue
        try:
            out[names.parse_member(f"group:{email}", "google.groups")] = None
        except KeycardError:
            continue
    return tuple(out)


class OidcAuthenticator:
    """Bearer ID tokens of the configured providers → users (verified tokens cached until exp)."""

    def __init__(self, providers: Callable[[], Mapping[str, Mapping[str, Any]]], fetch: Fetch = fetch_jwks, *,
                 cooldown: float = JWKS_COOLDOWN, max_age: float = JWKS_MAX_AGE,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._providers = providers
        self.jwks = JwksCache(fetch, cooldown=cooldown, max_age=max_age, monotonic=monotonic)
        self._compiled: dict[str, tuple[Mapping[str, Any], ProviderConfig | str]] = {}
        self._verified: dict[str, tuple[OidcUser, Mapping[str, Any]]] = {}

    def _config(self, name: str, data: Mapping[str, Any]) -> ProviderConfig | str:
        hit = self._compiled.get(name)
        if hit is not None and hit[0] is data:
            return hit[1]
        try:
            cfg: ProviderConfig | str = compile_provider(name, data)
        except KeycardError as e:            # a record the API would not have accepted
            cfg = str(e)
        self._compiled[name] = (data, cfg)
        return cfg

    def authenticate(self, token: str, now: dt.datetime) -> OidcUser | None:
        """The user, if ``token`` is an ID token of a configured issuer; None if it is not one (the
        caller tries other kinds of credentials); 401 if it is one and does not pass."""
        providers = self._providers()
        hit = self._verified.get(token)
        if hit is not None:
            user, data = hit
            current = providers.get(user.provider)
            if current is data and user.expires_at > now - dt.timedelta(seconds=CLOCK_SKEW) \
                    and not data.get("disabled"):
                return user
            self._verified.pop(token, None)
            if current is None:
                raise _fail(f"was issued by identity provider {user.provider}, which has been deleted",
                            "PROVIDER_DELETED")
        if not providers:
            return None
        iss = unverified_issuer(token)
        if iss is None:
            return None
        matches = [(name, data) for name, data in list(providers.items())
                   if isinstance(data.get("oidc"), Mapping) and data["oidc"].get("issuerUri") == iss]
        if not matches:
            return None
        first: Unauthenticated | None = None
        for name, data in sorted(matches, key=lambda m: m[0]):
            cfg = self._config(name, data)
            try:
                if isinstance(cfg, str):
                    raise _fail(f"cannot be checked: identity provider {name} is misconfigured ({cfg})",
                                "PROVIDER_MISCONFIGURED")
                if cfg.disabled:
                    raise _fail(f"was issued by identity provider {name}, which is disabled", "PROVIDER_DISABLED")
                user = verify_id_token(token, cfg, now, self._key_lookup(cfg))
            except Unauthenticated as e:
                first = first or e
                continue
            if len(self._verified) >= 20_000:
                self._verified.clear()
            self._verified[token] = (user, data)
            return user
        assert first is not None
        raise first

    def _key_lookup(self, cfg: ProviderConfig) -> Callable[[str | None, str], JwtKey | None]:
        if cfg.jwks_uri is None:
            return lambda kid, alg: _pick(cfg.keys, kid, alg)
        uri = cfg.jwks_uri
        return lambda kid, alg: self.jwks.lookup(cfg.name, uri, kid, alg)
