"""Human users sign in with their company's OIDC identity provider (issue 4, item 4).

A test IdP is an RSA key and its JWKS generated here: one provider has the JWKS inline, another
fetches it from a tiny loopback HTTP server (counting fetches, for the unknown-kid cool-down). A
user presents the IdP's ID token as ``Authorization: Bearer`` on keycard's APIs and is
``user:EMAIL``: 200 where that user (or, through the mapped groups, one of their groups) has a
grant, 403 otherwise; every forged or unacceptable token is a 401.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from conftest import KEYCARD, Server

ISSUER = "https://login.corp.test"
CLIENT = "keycard-corp"
PROJECT = "oidc-proj-1"
GRANTED = "dana@example.com"         # has roles/browser on the project
STRANGER = "erin@example.com"        # has nothing
TEAM = "ml-team@example.com"         # group with roles/browser on the project
BASE = "/v1/organizations/{org}/keycardIdentityProviders"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class IdP:
    """An OIDC identity provider of the test: RSA keys, a JWKS, ID tokens."""

    def __init__(self, issuer: str = ISSUER, kid: str = "corp-1") -> None:
        self.issuer = issuer
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = kid

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{**json.loads(RSAAlgorithm.to_jwk(self.key.public_key())), "kid": self.kid, "use": "sig",
                          "alg": "RS256"}]}

    def claims(self, email: str = GRANTED, **over: Any) -> dict[str, Any]:
        now = int(time.time())
        c = {"iss": self.issuer, "aud": CLIENT, "sub": f"id-{email}", "email": email, "email_verified": True,
             "iat": now, "exp": now + 600, "amr": ["pwd", "mfa"]}
        c.update(over)
        return {k: v for k, v in c.items() if v is not None}

    def token(self, email: str = GRANTED, *, kid: str | None = None, key: Any = None, headers: Any = None,
              **over: Any) -> str:
        return jwt.encode(self.claims(email, **over), key or self.key, algorithm="RS256",
                          headers={"kid": kid or self.kid, **(headers or {})})


@pytest.fixture(scope="module")
def org(server: Server) -> str:
    return server.organization.split("/")[1]


@pytest.fixture(scope="module")
def idp(server: Server, org: str) -> IdP:
    """The main provider (inline JWKS, MFA required) and a project where dana and ml-team may look."""
    p = IdP()
    c = server.client()
    r = c.post(BASE.format(org=org), params={"identityProviderId": "corp-sso"}, json={
        "displayName": "Corp SSO", "oidc": {"issuerUri": ISSUER, "clientId": CLIENT, "jwksJson": json.dumps(p.jwks())},
        "attributeCondition": '"mfa" in assertion.amr'})
    assert r.status_code == 200, r.text
    r = c.post("/v3/projects", json={"projectId": PROJECT, "parent": server.organization})
    assert r.status_code == 200, r.text
    policy = c.post(f"/v3/projects/{PROJECT}:getIamPolicy", json={}).json()
    policy["bindings"] = [*policy.get("bindings", []), {"role": "roles/browser",
                                                         "members": [f"user:{GRANTED}", f"group:{TEAM}"]}]
    r = c.post(f"/v3/projects/{PROJECT}:setIamPolicy", json={"policy": policy})
    assert r.status_code == 200, r.text
    return p


def _get(server: Server, token: str) -> httpx.Response:
    return httpx.get(f"{server.url}/v3/projects/{PROJECT}", headers={"Authorization": f"Bearer {token}"},
                     timeout=30)


def _rejected(server: Server, token: str, why: str = "") -> None:
    r = _get(server, token)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["status"] == "UNAUTHENTICATED"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert why in r.json()["error"]["message"], r.text


# --------------------------------------------------------------------------------- users and grants

def test_user_with_a_grant_gets_200(server: Server, idp: IdP) -> None:
    r = _get(server, idp.token(GRANTED))
    assert r.status_code == 200, r.text
    assert r.json()["projectId"] == PROJECT


def test_user_without_a_grant_gets_403_naming_the_permission(server: Server, idp: IdP) -> None:
    r = _get(server, idp.token(STRANGER))
    assert r.status_code == 403, r.text
    assert "resourcemanager.projects.get" in r.json()["error"]["message"]


def test_the_principal_is_the_lower_cased_email(server: Server, idp: IdP) -> None:
    assert _get(server, idp.token("Dana@EXAMPLE.com")).status_code == 200


def test_group_grant_applies_through_mapped_groups(server: Server, idp: IdP) -> None:
    assert _get(server, idp.token(STRANGER, groups=[TEAM])).status_code == 200
    assert _get(server, idp.token(STRANGER, groups=["other-team@example.com"])).status_code == 403
    assert _get(server, idp.token(STRANGER, groups=["ML-Team@Example.com"])).status_code == 200
    # the groups came with that token: the same user with another credential is not in them
    assert _get(server, server.token(STRANGER)).status_code == 403
    assert _get(server, idp.token(STRANGER)).status_code == 403


def test_two_id_tokens_of_one_user_with_different_groups_used_concurrently(server: Server, idp: IdP) -> None:
    """The groups travel with each request: one user's two live ID tokens, one carrying the granted group
    and one not, used at the same moment, each get exactly what their own groups give."""
    with_team, without = idp.token(STRANGER, groups=[TEAM]), idp.token(STRANGER, groups=["other@example.com"])

    def run(token: str) -> list[int]:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
            return [c.get(f"/v3/projects/{PROJECT}").status_code for _ in range(25)]

    with ThreadPoolExecutor(4) as pool:
        runs = [pool.submit(run, t) for t in (with_team, without, with_team, without)]
        got = [f.result() for f in runs]
    assert got[0] == got[2] == [200] * 25
    assert got[1] == got[3] == [403] * 25


def test_groups_of_other_domains_are_not_mapped(server: Server, idp: IdP) -> None:
    # the group is granted, but an IdP cannot speak for groups outside its allowed domains
    assert _get(server, idp.token(STRANGER, groups=["ml-team@evil.test"])).status_code == 403


# --------------------------------------------------------------------------------- rejected tokens

def test_rejects_alg_none(server: Server, idp: IdP) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": idp.kid}).encode())
    payload = _b64(json.dumps(idp.claims(GRANTED)).encode())
    _rejected(server, f"{header}.{payload}.", "alg 'none'")


def test_rejects_hs256_signed_with_the_public_key(server: Server, idp: IdP) -> None:
    pem = idp.key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": idp.kid}).encode())
    payload = _b64(json.dumps(idp.claims(GRANTED)).encode())
    for secret in (pem, json.dumps(idp.jwks()["keys"][0]).encode()):
        sig = _b64(hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        _rejected(server, f"{header}.{payload}.{sig}", "alg 'HS256'")


def test_rejects_wrong_issuer(server: Server, idp: IdP) -> None:
    for iss in (ISSUER + "/", "https://login.corp.test.evil", "https://LOGIN.corp.test"):
        _rejected(server, idp.token(GRANTED, iss=iss))


def test_rejects_wrong_audience(server: Server, idp: IdP) -> None:
    _rejected(server, idp.token(GRANTED, aud="some-other-app"), "audience")
    _rejected(server, idp.token(GRANTED, aud=None), "aud")


def test_rejects_several_audiences_without_azp(server: Server, idp: IdP) -> None:
    _rejected(server, idp.token(GRANTED, aud=[CLIENT, "other"]), "azp")
    _rejected(server, idp.token(GRANTED, aud=[CLIENT, "other"], azp="other"), "azp")
    assert _get(server, idp.token(GRANTED, aud=[CLIENT, "other"], azp=CLIENT)).status_code == 200


def test_rejects_expired(server: Server, idp: IdP) -> None:
    now = int(time.time())
    _rejected(server, idp.token(GRANTED, iat=now - 7200, exp=now - 3600), "expired")
    _rejected(server, idp.token(GRANTED, exp=None), "exp")


def test_rejects_nbf_in_the_future(server: Server, idp: IdP) -> None:
    _rejected(server, idp.token(GRANTED, nbf=int(time.time()) + 3600), "nbf")


def test_rejects_iat_in_the_future_and_overlong_lifetimes(server: Server, idp: IdP) -> None:
    now = int(time.time())
    _rejected(server, idp.token(GRANTED, iat=now + 3600, exp=now + 7200), "future")
    _rejected(server, idp.token(GRANTED, iat=now, exp=now + 30 * 86400), "lives")


def test_rejects_unknown_kid(server: Server, idp: IdP) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _rejected(server, idp.token(GRANTED, kid="corp-2", key=other), "not in the JWKS")


def test_rejects_a_known_kid_signed_by_another_key_with_jwk_jku_x5u_headers(server: Server, idp: IdP) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(other.public_key()))
    for extra in ({"jwk": jwk}, {"jku": "http://127.0.0.1:9/jwks"}, {"x5u": "http://127.0.0.1:9/cert"}):
        _rejected(server, idp.token(GRANTED, key=other, headers=extra), "does not verify")


def test_rejects_email_of_another_domain(server: Server, idp: IdP) -> None:
    _rejected(server, idp.token("mallory@evil.test"), "domain")
    _rejected(server, idp.token("mallory@sub.example.com"), "domain")


def test_rejects_unverified_email(server: Server, idp: IdP) -> None:
    _rejected(server, idp.token(GRANTED, email_verified=False), "email_verified")
    _rejected(server, idp.token(GRANTED, email_verified=None), "email_verified")


def test_rejects_failing_attribute_condition(server: Server, idp: IdP) -> None:
    _rejected(server, idp.token(GRANTED, amr=["pwd"]), "attributeCondition")
    _rejected(server, idp.token(GRANTED, amr=None), "attributeCondition")


def test_rejects_tampered_payload(server: Server, idp: IdP) -> None:
    header, _payload, sig = idp.token(STRANGER).split(".")
    forged = _b64(json.dumps(idp.claims(GRANTED)).encode())
    _rejected(server, f"{header}.{forged}.{sig}", "does not verify")


def test_rejects_tokens_of_a_deleted_provider(server: Server, org: str) -> None:
    p = IdP("https://temp.corp.test", kid="temp-1")
    c = server.client()
    url = BASE.format(org=org)
    r = c.post(url, params={"identityProviderId": "temp-sso"}, json={
        "oidc": {"issuerUri": p.issuer, "clientIds": [CLIENT], "jwksJson": p.jwks()}})
    assert r.status_code == 200, r.text
    tok = p.token(GRANTED)
    assert _get(server, tok).status_code == 200        # verified and cached
    assert c.delete(f"{url}/temp-sso").status_code == 200
    _rejected(server, tok, "deleted")
    _rejected(server, p.token(GRANTED))


def test_disabling_or_narrowing_a_provider_applies_to_cached_tokens(server: Server, org: str) -> None:
    p = IdP("https://narrow.corp.test", kid="n-1")
    c = server.client()
    url = BASE.format(org=org)
    assert c.post(url, params={"identityProviderId": "narrow-sso"}, json={
        "oidc": {"issuerUri": p.issuer, "clientIds": [CLIENT], "jwksJson": p.jwks()}}).status_code == 200
    tok = p.token(GRANTED)
    assert _get(server, tok).status_code == 200
    r = c.patch(f"{url}/narrow-sso", params={"updateMask": "allowedDomains"}, json={"allowedDomains": ["corp.test"]})
    assert r.status_code == 200, r.text
    _rejected(server, tok, "domain")
    r = c.patch(f"{url}/narrow-sso", params={"updateMask": "allowedDomains,disabled"}, json={"disabled": True})
    assert r.status_code == 200 and r.json()["allowedDomains"] == ["example.com"], r.text
    _rejected(server, tok, "disabled")
    assert c.delete(f"{url}/narrow-sso").status_code == 200


# --------------------------------------------------------------------------- jwks_uri and the cool-down

class _JwksServer:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def remote(server: Server, org: str, idp: IdP) -> Iterator[tuple[IdP, _JwksServer]]:
    p = IdP("https://remote.corp.test", kid="remote-1")
    jwks = _JwksServer(p.jwks())
    r = server.client().post(BASE.format(org=org), params={"identityProviderId": "remote-sso"}, json={
        "oidc": {"issuerUri": p.issuer, "clientIds": [CLIENT], "jwksUri": jwks.url}})
    assert r.status_code == 200, r.text
    yield p, jwks
    jwks.close()


def test_jwks_uri_is_fetched_and_unknown_kid_floods_are_cooled_down(server: Server,
                                                                    remote: tuple[IdP, _JwksServer]) -> None:
    p, jwks = remote
    assert jwks.fetches == 0                                   # fetched on first use, not before
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    flood = [p.token(GRANTED, kid=f"made-up-{uuid.uuid4().hex}", key=other) for _ in range(50)]
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda t: _get(server, t).status_code, flood))
    assert codes == [401] * 50
    assert 1 <= jwks.fetches <= 2, jwks.fetches      # the first fetched; the rest waited out the cool-down
    assert _get(server, p.token(GRANTED)).status_code == 200   # the real key came with that fetch
    assert _get(server, p.token(STRANGER)).status_code == 403
    assert jwks.fetches <= 2, jwks.fetches


# ------------------------------------------------------------------------------------- the REST API

def test_crud_and_listing(server: Server, org: str, idp: IdP) -> None:
    c = server.client()
    url = BASE.format(org=org)
    got = c.get(f"{url}/corp-sso").json()
    assert got["name"] == f"organizations/{org}/identityProviders/corp-sso"
    assert got["oidc"]["clientIds"] == [CLIENT] and got["allowedDomains"] == ["example.com"]
    assert got["attributeMapping"] == {"google.subject": "assertion.email", "google.groups": "assertion.groups"}
    assert got["requireEmailVerified"] is True and got["state"] == "ACTIVE" and got["etag"]
    listed = c.get(url).json()["identityProviders"]
    assert f"organizations/{org}/identityProviders/corp-sso" in [p["name"] for p in listed]
    r = c.post(url, params={"identityProviderId": "corp-sso"}, json={
        "oidc": {"issuerUri": ISSUER, "clientIds": [CLIENT], "jwksJson": idp.jwks()}})
    assert r.status_code == 409, r.text
    r = c.patch(f"{url}/corp-sso", params={"updateMask": "displayName"},
                json={"displayName": "Corp", "etag": "a2MAAAAAAAAAAQ=="})
    assert r.status_code == 409 and r.json()["error"]["status"] == "ABORTED", r.text
    r = c.patch(f"{url}/corp-sso", params={"updateMask": "displayName"}, json={"displayName": "Corp"})
    assert r.status_code == 200 and r.json()["displayName"] == "Corp", r.text
    assert c.get(f"{url}/nope-sso").status_code == 404
    assert c.delete(f"{url}/nope-sso").status_code == 404


@pytest.mark.parametrize(("body", "field"), [
    ({"oidc": {"issuerUri": "http://login.corp.test", "clientIds": [CLIENT], "jwksUri": "https://x.test/j"}},
     "oidc.issuerUri"),
    ({"oidc": {"issuerUri": ISSUER, "clientIds": []}}, "oidc.clientIds"),
    ({"oidc": {"issuerUri": ISSUER, "clientIds": [CLIENT]}}, "oidc.jwksJson"),
    ({"oidc": {"issuerUri": ISSUER, "clientIds": [CLIENT], "jwksJson": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}},
     "oidc.jwksJson"),
    ({"oidc": {"issuerUri": ISSUER, "clientIds": [CLIENT], "jwksUri": "https://x.test/j"},
      "attributeCondition": "assertion.amr +"}, "attributeCondition"),
    ({"oidc": {"issuerUri": ISSUER, "clientIds": [CLIENT], "jwksUri": "https://x.test/j"},
      "attributeMapping": {"google.subject": "assertion.email", "attribute.x": "1"}}, "attributeMapping.attribute.x"),
    ({"oidc": {"issuerUri": ISSUER, "clientIds": [CLIENT], "jwksUri": "https://x.test/j"},
      "allowedDomains": ["not a domain"]}, "allowedDomains"),
    ({"oidc": {"issuerUri": ISSUER, "clientIds": [CLIENT], "jwksUri": "https://x.test/j"}, "bogus": 1}, "bogus"),
])
def test_invalid_configuration_is_400_naming_the_field(server: Server, org: str, body: dict[str, Any],
                                                       field: str) -> None:
    r = server.client().post(BASE.format(org=org), params={"identityProviderId": "bad-sso"}, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert field in json.dumps(r.json()["error"]), r.text


def test_private_key_material_is_refused_and_never_stored(server: Server, org: str, idp: IdP) -> None:
    private = json.loads(RSAAlgorithm.to_jwk(idp.key))
    r = server.client().post(BASE.format(org=org), params={"identityProviderId": "leak-sso"}, json={
        "oidc": {"issuerUri": "https://leak.corp.test", "clientIds": [CLIENT], "jwksJson": {"keys": [private]}}})
    assert r.status_code == 400 and "private" in r.text, r.text
    assert server.client().get(BASE.format(org=org) + "/leak-sso").status_code == 404


def test_managing_providers_needs_the_workforce_pool_permissions(server: Server, org: str) -> None:
    c = server.client(STRANGER)
    url = BASE.format(org=org)
    r = c.post(url, params={"identityProviderId": "evil-sso"}, json={
        "oidc": {"issuerUri": "https://evil.test", "clientIds": [CLIENT], "jwksUri": "https://evil.test/j"},
        "allowedDomains": ["example.com"]})
    assert r.status_code == 403 and "iam.googleapis.com/workforcePools.create" in r.text, r.text
    assert c.get(url).status_code == 403
    assert c.get(f"{url}/corp-sso").status_code == 403
    assert c.delete(f"{url}/corp-sso").status_code == 403


# ------------------------------------------------------------------------------------------- the CLI

def test_cli_add_list_remove(server: Server, tmp_path: Any) -> None:
    p = IdP("https://cli.corp.test", kid="cli-1")
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(p.jwks()))
    run = [*KEYCARD, "idp"]
    db = ["--database", server.database]
    add = subprocess.run([*run, "add", "cli-sso", "--issuer", p.issuer, "--client-id", CLIENT, "--jwks-file",
                          str(jwks_file), *db, "--format", "json"], capture_output=True, text=True)
    assert add.returncode == 0, add.stderr
    assert json.loads(add.stdout)["oidc"]["issuerUri"] == p.issuer
    listed = subprocess.run([*run, "list", *db, "--format", "json"], capture_output=True, text=True)
    assert "cli-sso" in listed.stdout, listed.stderr
    tok = p.token(GRANTED)
    deadline = time.monotonic() + 10                           # the server follows the store's change feed
    while _get(server, tok).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _get(server, tok).status_code == 200
    bad = subprocess.run([*run, "add", "cli-bad", "--issuer", "ftp://x", "--client-id", CLIENT, "--jwks-file",
                          str(jwks_file), *db], capture_output=True, text=True)
    assert bad.returncode == 2 and "issuerUri" in bad.stderr, bad.stderr
    rm = subprocess.run([*run, "remove", "cli-sso", *db], capture_output=True, text=True)
    assert rm.returncode == 0, rm.stderr
    deadline = time.monotonic() + 10
    while _get(server, tok).status_code != 401 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _get(server, tok).status_code == 401
