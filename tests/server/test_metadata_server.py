"""`keycard metadata-server` against the live server: unmodified google-auth gets tokens of the attached
account through GCE_METADATA_HOST/GCE_METADATA_IP; attaching needs actAs; a deleted attachment stops the
server and every token it handed out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from conftest import ADMIN, KEYCARD, Server, free_port

PROJECT = "mds-proj"
OTHER = "mds-other"
RUNNER = f"mds-runner@{PROJECT}.iam.gserviceaccount.com"
OPERATOR = f"mds-operator@{PROJECT}.iam.gserviceaccount.com"
MISSING = f"mds-nobody@{PROJECT}.iam.gserviceaccount.com"
BOB = "bob@example.com"            # roles/iam.serviceAccountUser on RUNNER
CAROL = "carol@example.com"        # nothing
DAVE = "dave@example.com"          # roles/iam.serviceAccountAdmin on RUNNER (update, no actAs)
FLAVOR = {"Metadata-Flavor": "Google"}
CLOUD = "https://www.googleapis.com/auth/cloud-platform"


def _ok(r: httpx.Response) -> Any:
    assert r.status_code == 200, r.text
    return r.json()


def _grant(c: httpx.Client, resource: str, role: str, member: str) -> None:
    pol = _ok(c.post(f"{resource}:getIamPolicy", json={}))
    pol.setdefault("bindings", []).append({"role": role, "members": [member]})
    _ok(c.post(f"{resource}:setIamPolicy", json={"policy": pol}))


@dataclass
class World:
    runner_uid: str
    key_file: Path


@pytest.fixture(scope="module")
def world(server: Server, tmp_path_factory: pytest.TempPathFactory) -> World:
    with server.client() as c:
        for p in (PROJECT, OTHER):
            _ok(c.post("/v3/projects", json={"projectId": p, "parent": server.organization}))
        runner = _ok(c.post(f"/v1/projects/{PROJECT}/serviceAccounts", json={"accountId": "mds-runner"}))
        _ok(c.post(f"/v1/projects/{PROJECT}/serviceAccounts", json={"accountId": "mds-operator"}))
        _grant(c, f"/v3/projects/{PROJECT}", "roles/browser", f"serviceAccount:{RUNNER}")
        sa = f"/v1/projects/{PROJECT}/serviceAccounts/{RUNNER}"
        pol = _ok(c.post(f"{sa}:getIamPolicy", json={}))
        pol["bindings"] = [{"role": "roles/iam.serviceAccountUser", "members": [f"user:{BOB}",
                                                                                 f"serviceAccount:{OPERATOR}"]},
                           {"role": "roles/iam.serviceAccountAdmin", "members": [f"user:{DAVE}"]}]
        _ok(c.post(f"{sa}:setIamPolicy", json={"policy": pol}))
        key = _ok(c.post(f"/v1/projects/-/serviceAccounts/{OPERATOR}/keys", json={}))
    import base64
    key_file = tmp_path_factory.mktemp("mds") / "operator.json"
    key_file.write_bytes(base64.b64decode(key["privateKeyData"]))
    return World(runner["uniqueId"], key_file)


@dataclass
class Mds:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, **params: str) -> httpx.Response:
        return httpx.get(self.url + path, params=params, headers=FLAVOR, timeout=30)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.log.read_text()


def start_mds(server: Server, tmp: Path, *, user: str | None = BOB, account: str = RUNNER,
              extra: tuple[str, ...] = (), wait: bool = True) -> Mds:
    port = free_port()
    log = tmp / f"mds-{port}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("KEYCARD_TOKEN", None)
    if user is not None:
        env["KEYCARD_TOKEN"] = server.token(user)
    with log.open("wb") as fh:
        proc = subprocess.Popen([*KEYCARD, "metadata-server", "--service-account", account, "--endpoint", server.url,
                                 "--port", str(port), *extra], stdout=fh, stderr=subprocess.STDOUT, env=env)
    mds = Mds(proc, port, log)
    if not wait:
        return mds
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"metadata server exited: {log.read_text()}")
        try:
            r = httpx.get(mds.url + "/", headers=FLAVOR, timeout=1)
            if r.status_code == 200:
                return mds
        except httpx.HTTPError:
            time.sleep(0.1)
    mds.stop()
    raise AssertionError(f"metadata server did not start: {log.read_text()}")


@pytest.fixture(scope="module")
def mds(server: Server, world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mds]:
    m = start_mds(server, tmp_path_factory.mktemp("mds"))
    yield m
    m.stop()


def _attachments(server: Server, user: str = ADMIN) -> list[dict[str, Any]]:
    with server.client(user) as c:
        return list(_ok(c.get(f"/v1/projects/{PROJECT}/serviceAccounts/{RUNNER}/keycardAttachments"))
                    .get("attachments", []))


def _of(server: Server, m: Mds) -> dict[str, Any]:
    found = [a for a in _attachments(server) if a.get("displayName", "").endswith(f":{m.port}")]
    assert len(found) == 1, found
    return found[0]


# ----------------------------------------------------------------------- google-auth, unmodified

CLIENT = r"""
import json, socket, sys
# Loopback guard: record (and refuse) any connection attempt past loopback.
OUTSIDE = []
_real = socket.getaddrinfo
def _guard(host, *a, **k):
    if host not in ("127.0.0.1", "localhost", "::1"):
        OUTSIDE.append(host)
        raise socket.gaierror("test harness: loopback only")
    return _real(host, *a, **k)
