"""keycard proxy's browser sign-in (issue 7), driven in headless Chromium with Playwright.

A small OpenID Connect provider runs here on loopback (discovery, an authorize page with a sign-in
form, a token endpoint that checks PKCE, JWKS) and is the organization's configured provider in
keycard. A person opens the protected app, is sent to sign in, types an email, and lands on the app
with a signed, HttpOnly session cookie that expires with the ID token. Skipped, with the reason, when
Debian's Chromium (/usr/bin/chromium) or the playwright package is missing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from proxy_helpers import ACCESSOR, Proc, ok, self_signed, set_bindings, start_proxy, start_upstream, write_key

from conftest import Server

CHROMIUM = "/usr/bin/chromium"
PROJECT = "iap-web-proj"
RESOURCE = f"projects/{PROJECT}/iap_web/compute/services/dashboard"
FULL = f"//iap.googleapis.com/{RESOURCE}"
CLIENT = "keycard-proxy"
GRANTED = "dana@example.com"
STRANGER = "erin@example.com"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _browser_missing() -> str | None:
    if shutil.which(CHROMIUM) is None:
        return f"Debian's chromium is not installed ({CHROMIUM} missing): apt-get install chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as e:
        return f"the playwright package is not installed ({e}): uv sync --all-groups"
    return None


pytestmark = pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TestIdP:
    """Discovery, /authorize (a form), /token (PKCE S256), /jwks — one RSA key."""

    __test__ = False

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.codes: dict[str, dict[str, str]] = {}
        self.token_requests = 0
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/.well-known/openid-configuration":
                    doc = {"issuer": idp.issuer, "authorization_endpoint": idp.issuer + "/authorize",
                           "token_endpoint": idp.issuer + "/token", "jwks_uri": idp.issuer + "/jwks",
                           "code_challenge_methods_supported": ["S256"]}
                    return self._send(200, json.dumps(doc).encode(), "application/json")
                if url.path == "/jwks":
                    return self._send(200, json.dumps(idp.jwks()).encode(), "application/json")
                if url.path == "/authorize":
                    q = parse_qs(url.query)
                    if q.get("client_id") != [CLIENT] or q.get("code_challenge_method") != ["S256"] \
                            or not q.get("code_challenge") or q.get("response_type") != ["code"]:
                        return self._send(400, b"bad authorization request", "text/plain")
                    page = ("<!doctype html><title>Corp sign-in</title><h1>Sign in to Corp</h1>"
                            "<form method=post action=/authorize>"
                            f"<input type=hidden name=q value='{url.query}'>"
                            "<label>Email <input id=email name=email></label>"
                            "<button id=signin type=submit>Sign in</button></form>")
                    return self._send(200, page.encode(), "text/html")
                self._send(404, b"not found", "text/plain")

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
                form = {k: v[0] for k, v in parse_qs(raw).items()}
                if self.path == "/authorize":
                    q = {k: v[0] for k, v in parse_qs(form["q"]).items()}
                    code = secrets.token_urlsafe(16)
                    idp.codes[code] = {"email": form["email"], "challenge": q["code_challenge"],
                                       "redirect_uri": q["redirect_uri"], "nonce": q.get("nonce", "")}
                    target = q["redirect_uri"] + "?" + urlencode({"code": code, "state": q["state"]})
                    return self._send(302, b"", "text/plain", {"Location": target})
                if self.path == "/token":
                    idp.token_requests += 1
                    grant = idp.codes.pop(form.get("code", ""), None)
                    verifier = form.get("code_verifier", "")
                    if grant is None or form.get("client_id") != CLIENT \
                            or form.get("redirect_uri") != grant["redirect_uri"] \
                            or _b64(hashlib.sha256(verifier.encode()).digest()) != grant["challenge"]:
                        return self._send(400, b'{"error":"invalid_grant"}', "application/json")
                    token = idp.id_token(grant["email"], grant["nonce"])
                    body = {"id_token": token, "access_token": "opaque", "token_type": "Bearer", "expires_in": 600}
                    return self._send(200, json.dumps(body).encode(), "application/json")
                self._send(404, b"not found", "text/plain")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{**json.loads(RSAAlgorithm.to_jwk(self.key.public_key())), "kid": "corp-1", "use": "sig",
                          "alg": "RS256"}]}

    def id_token(self, email: str, nonce: str) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": CLIENT, "sub": f"id-{email}", "email": email, "email_verified": True,
                  "nonce": nonce, "iat": now, "exp": now + 600}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "corp-1"})

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _key(admin: httpx.Client, account: str) -> tuple[str, dict[str, Any]]:
    sa = ok(admin.post(f"/v1/projects/{PROJECT}/serviceAccounts", json={"accountId": account}))
    out = ok(admin.post(f"/v1/projects/-/serviceAccounts/{sa['email']}/keys", json={}))
    return sa["email"], json.loads(base64.b64decode(out["privateKeyData"]))


@pytest.fixture(scope="module")
def site(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, TestIdP, Proc]]:
    tmp = tmp_path_factory.mktemp("proxy-browser")
    idp = TestIdP()
    admin = server.client()
    org = server.organization.split("/")[1]
    ok(admin.post(f"/v1/organizations/{org}/keycardIdentityProviders", params={"identityProviderId": "corp-sso"},
                  json={"displayName": "Corp SSO", "oidc": {"issuerUri": idp.issuer, "clientId": CLIENT,
                                                             "jwksJson": json.dumps(idp.jwks())}}))
    ok(admin.post("/v3/projects", json={"projectId": PROJECT, "parent": server.organization}))
    proxy_email, proxy_key = _key(admin, "web-proxy")
    set_bindings(admin, RESOURCE, [{"role": "roles/iap.settingsAdmin", "members": [f"serviceAccount:{proxy_email}"]},
                                   {"role": ACCESSOR, "members": [f"user:{GRANTED}"]}])
    upstream = start_upstream(tmp, server.url, FULL)
    proxy: Proc | None = None
    tls: Proc | None = None
    try:
        key_file = write_key(tmp, "web-proxy", proxy_key)
        proxy = start_proxy(tmp, upstream=upstream.url, resource=RESOURCE, endpoint=server.url, key_file=key_file)
        tls = start_proxy(tmp, upstream=upstream.url, resource=RESOURCE, endpoint=server.url, key_file=key_file,
                          tls=self_signed(tmp))
        yield proxy, idp, tls
    finally:
        for p in (proxy, tls):
            if p is not None:
                p.stop()
        upstream.stop()
        idp.stop()
        admin.close()


def _sign_in(page: Any, url: str, idp: TestIdP, email: str) -> None:
    page.goto(url)
    page.wait_for_url(idp.issuer + "/authorize*")
    assert page.title() == "Corp sign-in"
    page.fill("#email", email)
    page.click("#signin")


def test_browser_signs_in_through_the_org_idp_and_reaches_the_app(site: tuple[Proc, TestIdP, Proc]) -> None:
    from playwright.sync_api import sync_playwright

    proxy, idp, _ = site
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            context = browser.new_context()
            page = context.new_page()
            _sign_in(page, proxy.url + "/reports?week=12", idp, GRANTED)
            page.wait_for_url(proxy.url + "/reports?week=12")
            echo = json.loads(page.inner_text("body"))
            headers = {k.lower(): v for k, v in echo["headers"]}
            assert headers["x-goog-authenticated-user-email"] == f"accounts.keycard:{GRANTED}"
            assert echo["assertion"]["verified"] and echo["assertion"]["claims"]["email"] == GRANTED
            assert "__keycard_session" not in headers.get("cookie", ""), "the ID token leaked to the upstream"

            cookie = next(c for c in context.cookies() if c["name"] == "__keycard_session")
            assert cookie["httpOnly"] and not cookie["secure"]            # plain http on loopback: not Secure
            assert abs(cookie["expires"] - (time.time() + 600)) < 60, cookie   # expires with the ID token
            assert idp.token_requests == 1

            # the session carries on without another sign-in
            page.goto(proxy.url + "/other")
            assert json.loads(page.inner_text("body"))["path"] == "/other"
            assert idp.token_requests == 1
        finally:
            browser.close()


def test_a_signed_in_person_without_access_sees_403_naming_the_permission(site: tuple[Proc, TestIdP, Proc]) -> None:
    from playwright.sync_api import sync_playwright

    proxy, idp, _ = site
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_context().new_page()
            responses: list[int] = []
            page.on("response", lambda r: responses.append(r.status) if r.url.startswith(proxy.url) else None)
            _sign_in(page, proxy.url + "/secret", idp, STRANGER)
            page.wait_for_url(proxy.url + "/secret")
            assert responses[-1] == 403
            text = page.inner_text("body")
            assert "iap.webServiceVersions.accessViaIAP" in text and RESOURCE in text
        finally:
            browser.close()


def test_a_forged_session_cookie_is_ignored(site: tuple[Proc, TestIdP, Proc]) -> None:
    proxy, idp, _ = site
    forged = _b64(json.dumps({"t": idp.id_token(GRANTED, ""), "exp": int(time.time()) + 600}).encode()) + ".AAAA"
    r = httpx.get(proxy.url + "/x", headers={"Cookie": f"__keycard_session={forged}", "Accept": "text/html"},
                  timeout=10)
    assert r.status_code == 302 and r.headers["location"].startswith(idp.issuer + "/authorize")
    r = httpx.get(proxy.url + "/x", headers={"Cookie": f"__keycard_session={forged}"}, timeout=10)
    assert r.status_code == 401


def test_over_tls_the_session_cookie_is_secure(site: tuple[Proc, TestIdP, Proc]) -> None:
    from playwright.sync_api import sync_playwright

    _, idp, tls = site
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            context = browser.new_context(ignore_https_errors=True)      # the test's self-signed certificate
            page = context.new_page()
            _sign_in(page, tls.url + "/secure", idp, GRANTED)
            page.wait_for_url(tls.url + "/secure")
            echo = json.loads(page.inner_text("body"))
            assert {k.lower(): v for k, v in echo["headers"]}["x-forwarded-proto"] == "https"
            cookie = next(c for c in context.cookies() if c["name"] == "__keycard_session")
            assert cookie["secure"] and cookie["httpOnly"], cookie
        finally:
            browser.close()
