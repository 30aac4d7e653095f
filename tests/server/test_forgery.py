"""Forgery corpus: every forged or dead credential is refused, each case its own test.

At the token endpoint a forged assertion gets 400 ``invalid_grant``; as a bearer on a protected API
(a self-signed service-account JWT, or a ``kc1.`` access token) it gets 401. Never 200, never 5xx.
Where a case kills a credential (disable, delete), the test first shows the same credential working,
so the refusal is the kill's doing and not a broken fixture.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from oauth_helpers import (
    GOOGLE_TOKEN_AUD,
    bearer_get,
    certificate,
    claims,
    grant,
    make_account,
    make_key,
    make_project,
    ok,
    pem,
    post_token,
    rsa_key,
    sign,
    upload_key,
)

from conftest import Server

PROJECT = "forge-proj-1"
CRM = "https://cloudresourcemanager.googleapis.com/"
API = f"/v3/projects/{PROJECT}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(obj: dict[str, Any]) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


def _unsigned(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return f"{_segment(header)}.{_segment(payload)}"


def _public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _self_signed(email: str, **over: Any) -> dict[str, Any]:
    """What GAPIC clients send as a bearer: iss = sub = the account, aud = a Google API."""
    return claims(email, aud=CRM, sub=email, scope=None, **over)


def _tamper(token: str, **changes: Any) -> str:
    head, body, sig = token.rsplit(".", 2)
    prefix = ""
    if head.startswith("kc1."):
        prefix, head = "kc1.", head[4:]
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload.update(changes)
    return f"{prefix}{head}.{_segment(payload)}.{sig}"


# ------------------------------------------------------------------------------------- fixtures
class _Attacker:
    """A loopback web server holding the attacker's keys; a verifier that followed jku/x5u would call it."""

    def __init__(self) -> None:
        self.key = rsa_key()
        self.kid = secrets.token_hex(20)
        now = dt.datetime.now(dt.UTC)
        self.cert = certificate(self.key, now - dt.timedelta(days=1), now + dt.timedelta(days=1))
        self.jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        self.hits: list[str] = []
        attacker = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                attacker.hits.append(self.path)
                body = (json.dumps({"keys": [{**attacker.jwk, "kid": attacker.kid}]}) if self.path == "/jwks"
                        else attacker.cert).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@dataclass
class World:
    server: Server
    admin: httpx.Client
    key_file: dict[str, Any]           # a key of the victim account, which holds roles/viewer on PROJECT
    other_email: str                   # another account of the project
    attacker: _Attacker

    @property
    def email(self) -> str:
        return str(self.key_file["client_email"])

    def fresh_account(self, name: str) -> dict[str, Any]:
        """A new account with roles/viewer on PROJECT and one key: a victim a case may disable or delete."""
        acct = make_account(self.admin, PROJECT, name)
        grant(self.admin, PROJECT, f"serviceAccount:{acct['email']}")
        return make_key(self.admin, acct["email"])

    def key_path(self, key_file: dict[str, Any]) -> str:
        return f"/v1/projects/-/serviceAccounts/{key_file['client_email']}/keys/{key_file['private_key_id']}"


@pytest.fixture(scope="module")
def world(server: Server) -> Iterator[World]:
    attacker = _Attacker()
    with server.client() as admin:
        make_project(admin, server, PROJECT)
        acct = make_account(admin, PROJECT, "forge-victim")
        grant(admin, PROJECT, f"serviceAccount:{acct['email']}")
        other = make_account(admin, PROJECT, "forge-other")
        yield World(server, admin, make_key(admin, acct["email"]), other["email"], attacker)
    attacker.httpd.shutdown()
    assert attacker.hits == [], f"the server fetched attacker URLs: {attacker.hits}"


def _works(world: World, *, assertion: str | None = None, bearer: str | None = None) -> None:
    """The credential is good before the case kills it."""
    if assertion is not None:
        assert post_token(world.server, assertion).status_code == 200
    if bearer is not None:
        assert bearer_get(world.server, bearer, API).status_code == 200


# ----------------------------------------------------------------------------------------- cases
# Each case returns the forged credential for its target: "token" (an assertion for /token) or "api" (a bearer).
Case = Callable[[World, str], str]


def _both(make: Callable[[World, dict[str, Any]], str]) -> Case:
    """A case whose forgery is one claim set: the assertion's at /token, the self-signed JWT's at the API."""
    def case(w: World, target: str) -> str:
        base = claims(w.email) if target == "token" else _self_signed(w.email)
        return make(w, base)
    return case


def alg_none(w: World, base: dict[str, Any]) -> str:
    return _unsigned({"alg": "none", "typ": "JWT", "kid": w.key_file["private_key_id"]}, base) + "."