socket.getaddrinfo = _guard

import google.auth
from google.auth import compute_engine
from google.auth.transport.requests import AuthorizedSession, Request
# Harness only (API.md §6 #2): no background Regional Access Boundary lookup at iamcredentials.googleapis.com.
compute_engine.Credentials._is_regional_access_boundary_lookup_required = lambda self: False

kc, allowed, denied, audience = sys.argv[1:5]
out = {}
creds, project = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
out["type"] = f"{type(creds).__module__}.{type(creds).__name__}"
out["project"] = project
session = AuthorizedSession(creds)
out["allowed"] = session.get(kc + allowed).status_code
out["denied"] = session.get(kc + denied).status_code
out["denied_message"] = session.get(kc + denied).json()["error"]["message"]
out["email"] = creds.service_account_email
out["token"] = creds.token
out["universe"] = creds.universe_domain

direct = compute_engine.Credentials()
direct.refresh(Request())
out["direct_token"] = direct.token
out["direct_allowed"] = AuthorizedSession(direct).get(kc + allowed).status_code

idc = compute_engine.IDTokenCredentials(Request(), target_audience=audience, use_metadata_identity_endpoint=True)
idc.refresh(Request())
out["id_token"] = idc.token
out["outside"] = OUTSIDE
print(json.dumps(out))
"""


def _google_auth(server: Server, m: Mds, tmp: Path, audience: str) -> dict[str, Any]:
    script = tmp / "gauth_client.py"
    script.write_text(CLIENT)
    env = {**os.environ, "GCE_METADATA_HOST": f"127.0.0.1:{m.port}", "GCE_METADATA_IP": f"127.0.0.1:{m.port}"}
    for k in ("NO_GCE_CHECK", "GOOGLE_CLOUD_PROJECT", "GOOGLE_APPLICATION_CREDENTIALS"):
        env.pop(k, None)
    r = subprocess.run([sys.executable, str(script), server.url, f"/v3/projects/{PROJECT}", f"/v3/projects/{OTHER}",
                        audience], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def test_google_auth_default_and_compute_engine_credentials(server: Server, world: World, mds: Mds,
                                                            tmp_path: Path) -> None:
    audience = "https://mds-audience.example.com"
    out = _google_auth(server, mds, tmp_path, audience)
    assert out["type"] == "google.auth.compute_engine.credentials.Credentials"
    assert out["project"] == PROJECT, "google.auth.default() reads project-id from the metadata server"
    assert out["email"] == RUNNER
    assert out["token"].startswith("kc1.")
    assert out["universe"] == "googleapis.com"
    assert (out["allowed"], out["denied"]) == (200, 403), out
    assert "resourcemanager.projects.get" in out["denied_message"]
    assert out["direct_allowed"] == 200
    assert out["direct_token"] == out["token"], "the metadata server caches a token per scope set"
    assert out["outside"] == [], "nothing left loopback"
    # the ID token verifies against the server's JWKS and names the account
    jwks = jwt.PyJWKSet.from_dict(httpx.get(server.url + "/.well-known/jwks.json").json())
    kid = jwt.get_unverified_header(out["id_token"])["kid"]
    claims = jwt.decode(out["id_token"], next(k for k in jwks.keys if k.key_id == kid).key, algorithms=["ES256"],
                        audience=audience, issuer=server.url)
    assert claims["sub"] == world.runner_uid and claims["azp"] == world.runner_uid
    assert claims["email"] == RUNNER and claims["email_verified"] is True
    assert claims["exp"] - claims["iat"] == 3600


def test_tokens_carry_the_attachment_and_are_scoped(server: Server, world: World, mds: Mds) -> None:
    r = mds.get(f"/computeMetadata/v1/instance/service-accounts/{RUNNER}/token",
                scopes="https://www.googleapis.com/auth/iam,https://www.googleapis.com/auth/userinfo.email")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["token_type"] == "Bearer" and 3300 < body["expires_in"] <= 3600
    claims = jwt.decode(body["access_token"][4:], options={"verify_signature": False})
    assert claims["sub"] == f"serviceAccount:{RUNNER}" and claims["uid"] == world.runner_uid
    assert claims["att"] == _of(server, mds)["name"].rsplit("/", 1)[1]
    assert claims["scope"].split() == sorted(["https://www.googleapis.com/auth/iam",
                                              "https://www.googleapis.com/auth/userinfo.email"])
    default = mds.get("/computeMetadata/v1/instance/service-accounts/default/token").json()["access_token"]
    assert default != body["access_token"], "another scope set, another token"


# ------------------------------------------------------------------------------------ the paths

def test_requests_without_metadata_flavor_or_with_x_forwarded_for_are_refused(mds: Mds) -> None:
    for path in ("/", "/computeMetadata/v1/project/project-id",
                 "/computeMetadata/v1/instance/service-accounts/default/token"):
        r = httpx.get(mds.url + path)
        assert r.status_code == 403, path
        assert "Metadata-Flavor" in r.text and "access_token" not in r.text
        assert httpx.get(mds.url + path, headers={"Metadata-Flavor": "google"}).status_code == 403
        r = httpx.get(mds.url + path, headers={**FLAVOR, "X-Forwarded-For": "10.1.2.3"})
        assert r.status_code == 403 and "access_token" not in r.text
    ping = httpx.get(mds.url + "/", headers=FLAVOR)
    assert ping.status_code == 200 and ping.headers["metadata-flavor"] == "Google"


def test_metadata_paths(server: Server, mds: Mds) -> None:
    with server.client() as c:
        number = _ok(c.get(f"/v3/projects/{PROJECT}"))["name"].split("/")[1]
    r = mds.get("/computeMetadata/v1/project/project-id")
    assert (r.status_code, r.text) == (200, PROJECT) and r.headers["metadata-flavor"] == "Google"
    assert mds.get("/computeMetadata/v1/project/numeric-project-id").text == number
    info = {"aliases": ["default"], "email": RUNNER, "scopes": [CLOUD]}
    for who in ("default", RUNNER):
        r = mds.get(f"/computeMetadata/v1/instance/service-accounts/{who}/", recursive="true")
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), r.text
        assert r.headers["metadata-flavor"] == "Google"
        assert r.json() == info
        assert mds.get(f"/computeMetadata/v1/instance/service-accounts/{who}/email").text == RUNNER
        assert mds.get(f"/computeMetadata/v1/instance/service-accounts/{who}/scopes").text == CLOUD + "\n"
    assert mds.get("/computeMetadata/v1/instance/service-accounts/", recursive="true").json() == {
        "default": info, RUNNER: info}
    assert mds.get("/computeMetadata/v1/universe/universe-domain").text == "googleapis.com"
    assert mds.get(f"/computeMetadata/v1/instance/service-accounts/{MISSING}/token").status_code == 404
    assert mds.get("/computeMetadata/v1/instance/no-such-thing").status_code == 404
    r = mds.get("/computeMetadata/v1/instance/service-accounts/default/identity")
    assert r.status_code == 400 and "audience" in r.text
    r = mds.get("/computeMetadata/v1/instance/service-accounts/default/identity", audience="x", format="weird")
    assert r.status_code == 400
    r = mds.get("/computeMetadata/v1/instance/service-accounts/default/identity", audience="https://a.example")
    claims = jwt.decode(r.text, options={"verify_signature": False})
    assert claims["aud"] == "https://a.example" and "email" not in claims, "format=standard carries no email"
    assert httpx.post(mds.url + "/computeMetadata/v1/project/project-id", headers=FLAVOR).status_code == 405


# ------------------------------------------------------------------------------------ actAs

def test_starting_without_act_as_fails_with_the_grant_command(server: Server, world: World, tmp_path: Path) -> None:
    before = len(_attachments(server))
    m = start_mds(server, tmp_path, user=CAROL, wait=False)
    assert m.process.wait(timeout=60) != 0
    out = m.log.read_text()
    assert "iam.serviceAccounts.actAs" in out and RUNNER in out and f"user:{CAROL}" in out, out
    assert (f"keycard iam service-accounts add-iam-policy-binding {RUNNER} --project={PROJECT} "
            f"--member=user:{CAROL} --role=roles/iam.serviceAccountUser") in out.replace("\n", ""), out
    assert len(_attachments(server)) == before, "nothing attached"


def test_starting_without_credentials_fails(server: Server, world: World, tmp_path: Path) -> None:
    m = start_mds(server, tmp_path, user=None, wait=False)
    assert m.process.wait(timeout=60) == 2
    assert "KEYCARD_TOKEN" in m.log.read_text()


def test_stranger_gets_the_same_403_whether_or_not_the_account_exists(server: Server, world: World) -> None:
    with server.client("mallory@example.com") as c:
        answers = []
        for account in (RUNNER, MISSING):
            r = c.post(f"/v1/projects/{PROJECT}/serviceAccounts/{account}/keycardAttachments", json={})
            assert r.status_code == 403, r.text
            answers.append(r.text.replace(account, "ACCOUNT"))
            assert c.get(f"/v1/projects/{PROJECT}/serviceAccounts/{account}/keycardAttachments").status_code == 403
            assert c.delete(f"/v1/projects/{PROJECT}/serviceAccounts/{account}/keycardAttachments/"
                            "0123456789abcdef0123").status_code == 403
        assert answers[0] == answers[1]
        assert "roles/iam.serviceAccountUser" in answers[0]
    with server.client() as c:        # the owner may actAs anything in the project: a missing account is a 404
        r = c.post(f"/v1/projects/{PROJECT}/serviceAccounts/{MISSING}/keycardAttachments", json={})
        assert r.status_code == 404, r.text


# -------------------------------------------------------------------------- the attachment API

def test_attachment_api_secret_shown_once_and_never_stored(server: Server, world: World) -> None:
    base = f"/v1/projects/{PROJECT}/serviceAccounts/{RUNNER}/keycardAttachments"
    with server.client(BOB) as c:
        created = _ok(c.post(base, json={"displayName": "api test"}))
        r = c.post(base, json={"displayName": 7})
        assert r.status_code == 400 and r.json()["error"]["details"][0]["metadata"]["field"] == "displayName"
        listed = _ok(c.get(base))["attachments"]
    secret, name = created["secret"], created["name"]
    att = name.rsplit("/", 1)[1]
    assert created["serviceAccount"] == RUNNER and created["creator"] == BOB and len(secret) >= 43
    mine = [a for a in listed if a["name"] == name]
    assert mine and "secret" not in mine[0] and secret not in json.dumps(listed)
    with httpx.Client(base_url=server.url) as anon:
        own = f"/v1/keycardAttachments/{att}"
        for bad in ({"secret": secret[:-2] + "xx"}, {}, {"secret": 5}):
            r = anon.post(own + ":generateAccessToken", json=bad)
            assert r.status_code == 401, r.text
        r = anon.post("/v1/keycardAttachments/00000000000000000000:generateAccessToken", json={"secret": secret})
        assert r.status_code == 401
        assert anon.post(own + ":generateAccessToken", json={"secret": secret, "scope": "x y"}).status_code == 200
        assert anon.post(own + ":generateAccessToken", json={"secret": secret, "scope": [1]}).status_code == 400
        tok = _ok(anon.post(own + ":generateAccessToken", json={"secret": secret}))
        assert tok["expireTime"].endswith("Z") and tok["accessToken"].startswith("kc1.")
        headers = {"Authorization": f"Bearer {tok['accessToken']}"}
        assert anon.get(f"/v3/projects/{PROJECT}", headers=headers).status_code == 200
        assert anon.get(f"/v3/projects/{OTHER}", headers=headers).status_code == 403
        assert anon.post(own + ":generateIdToken", json={"secret": secret}).status_code == 400
        idt = _ok(anon.post(own + ":generateIdToken", json={"secret": secret, "audience": "a", "format": "full"}))
        assert jwt.decode(idt["token"], options={"verify_signature": False})["email"] == RUNNER
        assert _ok(anon.post(own + ":check", json={"secret": secret}))["state"] == "ACTIVE"
        assert anon.post(own + ":detach", json={"secret": "wrong"}).status_code == 401
        _ok(anon.post(own + ":detach", json={"secret": secret}))
        assert anon.post(own + ":generateAccessToken", json={"secret": secret}).status_code == 401
        r = anon.get(f"/v3/projects/{PROJECT}", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["details"][0]["reason"] == "ATTACHMENT_DELETED"
    # only the secret's hash is kept: not in the database, not in the audit log
    db = Path(server.database.removeprefix("sqlite:///"))
    for f in db.parent.glob(db.name + "*"):
        assert secret.encode() not in f.read_bytes(), f
    logs = subprocess.run([*KEYCARD, "logs", "read", "--limit", "200", "--format", "json", "--database",
                           server.database], capture_output=True, text=True, check=True).stdout
    assert "CreateServiceAccountAttachment" in logs and "DetachServiceAccountAttachment" in logs
    assert secret not in logs


def test_account_admin_may_revoke_but_not_attach(server: Server, world: World) -> None:
    base = f"/v1/projects/{PROJECT}/serviceAccounts/{RUNNER}/keycardAttachments"
    with server.client(BOB) as c:
        att = _ok(c.post(base, json={}))["name"].rsplit("/", 1)[1]
    with server.client(DAVE) as c:
        r = c.post(base, json={})
        assert r.status_code == 403 and "iam.serviceAccounts.actAs" in r.text
        assert c.delete(f"{base}/{att}").status_code == 200
        assert c.delete(f"{base}/{att}").status_code == 404
    with server.client(CAROL) as c:
        assert c.delete(f"{base}/{att}").status_code == 403


# ------------------------------------------------------------------------ revocation, shutdown

def test_deleting_the_attachment_stops_the_server_and_its_tokens(server: Server, world: World,
                                                                  tmp_path: Path) -> None:
    m = start_mds(server, tmp_path)
    try:
        path = "/computeMetadata/v1/instance/service-accounts/default/token"
        token = m.get(path).json()["access_token"]
        id_token_path = "/computeMetadata/v1/instance/service-accounts/default/identity"
        assert m.get(id_token_path, audience="https://x.example").status_code == 200
        api = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{server.url}/v3/projects/{PROJECT}", headers=api).status_code == 200
        assert m.get(path).json()["access_token"] == token, "served from the cache while the attachment lives"
        att = _of(server, m)
        with server.client(BOB) as c:
            _ok(c.delete(f"/v1/{att['name']}"))
        r = m.get(path)
        assert r.status_code == 403 and "access_token" not in r.text and "deleted" in r.text, r.text
        assert m.get(id_token_path, audience="https://x.example").status_code == 403
        r = httpx.get(f"{server.url}/v3/projects/{PROJECT}", headers=api)
        assert r.status_code == 401 and r.json()["error"]["details"][0]["reason"] == "ATTACHMENT_DELETED"
    finally:
        out = m.stop()
    assert "could not delete attachment" in out     # it was gone already


def test_clean_shutdown_deletes_the_attachment(server: Server, world: World, tmp_path: Path) -> None:
    m = start_mds(server, tmp_path, user=None, extra=("--credentials", str(world.key_file), "--project", OTHER))
    try:
        att = _of(server, m)
        assert att["creator"] == OPERATOR, "attached with the operator's key file"
        assert m.get("/computeMetadata/v1/project/project-id").text == OTHER
        # the operator may not read OTHER: no number to tell
        assert m.get("/computeMetadata/v1/project/numeric-project-id").status_code == 404
        token = m.get("/computeMetadata/v1/instance/service-accounts/default/token").json()["access_token"]
    finally:
        out = m.stop()
    assert m.process.returncode == 0, out
    assert "Detached" in out, out
    assert all(a["name"] != att["name"] for a in _attachments(server))
    r = httpx.get(f"{server.url}/v3/projects/{PROJECT}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
