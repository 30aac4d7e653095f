"""keycard proxy (issue 7): a tiny upstream app on loopback behind a real `keycard proxy` process.

The proxy runs as its own service account (key file, roles/iap.settingsAdmin on the IAP resource) and
asks the live keycard server for every decision. Callers are a service account through google-auth,
a user with a keycard token, and a keycard-minted ID token for the proxy's audience.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.auth.transport.requests import AuthorizedSession, Request
from google.oauth2 import service_account
from proxy_helpers import ACCESSOR, Proc, headers_of, ok, set_bindings, start_proxy, start_upstream, write_key
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from conftest import KEYCARD, Server

PROJECT = "iap-proj-1"
RESOURCE = f"projects/{PROJECT}/iap_web/compute/services/model-api"
FULL = f"//iap.googleapis.com/{RESOURCE}"
PERMISSION = "iap.webServiceVersions.accessViaIAP"
CLOUD = "https://www.googleapis.com/auth/cloud-platform"
USER = "bob@example.com"


@dataclass
class Setup:
    server: Server
    admin: httpx.Client
    proxy: Proc
    upstream: Proc
    proxy_member: str
    caller_email: str
    caller_key: dict[str, Any]
    caller_uid: str

    def base(self) -> list[dict[str, Any]]:
        """The proxy's own binding, kept in every policy the tests write."""
        return [{"role": "roles/iap.settingsAdmin", "members": [self.proxy_member]}]

    def grant(self, member: str, condition: dict[str, str] | None = None) -> None:
        b: dict[str, Any] = {"role": ACCESSOR, "members": [member]}
        if condition:
            b["condition"] = condition
        set_bindings(self.admin, RESOURCE, [*self.base(), b])

    def revoke_all(self) -> None:
        set_bindings(self.admin, RESOURCE, self.base())

    def seen(self) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = httpx.get(self.upstream.url + "/__seen", timeout=10).json()
        return seen


def _key(admin: httpx.Client, project: str, account: str) -> tuple[str, dict[str, Any], str]:
    sa = ok(admin.post(f"/v1/projects/{project}/serviceAccounts", json={"accountId": account}))
    out = ok(admin.post(f"/v1/projects/-/serviceAccounts/{sa['email']}/keys", json={}))
    return sa["email"], json.loads(base64.b64decode(out["privateKeyData"])), sa["uniqueId"]


