"""keycard.identity.oidc without a server: the JWKS cache's refetch cool-down, key parsing, mapping."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from keycard.errors import InvalidArgument, Unauthenticated
from keycard.identity.oidc import JwksCache, OidcAuthenticator, compile_provider, parse_jwks

ISS = "https://idp.unit.test"
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    return {**json.loads(RSAAlgorithm.to_jwk(key.public_key())), "kid": kid, "use": "sig"}


def _token(key: Any, kid: str, alg: str = "RS256", **claims: Any) -> str:
    body = {"iss": ISS, "aud": "kc", "sub": "u1", "email": "dana@example.com", "email_verified": True,
            "iat": int(NOW.timestamp()) - 10, "exp": int(NOW.timestamp()) + 3600, **claims}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _provider(**extra: Any) -> dict[str, Any]:
    return {"oidc": {"issuerUri": ISS, "clientIds": ["kc"], "jwksUri": "https://idp.unit.test/jwks"},
            "attributeMapping": {"google.subject": "assertion.email", "google.groups": "assertion.groups"},
            "allowedDomains": ["example.com"], **extra}


def test_unknown_kid_refetches_at_most_once_per_cooldown_then_finds_a_rotated_key() -> None:
    k1, k2 = _rsa(), _rsa()
    served = {"keys": [_jwk(k1, "k1")]}
    fetched: list[str] = []

    def fetch(uri: str) -> object:
        fetched.append(uri)
        return served

    clock = Clock()
    auth = OidcAuthenticator(lambda: {"organizations/1/identityProviders/corp": _provider()}, fetch,
                             cooldown=60, monotonic=clock)
    assert auth.authenticate(_token(k1, "k1"), NOW) is not None
    assert len(fetched) == 1
    served["keys"].append(_jwk(k2, "k2"))                 # the IdP rotates in a new key
    for i in range(50):                                  # a flood of made-up key ids
        with pytest.raises(Unauthenticated):
            auth.authenticate(_token(_rsa() if i == 0 else k1, f"bogus-{i}"), NOW)
    with pytest.raises(Unauthenticated, match="not in the JWKS"):
        auth.authenticate(_token(k2, "k2"), NOW)          # within the cool-down: not fetched again
    assert len(fetched) == 1
    clock.t += 61
    user = auth.authenticate(_token(k2, "k2"), NOW)       # after it: one refetch finds the new key
    assert user is not None and user.principal == "user:dana@example.com"
    assert len(fetched) == 2


def test_stale_keys_keep_serving_while_the_idp_is_down() -> None:
    k1 = _rsa()
    calls = {"n": 0}

    def fetch(uri: str) -> object:
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError("connection refused")
        return {"keys": [_jwk(k1, "k1")]}

    clock = Clock()
    cache = JwksCache(fetch, cooldown=60, max_age=300, monotonic=clock)
    assert cache.lookup("p", "https://x/jwks", "k1", "RS256") is not None
    clock.t += 400                                       # stale: a refresh is tried, fails, old key serves
    assert cache.lookup("p", "https://x/jwks", "k1", "RS256") is not None
    assert cache.lookup("p", "https://x/jwks", "k1", "RS256") is not None
    assert calls["n"] == 2


def test_jwks_parsing_refuses_private_symmetric_and_weak_keys() -> None:
    key = _rsa()
    private = json.loads(RSAAlgorithm.to_jwk(key))
    with pytest.raises(InvalidArgument, match="private or symmetric"):
        parse_jwks({"keys": [private]})
    with pytest.raises(InvalidArgument, match="private or symmetric"):
        parse_jwks({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(InvalidArgument, match="too weak"):
        parse_jwks({"keys": [_jwk(weak, "w")]})
    p384 = json.loads(ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key()))
    with pytest.raises(InvalidArgument, match="P-256"):
        parse_jwks({"keys": [p384]})
    p256 = json.loads(ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key()))
    assert [k.alg for k in parse_jwks(json.dumps({"keys": [p256, _jwk(key, "r")]}))] == ["ES256", "RS256"]
    # fetched sets skip what they cannot use instead of failing
    assert [k.kid for k in parse_jwks({"keys": [private, _jwk(key, "r")]}, strict=False)] == ["r"]


def test_es256_tokens_and_group_mapping_within_allowed_domains() -> None:
    ek = ec.generate_private_key(ec.SECP256R1())
    jwk = {**json.loads(ECAlgorithm.to_jwk(ek.public_key())), "kid": "e1"}
    data = {**_provider(), "oidc": {"issuerUri": ISS, "clientIds": ["kc"], "jwksJson": json.dumps({"keys": [jwk]})}}
    auth = OidcAuthenticator(lambda: {"organizations/1/identityProviders/corp": data})
    user = auth.authenticate(_token(ek, "e1", "ES256", email="Dana@Example.com",
                                    groups=["ML@example.com", "x@other.com", "not-an-email", 7]), NOW)
    assert user is not None
    assert user.principal == "user:dana@example.com"
    assert user.groups == ("group:ml@example.com",)


def test_configuration_errors_name_the_field() -> None:
    cases = {
        "oidc.issuerUri": {**_provider(), "oidc": {"issuerUri": "http://idp.example.com", "clientIds": ["kc"],
                                                   "jwksUri": "https://idp.example.com/jwks"}},
        "oidc.jwksJson": {**_provider(), "oidc": {"issuerUri": ISS, "clientIds": ["kc"]}},
        "attributeCondition": _provider(attributeCondition="assertion.email +"),
        "attributeMapping.google.subject": _provider(attributeMapping={"google.groups": "assertion.groups"}),
        "attributeMapping.attribute.team": _provider(attributeMapping={"google.subject": "assertion.email",
                                                                       "attribute.team": "assertion.team"}),
        "allowedDomains": _provider(allowedDomains=["not a domain"]),
    }
    for fld, data in cases.items():
        with pytest.raises(InvalidArgument) as e:
            compile_provider("organizations/1/identityProviders/p", data)
        assert e.value.field == fld, (fld, str(e.value))


def test_fetch_jwks_follows_no_redirects_and_caps_the_size() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from keycard.identity.oidc import MAX_JWKS_BYTES, fetch_jwks

    key = _rsa()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/jwks")
                self.end_headers()
                return
            body = json.dumps({"keys": [_jwk(key, "k")]}).encode() if self.path == "/jwks" else \
                b" " * (MAX_JWKS_BYTES + 10)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        assert [k.kid for k in parse_jwks(fetch_jwks(base + "/jwks"))] == ["k"]
        with pytest.raises(Exception, match="302"):
            fetch_jwks(base + "/redirect")
        with pytest.raises(ValueError, match="larger"):
            fetch_jwks(base + "/big")
    finally:
        httpd.shutdown()
        httpd.server_close()