def hs256_with_public_key(w: World, base: dict[str, Any]) -> str:
    private = serialization.load_pem_private_key(w.key_file["private_key"].encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    secret = _public_pem(private)          # exactly the PEM keycard stores and publishes
    signing_input = _unsigned({"alg": "HS256", "typ": "JWT", "kid": w.key_file["private_key_id"]}, base)
    return signing_input + "." + _b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


def unknown_kid(w: World, base: dict[str, Any]) -> str:
    return sign(pem(w.attacker.key), secrets.token_hex(20), base)


def real_key_unknown_kid(w: World, base: dict[str, Any]) -> str:
    return sign(w.key_file["private_key"], secrets.token_hex(20), base)


def attacker_key_victim_kid(w: World, base: dict[str, Any]) -> str:
    return sign(pem(w.attacker.key), w.key_file["private_key_id"], base)


def _with_key(key_file: dict[str, Any], base: dict[str, Any]) -> str:
    return sign(key_file["private_key"], key_file["private_key_id"], base)


def disabled_key(w: World, target: str) -> str:
    kf = make_key(w.admin, w.email)
    token = _with_key(kf, claims(w.email) if target == "token" else _self_signed(w.email))
    _works(w, **{"assertion" if target == "token" else "bearer": token})
    ok(w.admin.post(w.key_path(kf) + ":disable", json={}))
    return token


def deleted_key(w: World, target: str) -> str:
    kf = make_key(w.admin, w.email)
    token = _with_key(kf, claims(w.email) if target == "token" else _self_signed(w.email))
    _works(w, **{"assertion" if target == "token" else "bearer": token})
    ok(w.admin.delete(w.key_path(kf)))
    return token


def _uploaded(w: World, target: str, after: dt.timedelta, before: dt.timedelta) -> str:
    key = rsa_key()
    now = dt.datetime.now(dt.UTC)
    kid = upload_key(w.admin, w.email, key, now + after, now + before)
    return sign(pem(key), kid, claims(w.email) if target == "token" else _self_signed(w.email))


def key_not_yet_valid(w: World, target: str) -> str:
    return _uploaded(w, target, dt.timedelta(days=1), dt.timedelta(days=30))


def key_expired(w: World, target: str) -> str:
    return _uploaded(w, target, dt.timedelta(days=-30), dt.timedelta(days=-1))


def expired(w: World, base: dict[str, Any]) -> str:
    t = time.time()
    return _with_key(w.key_file, {**base, "iat": int(t - 7200), "exp": int(t - 3600)})


def not_yet_valid_iat(w: World, base: dict[str, Any]) -> str:
    t = time.time()
    return _with_key(w.key_file, {**base, "iat": int(t + 1800), "exp": int(t + 3600)})


def not_yet_valid_nbf(w: World, base: dict[str, Any]) -> str:
    return _with_key(w.key_file, {**base, "nbf": int(time.time() + 1800)})


def far_future_exp(w: World, base: dict[str, Any]) -> str:
    return _with_key(w.key_file, {**base, "exp": base["iat"] + 7200})


def far_future_years(w: World, base: dict[str, Any]) -> str:
    return _with_key(w.key_file, {**base, "exp": base["iat"] + 10 * 365 * 86400})


def wrong_audience(w: World, base: dict[str, Any]) -> str:
    aud = "https://evil.example.com/token" if base["aud"] == GOOGLE_TOKEN_AUD else "https://evil.example.com/"
    return _with_key(w.key_file, {**base, "aud": aud})


def lookalike_audience(w: World, base: dict[str, Any]) -> str:
    aud = ("https://oauth2.googleapis.com.evil.example.com/token" if base["aud"] == GOOGLE_TOKEN_AUD
           else "https://cloudresourcemanager.googleapis.com.evil.example.com/")
    return _with_key(w.key_file, {**base, "aud": aud})


def wrong_issuer(w: World, base: dict[str, Any]) -> str:
    forged = {**base, "iss": w.other_email}
    if "sub" in forged:
        forged["sub"] = w.other_email
    return _with_key(w.key_file, forged)


def tampered_payload(w: World, base: dict[str, Any]) -> str:
    good = _with_key(w.key_file, base)
    _works(w, **{"assertion" if base["aud"] == GOOGLE_TOKEN_AUD else "bearer": good})
    return _tamper(good, exp=base["exp"] - 60)


def tampered_issuer(w: World, base: dict[str, Any]) -> str:
    good = _with_key(w.key_file, base)
    changes = {"iss": w.other_email, **({"sub": w.other_email} if "sub" in base else {})}
    return _tamper(good, **changes)


def _dead_account(w: World, target: str, name: str, kill: Callable[[str], None]) -> str:
    kf = w.fresh_account(name)
    email = kf["client_email"]
    token = _with_key(kf, claims(email) if target == "token" else _self_signed(email))
    _works(w, **{"assertion" if target == "token" else "bearer": token})
    kill(email)
    return token


def deleted_account(w: World, target: str) -> str:
    return _dead_account(w, target, f"forge-del-{target}",
                         lambda e: ok(w.admin.delete(f"/v1/projects/-/serviceAccounts/{e}")))


def disabled_account(w: World, target: str) -> str:
    return _dead_account(w, target, f"forge-dis-{target}",
                         lambda e: ok(w.admin.post(f"/v1/projects/-/serviceAccounts/{e}:disable", json={})))


def _access_token_then(w: World, name: str, kill: Callable[[dict[str, Any]], None]) -> str:
    kf = w.fresh_account(name)
    token = str(ok(post_token(w.server, _with_key(kf, claims(kf["client_email"]))))["access_token"])
    _works(w, bearer=token)
    kill(kf)
    return token


def access_token_after_key_deletion(w: World, target: str) -> str:
    return _access_token_then(w, "forge-replay-key", lambda kf: ok(w.admin.delete(w.key_path(kf))))


def access_token_after_key_disabled(w: World, target: str) -> str:
    return _access_token_then(w, "forge-replay-dis", lambda kf: ok(w.admin.post(w.key_path(kf) + ":disable",
                                                                                json={})))


def access_token_of_deleted_account(w: World, target: str) -> str:
    return _access_token_then(w, "forge-at-deleted", lambda kf: ok(w.admin.delete(
        f"/v1/projects/-/serviceAccounts/{kf['client_email']}")))


def access_token_of_disabled_account(w: World, target: str) -> str:
    return _access_token_then(w, "forge-at-disabled", lambda kf: ok(w.admin.post(
        f"/v1/projects/-/serviceAccounts/{kf['client_email']}:disable", json={})))


def jku_injection(w: World, base: dict[str, Any]) -> str:
    return sign(pem(w.attacker.key), w.key_file["private_key_id"], base, jku=w.attacker.url + "/jwks")


def jku_injection_attacker_kid(w: World, base: dict[str, Any]) -> str:
    return sign(pem(w.attacker.key), w.attacker.kid, base, jku=w.attacker.url + "/jwks")


def jwk_injection(w: World, base: dict[str, Any]) -> str:
    return sign(pem(w.attacker.key), w.key_file["private_key_id"], base, jwk=w.attacker.jwk)


def x5u_injection(w: World, base: dict[str, Any]) -> str:
    return sign(pem(w.attacker.key), w.key_file["private_key_id"], base, x5u=w.attacker.url + "/cert")


def x5c_injection(w: World, base: dict[str, Any]) -> str:
    der = "".join(w.attacker.cert.strip().splitlines()[1:-1])
    return sign(pem(w.attacker.key), w.key_file["private_key_id"], base, x5c=[der])


def jku_on_real_key(w: World, base: dict[str, Any]) -> str:
    """Signed by the real key, but carrying a jku: refused at the token endpoint, whatever it points at."""
    return sign(w.key_file["private_key"], w.key_file["private_key_id"], base, jku=w.attacker.url + "/jwks")


def _server_kid(w: World) -> str:
    return str(ok(httpx.get(w.server.url + "/.well-known/jwks.json"))["keys"][0]["kid"])


def _kc1_claims(w: World, principal: str) -> dict[str, Any]:
    t = int(time.time())
    return {"iss": "keycard", "aud": "keycard", "sub": principal, "iat": t, "exp": t + 3600, "jti": "x"}


def kc1_unknown_ec_key(w: World, target: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return "kc1." + jwt.encode(_kc1_claims(w, "user:alice@example.com"), key, algorithm="ES256",
                               headers={"kid": _server_kid(w)})


def kc1_unknown_ec_key_and_kid(w: World, target: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return "kc1." + jwt.encode(_kc1_claims(w, "user:alice@example.com"), key, algorithm="ES256",
                               headers={"kid": secrets.token_hex(10)})


def kc1_tampered_sub(w: World, target: str) -> str:
    good = str(ok(post_token(w.server, _with_key(w.key_file, claims(w.email))))["access_token"])
    _works(w, bearer=good)
    # alice is the organization's owner: the forged token would read PROJECT if it were accepted
    return _tamper(good, sub="user:alice@example.com")


def kc1_tampered_exp(w: World, target: str) -> str:
    good = str(ok(post_token(w.server, _with_key(w.key_file, claims(w.email))))["access_token"])
    return _tamper(good, exp=int(time.time()) + 86400 * 365)


def kc1_alg_none(w: World, target: str) -> str:
    return "kc1." + _unsigned({"alg": "none", "kid": _server_kid(w)}, _kc1_claims(w, "user:alice@example.com")) + "."


def kc1_hs256_with_server_public_key(w: World, target: str) -> str:
    jwk = ok(httpx.get(w.server.url + "/.well-known/jwks.json"))["keys"][0]
    public = jwt.algorithms.ECAlgorithm.from_jwk(json.dumps(jwk))
    assert isinstance(public, ec.EllipticCurvePublicKey)
    secret = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = _unsigned({"alg": "HS256", "kid": jwk["kid"]}, _kc1_claims(w, "user:alice@example.com"))
    return "kc1." + signing_input + "." + _b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


def id_token_as_access_token(w: World, target: str) -> str:
    """An ID token (signed by the server for another audience) is not an access token."""
    assertion = _with_key(w.key_file, claims(w.email, scope=None, target_audience="keycard"))
    return "kc1." + str(ok(post_token(w.server, assertion))["id_token"])


BOTH: dict[str, Callable[[World, dict[str, Any]], str]] = {
    "alg-none": alg_none, "hs256-with-public-key": hs256_with_public_key, "unknown-kid": unknown_kid,
    "real-key-unknown-kid": real_key_unknown_kid, "attacker-key-victim-kid": attacker_key_victim_kid,
    "expired": expired, "not-yet-valid-iat": not_yet_valid_iat, "not-yet-valid-nbf": not_yet_valid_nbf,
    "far-future-exp": far_future_exp, "far-future-years": far_future_years, "wrong-audience": wrong_audience,
    "lookalike-audience": lookalike_audience, "wrong-issuer": wrong_issuer, "tampered-payload": tampered_payload,
    "tampered-issuer": tampered_issuer, "jku-injection": jku_injection,
    "jku-injection-attacker-kid": jku_injection_attacker_kid, "jwk-injection": jwk_injection,
    "x5u-injection": x5u_injection, "x5c-injection": x5c_injection,
}
STATEFUL: dict[str, Case] = {
    "disabled-key": disabled_key, "deleted-key": deleted_key, "key-not-yet-valid": key_not_yet_valid,
    "key-expired": key_expired, "deleted-account": deleted_account, "disabled-account": disabled_account,
}
TOKEN_ONLY: dict[str, Case] = {"jku-on-real-key": _both(jku_on_real_key)}
API_ONLY: dict[str, Case] = {
    "access-token-after-key-deletion": access_token_after_key_deletion,
    "access-token-after-key-disabled": access_token_after_key_disabled,
    "access-token-of-deleted-account": access_token_of_deleted_account,
    "access-token-of-disabled-account": access_token_of_disabled_account,
    "kc1-unknown-ec-key": kc1_unknown_ec_key, "kc1-unknown-ec-key-and-kid": kc1_unknown_ec_key_and_kid,
    "kc1-tampered-sub": kc1_tampered_sub, "kc1-tampered-exp": kc1_tampered_exp, "kc1-alg-none": kc1_alg_none,
    "kc1-hs256-with-server-public-key": kc1_hs256_with_server_public_key,
    "id-token-as-access-token": id_token_as_access_token,
}
CASES: dict[str, Case] = {**{k: _both(v) for k, v in BOTH.items()}, **STATEFUL}
MATRIX = ([pytest.param(name, target, id=f"{name}@{target}") for name in CASES for target in ("token", "api")]
          + [pytest.param(name, "token", id=f"{name}@token") for name in TOKEN_ONLY]
          + [pytest.param(name, "api", id=f"{name}@api") for name in API_ONLY])
ALL: dict[str, Case] = {**CASES, **TOKEN_ONLY, **API_ONLY}


@pytest.mark.parametrize(("case", "target"), MATRIX)
def test_forgery_is_refused(world: World, case: str, target: str) -> None:
    forged = ALL[case](world, target)
    if target == "token":
        r = post_token(world.server, forged)
        assert r.status_code == 400, (r.status_code, r.text)
        assert r.json()["error"] == "invalid_grant", r.text
    else:
        r = bearer_get(world.server, forged, API)
        assert r.status_code == 401, (r.status_code, r.text)
        assert r.json()["error"]["status"] == "UNAUTHENTICATED"
        assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("target", ["token", "api"])
def test_the_unforged_credential_works(world: World, target: str) -> None:
    """The control: the same claims, signed by the real key with nothing changed, are accepted."""
    if target == "token":
        r = post_token(world.server, _with_key(world.key_file, claims(world.email)))
        assert r.status_code == 200
        r = bearer_get(world.server, r.json()["access_token"], API)
    else:
        r = bearer_get(world.server, _with_key(world.key_file, _self_signed(world.email)), API)
    assert r.status_code == 200, r.text