@pytest.fixture(scope="module")
def env(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("proxy")
    admin = server.client()
    ok(admin.post("/v3/projects", json={"projectId": PROJECT, "parent": server.organization}))
    proxy_email, proxy_key, _ = _key(admin, PROJECT, "iap-proxy")
    caller_email, caller_key, caller_uid = _key(admin, PROJECT, "model-caller")
    upstream = start_upstream(tmp, server.url, FULL)
    setup_proxy: Proc | None = None
    try:
        member = f"serviceAccount:{proxy_email}"
        set_bindings(admin, RESOURCE, [{"role": "roles/iap.settingsAdmin", "members": [member]}])
        setup_proxy = start_proxy(tmp, upstream=upstream.url, resource=RESOURCE, endpoint=server.url,
                                  key_file=write_key(tmp, "proxy", proxy_key))
        yield Setup(server, admin, setup_proxy, upstream, member, caller_email, caller_key, caller_uid)
    finally:
        if setup_proxy is not None:
            setup_proxy.stop()
        upstream.stop()
        admin.close()


def _sa_session(env: Setup) -> AuthorizedSession:
    creds = service_account.Credentials.from_service_account_info(env.caller_key, scopes=[CLOUD])
    return AuthorizedSession(creds)


def _until(predicate: Any, timeout: float = 5.0) -> float:
    """Seconds until ``predicate()`` holds (polled), or fail."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"not true within {timeout} s")


# ------------------------------------------------------------------------------------------- tests

def test_healthz_answers_without_credentials(env: Setup) -> None:
    r = httpx.get(env.proxy.url + "/.keycard/healthz", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_api_caller_without_credentials_gets_401_with_www_authenticate(env: Setup) -> None:
    r = httpx.get(env.proxy.url + "/predict", timeout=10)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"]["status"] == "UNAUTHENTICATED"
    r = httpx.get(env.proxy.url + "/predict", headers={"Authorization": "Bearer kc1.forged.token.x"}, timeout=10)
    assert r.status_code == 401, r.text
    # a keycard token with a tampered signature is refused by the proxy against keycard's JWKS
    token = env.server.token(USER)
    head, claims, sig = token.split(".")[1:]
    tampered = f"kc1.{head}.{claims}.{sig[:-6]}{'AAAAAA' if not sig.endswith('AAAAAA') else 'BBBBBB'}"
    r = httpx.get(env.proxy.url + "/predict", headers={"Authorization": f"Bearer {tampered}"}, timeout=10)
    assert r.status_code == 401 and "keycard's keys" in r.json()["error"]["message"], r.text
    assert not [s for s in env.seen() if s["path"] == "/predict"]


def test_service_account_passes_once_granted_and_not_before(env: Setup) -> None:
    env.revoke_all()
    session = _sa_session(env)
    r = session.get(env.proxy.url + "/sa-only", timeout=30)
    assert r.status_code == 403, r.text
    message = r.json()["error"]["message"]
    assert PERMISSION in message and RESOURCE in message, message
    assert not [s for s in env.seen() if s["path"] == "/sa-only"], "a denied request reached the upstream"

    env.grant(f"serviceAccount:{env.caller_email}")
    _until(lambda: session.get(env.proxy.url + "/sa-only", timeout=30).status_code == 200)
    echo = session.get(env.proxy.url + "/sa-only?x=1", timeout=30).json()
    h = headers_of(echo)
    assert h["x-goog-authenticated-user-email"] == [f"accounts.keycard:{env.caller_email}"]
    assert h["x-goog-authenticated-user-id"] == [f"accounts.keycard:{env.caller_uid}"]
    assert "authorization" not in h, "the caller's keycard credential leaked to the upstream"
    # the upstream verified the assertion against keycard's JWKS with PyJWT
    assert echo["assertion"]["verified"], echo["assertion"]
    claims = echo["assertion"]["claims"]
    assert claims["aud"] == FULL and claims["iss"] == env.server.url
    assert claims["email"] == env.caller_email and claims["sub"] == f"accounts.keycard:{env.caller_uid}"
    assert claims["exp"] - claims["iat"] <= 600
    assert echo["query"] == "x=1"


def test_self_signed_jwt_of_the_service_account_passes(env: Setup) -> None:
    env.grant(f"serviceAccount:{env.caller_email}")
    creds = service_account.Credentials.from_service_account_info(env.caller_key, scopes=[CLOUD])
    creds = creds.with_always_use_jwt_access(True)
    session = AuthorizedSession(creds)
    _until(lambda: session.get(env.proxy.url + "/jwt", timeout=30).status_code == 200)


def test_spoofed_identity_headers_never_reach_the_upstream(env: Setup) -> None:
    env.grant(f"serviceAccount:{env.caller_email}")
    session = _sa_session(env)
    spoof = {"X-Goog-Authenticated-User-Email": "accounts.keycard:alice@example.com",
             "X-Goog-Authenticated-User-Id": "accounts.keycard:1",
             "X-Goog-IAP-JWT-Assertion": "eyJhbGciOiJub25lIn0.eyJlbWFpbCI6ImFsaWNlQGV4YW1wbGUuY29tIn0."}
    _until(lambda: session.get(env.proxy.url + "/spoof", headers=spoof, timeout=30).status_code == 200)
    h = headers_of(session.get(env.proxy.url + "/spoof", headers=spoof, timeout=30).json())
    assert h["x-goog-authenticated-user-email"] == [f"accounts.keycard:{env.caller_email}"]
    assert h["x-goog-authenticated-user-id"] == [f"accounts.keycard:{env.caller_uid}"]
    assert spoof["X-Goog-IAP-JWT-Assertion"] not in h["x-goog-iap-jwt-assertion"]
    # without a credential the spoofed headers get nowhere at all
    r = httpx.get(env.proxy.url + "/spoof-anon", headers=spoof, timeout=10)
    assert r.status_code == 401
    for s in env.seen():
        for k, v in s["headers"]:
            assert "alice@example.com" not in v, (s["path"], k, v)


def test_proxy_authorization_leaves_the_apps_own_authorization_alone(env: Setup) -> None:
    env.grant(f"user:{USER}")
    headers = {"Proxy-Authorization": f"Bearer {env.server.token(USER)}", "Authorization": "Basic YXBwOnNlY3JldA=="}
    _until(lambda: httpx.get(env.proxy.url + "/own-auth", headers=headers, timeout=10).status_code == 200)
    h = headers_of(httpx.get(env.proxy.url + "/own-auth", headers=headers, timeout=10).json())
    assert h["authorization"] == ["Basic YXBwOnNlY3JldA=="] and "proxy-authorization" not in h
    assert h["x-goog-authenticated-user-email"] == [f"accounts.keycard:{USER}"]


def test_path_condition_admits_predict_and_refuses_admin(env: Setup) -> None:
    user_token = env.server.token(USER)
    auth = {"Authorization": f"Bearer {user_token}"}
    env.grant(f"user:{USER}", {"title": "predict only", "expression": 'request.path.startsWith("/predict")'})
    _until(lambda: httpx.get(env.proxy.url + "/predict", headers=auth, timeout=10).status_code == 200)
    echo = httpx.get(env.proxy.url + "/predict/v1", headers=auth, timeout=10).json()
    assert headers_of(echo)["x-goog-authenticated-user-email"] == [f"accounts.keycard:{USER}"]
    r = httpx.get(env.proxy.url + "/admin", headers=auth, timeout=10)
    assert r.status_code == 403, r.text
    assert PERMISSION in r.json()["error"]["message"]
    assert not [s for s in env.seen() if s["path"] == "/admin"]
    # dot segments cannot smuggle /admin past a condition on the path (raw or percent-encoded)
    with httpx.Client(timeout=10) as c:
        for sneaky in ("/predict/../admin", "/predict/%2e%2e/admin", "/predict/..%2fadmin", "/predict\\..\\admin"):
            req = c.build_request("GET", env.proxy.url + "/x", headers=auth)
            req.url = req.url.copy_with(raw_path=sneaky.encode())
            r = c.send(req)
            assert r.status_code in (400, 403), (sneaky, r.status_code, r.text)
    assert not [s for s in env.seen() if "admin" in s["path"]]
    # a host condition sees request.host
    env.grant(f"user:{USER}", {"title": "other host", "expression": 'request.host == "models.example.com"'})
    _until(lambda: httpx.get(env.proxy.url + "/predict", headers=auth, timeout=10).status_code == 403)
    r = httpx.get(env.proxy.url + "/predict", headers={**auth, "Host": "models.example.com"}, timeout=10)
    assert r.status_code == 200, r.text


def test_revoking_the_grant_stops_the_next_requests_within_one_second(env: Setup) -> None:
    auth = {"Authorization": f"Bearer {env.server.token(USER)}"}
    env.grant(f"user:{USER}")
    _until(lambda: httpx.get(env.proxy.url + "/revoke", headers=auth, timeout=10).status_code == 200)
    with httpx.Client(timeout=10) as c:
        for _ in range(20):                     # the decision is warm in the proxy's cache
            assert c.get(env.proxy.url + "/revoke", headers=auth).status_code == 200
        env.revoke_all()                        # returns once keycard has committed it
        revoked_at = time.monotonic()
        while c.get(env.proxy.url + "/revoke", headers=auth).status_code == 200:
            assert time.monotonic() - revoked_at < 1.0, "still allowed 1 s after the grant was revoked"
        assert time.monotonic() - revoked_at < 1.0


def test_keycard_id_token_for_the_proxy_audience_passes(env: Setup) -> None:
    env.grant(f"serviceAccount:{env.caller_email}")
    policy = ok(env.admin.post(f"/v3/projects/{PROJECT}:getIamPolicy", json={}))
    policy.setdefault("bindings", []).append({"role": "roles/iam.serviceAccountOpenIdTokenCreator",
                                             "members": ["user:alice@example.com"]})
    ok(env.admin.post(f"/v3/projects/{PROJECT}:setIamPolicy", json={"policy": policy}))
    mint = f"/v1/projects/-/serviceAccounts/{env.caller_email}:generateIdToken"
    good = ok(env.admin.post(mint, json={"audience": env.proxy.url, "includeEmail": True}))["token"]
    wrong = ok(env.admin.post(mint, json={"audience": "https://elsewhere.example.com"}))["token"]
    _until(lambda: httpx.get(env.proxy.url + "/idt", headers={"Authorization": f"Bearer {good}"},
                             timeout=10).status_code == 200)
    r = httpx.get(env.proxy.url + "/idt", headers={"Authorization": f"Bearer {wrong}"}, timeout=10)
    assert r.status_code == 401 and "audience" in r.json()["error"]["message"], r.text


def test_bodies_stream_both_ways(env: Setup) -> None:
    auth = {"Authorization": f"Bearer {env.server.token(USER)}"}
    env.grant(f"user:{USER}")
    _until(lambda: httpx.get(env.proxy.url + "/upload", headers=auth, timeout=10).status_code == 200)
    payload = bytes(range(256)) * (3 * 4096 + 7)           # ~3 MiB

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(payload), 100_000):
            yield payload[i:i + 100_000]
    r = httpx.post(env.proxy.url + "/upload", headers=auth, content=chunks(), timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["bodyLength"] == len(payload)
    assert r.json()["bodySha256"] == hashlib.sha256(payload).hexdigest()
    with httpx.stream("GET", env.proxy.url + "/stream/40", headers=auth, timeout=60) as resp:
        assert resp.status_code == 200
        got = sum(len(c) for c in resp.iter_bytes())
    assert got == 40 * 65536


def test_websocket_passes_through_with_identity(env: Setup) -> None:
    token = env.server.token(USER)
    env.grant(f"user:{USER}")
    ws_url = "ws" + env.proxy.url[4:] + "/ws"
    _until(lambda: httpx.get(env.proxy.url + "/ws-warm", headers={"Authorization": f"Bearer {token}"},
                             timeout=10).status_code == 200)

    async def talk() -> list[str]:
        async with connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            first = str(await ws.recv())
            await ws.send("hello")
            second = str(await ws.recv())
            await ws.send(b"\x00\x01")
            third = await ws.recv()
            assert third == b"\x00\x01"
            return [first, second]

    first, second = asyncio.run(talk())
    assert first == f"user=accounts.keycard:{USER}" and second == "echo:hello"

    async def refused() -> None:
        async with connect(ws_url):
            pass
    with pytest.raises(InvalidStatus):
        asyncio.run(refused())


def test_every_allowed_and_denied_request_is_in_the_data_access_log(env: Setup) -> None:
    auth = {"Authorization": f"Bearer {env.server.token(USER)}"}
    env.grant(f"user:{USER}", {"title": "predict only", "expression": 'request.path.startsWith("/predict")'})
    _until(lambda: httpx.get(env.proxy.url + "/predict/audit", headers=auth, timeout=10).status_code == 200)
    with httpx.Client(timeout=10) as c:
        for _ in range(5):
            assert c.get(env.proxy.url + "/predict/audit", headers=auth).status_code == 200
            assert c.get(env.proxy.url + "/admin/audit", headers=auth).status_code == 403
    time.sleep(2.5)                           # the proxy flushes cached decisions' records every second
    out = subprocess.run([*KEYCARD, "logs", "read", 'protoPayload.methodName="AuthorizeUser"', "--limit", "1000",
                          "--format", "json", "--database", env.server.database],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    entries = json.loads(out.stdout)
    mine = [e for e in entries if e["protoPayload"].get("authenticationInfo", {}).get("principalEmail") == USER
            and e["protoPayload"]["requestMetadata"]["requestAttributes"]["path"] in ("/predict/audit",
                                                                                      "/admin/audit")]
    allowed = [e for e in mine if e["protoPayload"]["authorizationInfo"][0]["granted"]]
    denied = [e for e in mine if not e["protoPayload"]["authorizationInfo"][0]["granted"]]
    assert len(allowed) >= 6 and len(denied) >= 5, (len(allowed), len(denied))
    assert all("data_access" in e["logName"] for e in mine)
    assert all(e["protoPayload"]["authorizationInfo"][0]["permission"] == PERMISSION for e in mine)
    assert all(e["protoPayload"]["resourceName"] == RESOURCE for e in mine)


def test_each_request_is_recorded_once_while_its_decision_is_renewed(env: Setup) -> None:
    """Steady traffic over several decision lifetimes: the decision is renewed in the background (the
    renewals are not audit entries) and every request, from the cache or not, is on record exactly once."""
    auth = {"Authorization": f"Bearer {env.server.token(USER)}"}
    env.grant(f"user:{USER}")
    _until(lambda: httpx.get(env.proxy.url + "/warm", headers=auth, timeout=10).status_code == 200)
    sent = 0
    with httpx.Client(timeout=10) as c:
        end = time.monotonic() + 2.0             # four lifetimes of the default 0.5 s decision TTL
        while time.monotonic() < end:
            assert c.get(env.proxy.url + "/steady", headers=auth).status_code == 200
            sent += 1
            time.sleep(0.01)
    time.sleep(2.5)                           # the proxy flushes cached decisions' records every second
    out = subprocess.run([*KEYCARD, "logs", "read", 'protoPayload.methodName="AuthorizeUser"', "--limit", "5000",
                          "--format", "json", "--database", env.server.database],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    steady = [e for e in json.loads(out.stdout)
              if e["protoPayload"]["requestMetadata"]["requestAttributes"]["path"] == "/steady"]
    assert len(steady) == sent, (len(steady), sent)
    assert all(e["protoPayload"]["authenticationInfo"]["principalEmail"] == USER for e in steady)
    hits = [e for e in steady if e.get("labels", {}).get("keycard.dev/decision-cache") == "hit"]
    assert len(hits) == sent - 1              # keycard decided the first; the cache answered the rest


def test_a_proxy_whose_identity_lacks_the_permission_fails_closed(env: Setup, tmp_path: Path) -> None:
    _email, key, _ = _key(env.admin, PROJECT, "rogue-proxy")
    rogue = start_proxy(tmp_path, upstream=env.upstream.url, resource=RESOURCE, endpoint=env.server.url,
                        key_file=write_key(tmp_path, "rogue", key))
    try:
        env.grant(f"user:{USER}")
        r = httpx.get(rogue.url + "/rogue", headers={"Authorization": f"Bearer {env.server.token(USER)}"},
                      timeout=10)
        assert r.status_code == 503, r.text
        assert not [s for s in env.seen() if s["path"] == "/rogue"]
    finally:
        rogue.stop()


def test_disabling_the_service_account_stops_it_within_one_second(env: Setup) -> None:
    env.grant(f"serviceAccount:{env.caller_email}")
    creds = service_account.Credentials.from_service_account_info(env.caller_key, scopes=[CLOUD])
    creds.refresh(Request())                  # the account's access token from keycard's token endpoint
    auth = {"Authorization": f"Bearer {creds.token}"}
    c = httpx.Client(timeout=10)
    _until(lambda: c.get(env.proxy.url + "/disable", headers=auth).status_code == 200)
    name = f"/v1/projects/-/serviceAccounts/{env.caller_email}"
    ok(env.admin.post(f"{name}:disable", json={}))
    try:
        disabled_at = time.monotonic()
        while c.get(env.proxy.url + "/disable", headers=auth).status_code == 200:
            assert time.monotonic() - disabled_at < 1.0, "a disabled account still passes 1 s later"
        r = c.get(env.proxy.url + "/disable", headers=auth)
        assert r.status_code == 401 and "disabled" in r.json()["error"]["message"], r.text
    finally:
        ok(env.admin.post(f"{name}:enable", json={}))
        c.close()
