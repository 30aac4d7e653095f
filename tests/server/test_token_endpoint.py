"""The OAuth2 token endpoint, tokeninfo and the public key documents, driven by google-auth unmodified.

google-auth's credentials are refreshed explicitly and their token sent with httpx: ``before_request``
would start google-auth's background Regional Access Boundary lookup, which goes to
iamcredentials.googleapis.com (API.md §6 #2), and these tests talk to loopback only.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import google.auth.exceptions
import google.auth.jwt
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from google.auth.transport.requests import Request
from google.oauth2 import id_token as google_id_token
from google.oauth2 import service_account
from oauth_helpers import (
    CLOUD_PLATFORM,
    JWT_BEARER,
    assertion,
    bearer_get,
    claims,
    grant,
    make_account,
    make_key,
    make_project,
    ok,
    post_token,
    sign,
)

from conftest import KEYCARD, Server

ALLOWED = "tok-allowed-1"
FORBIDDEN = "tok-forbidden-1"
AUDIENCE = "https://my-service.example.com"


@pytest.fixture(scope="module")
def world(server: Server) -> dict[str, Any]:
    with server.client() as c:
        make_project(c, server, ALLOWED)
        make_project(c, server, FORBIDDEN)
        acct = make_account(c, ALLOWED, "tok-runner")
        grant(c, ALLOWED, f"serviceAccount:{acct['email']}")
        key_file = make_key(c, acct["email"])
    return {"account": acct, "key_file": key_file}


def _api(server: Server, token: str, project: str) -> int:
    return bearer_get(server, token, f"/v3/projects/{project}").status_code


# ------------------------------------------------------------------------- google-auth, unmodified
def test_service_account_credentials_refresh_through_the_token_endpoint(server: Server,
                                                                        world: dict[str, Any]) -> None:
    key_file = world["key_file"]
    assert key_file["token_uri"] == server.url + "/token"
    creds = service_account.Credentials.from_service_account_info(key_file, scopes=[CLOUD_PLATFORM])
    creds.refresh(Request())
    assert creds.token.startswith("kc1."), "an access token from the token endpoint, not a self-signed JWT"
    assert creds.expiry is not None
    left = (creds.expiry - dt.datetime.now(dt.UTC).replace(tzinfo=None)).total_seconds()
    assert 3500 < left <= 3600
    assert _api(server, creds.token, ALLOWED) == 200
    r = bearer_get(server, creds.token, f"/v3/projects/{FORBIDDEN}")
    assert r.status_code == 403
    assert "resourcemanager.projects.get" in r.json()["error"]["message"]


def test_token_carries_scope_account_and_key(server: Server, world: dict[str, Any]) -> None:
    key_file = world["key_file"]
    body = ok(post_token(server, assertion(key_file, scope=f"{CLOUD_PLATFORM} openid")))
    assert body["token_type"] == "Bearer" and body["expires_in"] in (3599, 3600)
    payload = jwt.decode(body["access_token"][4:], options={"verify_signature": False})
    assert payload["sub"] == f"serviceAccount:{key_file['client_email']}"
    assert payload["uid"] == key_file["client_id"] and payload["sak"] == key_file["private_key_id"]
    assert payload["scope"] == f"{CLOUD_PLATFORM} openid"
    assert payload["exp"] - payload["iat"] == 3600


def test_v4_path_and_own_token_url_as_audience(server: Server, world: dict[str, Any]) -> None:
    key_file = world["key_file"]
    for path in ("/token", "/oauth2/v4/token"):
        for aud in ("https://oauth2.googleapis.com/token", server.url + "/token", server.url + "/oauth2/v4/token"):
            body = ok(post_token(server, assertion(key_file, aud=aud), path))
            assert _api(server, body["access_token"], ALLOWED) == 200


def test_self_signed_jwt_path(server: Server, world: dict[str, Any]) -> None:
    key_file = world["key_file"]
    creds = service_account.Credentials.from_service_account_info(key_file, scopes=[CLOUD_PLATFORM])
    creds = creds.with_always_use_jwt_access(True)
    creds.refresh(Request())
    assert not creds.token.startswith("kc1.")
    header = jwt.get_unverified_header(creds.token)
    assert header["alg"] == "RS256" and header["kid"] == key_file["private_key_id"]
    assert _api(server, creds.token, ALLOWED) == 200
    assert _api(server, creds.token, FORBIDDEN) == 403

    aud_creds = google.auth.jwt.Credentials.from_service_account_info(
        key_file, audience="https://cloudresourcemanager.googleapis.com/")
    aud_creds.refresh(Request())
    assert _api(server, aud_creds.token.decode() if isinstance(aud_creds.token, bytes) else aud_creds.token,
                ALLOWED) == 200


def test_id_token_credentials(server: Server, world: dict[str, Any]) -> None:
    key_file = world["key_file"]
    creds = service_account.IDTokenCredentials.from_service_account_info(key_file, target_audience=AUDIENCE)
    creds.refresh(Request())
    tok = creds.token
    assert not tok.startswith("kc1.")
    verified = google_id_token.verify_token(tok, Request(), audience=AUDIENCE,
                                            certs_url=server.url + "/.well-known/jwks.json")
    assert verified["iss"] == server.url
    assert verified["sub"] == key_file["client_id"] and verified["azp"] == key_file["client_id"]
    assert verified["email"] == key_file["client_email"] and verified["email_verified"] is True
    assert verified["exp"] - verified["iat"] == 3600
    with pytest.raises(jwt.InvalidAudienceError):
        google_id_token.verify_token(tok, Request(), audience="https://someone-else.example.com",
                                     certs_url=server.url + "/.well-known/jwks.json")
    # an ID token is no access token: the API refuses it
    assert _api(server, tok, ALLOWED) == 401
    # the discovery document names this issuer and the JWKS
    conf = ok(httpx.get(server.url + "/.well-known/openid-configuration"))
    assert conf["issuer"] == verified["iss"] and conf["jwks_uri"] == server.url + "/.well-known/jwks.json"
    assert conf["token_endpoint"] == server.url + "/token"
    assert conf["id_token_signing_alg_values_supported"] == ["ES256"]

    info = ok(httpx.get(server.url + "/oauth2/v2/tokeninfo", params={"id_token": tok}))
    assert info["audience"] == AUDIENCE and info["user_id"] == key_file["client_id"]
    assert info["issued_to"] == key_file["client_id"]
    assert info["email"] == key_file["client_email"] and info["verified_email"] is True
    assert 3500 < info["expires_in"] <= 3600
    v3 = ok(httpx.get(server.url + "/oauth2/v3/tokeninfo", params={"id_token": tok}))
    assert v3["aud"] == AUDIENCE and v3["email_verified"] == "true" and v3["alg"] == "ES256"


def test_unscoped_credentials_get_invalid_scope_without_retries(server: Server, world: dict[str, Any]) -> None:
    creds = service_account.Credentials.from_service_account_info(world["key_file"])
    started = time.monotonic()
    with pytest.raises(google.auth.exceptions.RefreshError, match="invalid_scope"):
        creds.refresh(Request())
    assert time.monotonic() - started < 2, "a 400 is not retried"


# ------------------------------------------------------------------------------------ tokeninfo
def test_tokeninfo_of_an_access_token(server: Server, world: dict[str, Any]) -> None:
    key_file = world["key_file"]
    token = ok(post_token(server, assertion(key_file)))["access_token"]
    for r in (httpx.post(server.url + "/oauth2/v2/tokeninfo", params={"access_token": token}),
              httpx.post(server.url + "/oauth2/v2/tokeninfo", data={"access_token": token}),
              httpx.get(server.url + "/oauth2/v2/tokeninfo", params={"access_token": token})):
        info = ok(r)
        assert info["issued_to"] == info["audience"] == info["user_id"] == key_file["client_id"]
        assert info["scope"] == CLOUD_PLATFORM
        assert info["email"] == key_file["client_email"] and info["verified_email"] is True
        assert 3500 < info["expires_in"] <= 3600
    v3 = ok(httpx.get(server.url + "/oauth2/v3/tokeninfo", params={"access_token": token}))
    assert v3["email"] == key_file["client_email"] and v3["scope"] == CLOUD_PLATFORM and v3["sub"] == \
        key_file["client_id"]
    user = ok(httpx.get(server.url + "/oauth2/v2/tokeninfo", params={"access_token": server.token()}))
    assert user["email"] == "alice@example.com"


@pytest.mark.parametrize("params", [{"access_token": "kc1.garbage"}, {"access_token": "ya29.google-token"},
                                    {"id_token": "a.b.c"}, {"id_token": "not-a-jwt"}])
def test_tokeninfo_of_an_invalid_token(server: Server, params: dict[str, str]) -> None:
    for path in ("/oauth2/v2/tokeninfo", "/oauth2/v3/tokeninfo"):
        r = httpx.get(server.url + path, params=params)
        assert r.status_code == 400 and r.json()["error"] == "invalid_token", r.text


def test_tokeninfo_refuses_an_access_token_posing_as_id_token(server: Server, world: dict[str, Any]) -> None:
    token = ok(post_token(server, assertion(world["key_file"])))["access_token"]
    r = httpx.get(server.url + "/oauth2/v2/tokeninfo", params={"id_token": token[4:]})
    assert r.status_code == 400 and r.json()["error"] == "invalid_token"
    r = httpx.get(server.url + "/oauth2/v2/tokeninfo")
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


# ------------------------------------------------------------------------------- error answers
@pytest.mark.parametrize(("form", "error"), [
    ({}, "invalid_request"),
    ({"grant_type": JWT_BEARER}, "invalid_request"),
    ({"assertion": "x.y.z"}, "invalid_request"),
    ({"grant_type": "client_credentials", "assertion": "x.y.z"}, "unsupported_grant_type"),
    ({"grant_type": "refresh_token", "refresh_token": "r"}, "unsupported_grant_type"),
    ({"grant_type": JWT_BEARER, "assertion": "not-a-jwt"}, "invalid_grant"),
    ({"grant_type": JWT_BEARER, "assertion": "x" * 20000}, "invalid_grant"),
])
def test_token_endpoint_errors_are_oauth2_json_400(server: Server, form: dict[str, str], error: str) -> None:
    r = httpx.post(server.url + "/token", data=form)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == error and r.json()["error_description"]
    assert r.headers["cache-control"] == "no-store"


def test_json_body_and_domain_wide_delegation(server: Server, world: dict[str, Any]) -> None:
    key_file = world["key_file"]
    r = httpx.post(server.url + "/token", json={"grant_type": JWT_BEARER, "assertion": assertion(key_file)})
    assert r.status_code == 200
    r = post_token(server, assertion(key_file, sub="alice@example.com"))
    assert r.status_code == 400 and r.json()["error"] == "unauthorized_client"


# ------------------------------------------------------------------------------ public key documents
def test_service_account_certificates_and_jwks(server: Server, world: dict[str, Any]) -> None:
    key_file = world["key_file"]
    email = key_file["client_email"]
    with server.client() as c:
        extra = make_key(c, email)
        certs = ok(httpx.get(f"{server.url}/service_accounts/v1/metadata/x509/{email}"))
        assert {key_file["private_key_id"], extra["private_key_id"]} <= set(certs)
        assert all(v.startswith("-----BEGIN CERTIFICATE-----") for v in certs.values())
        # Google's verifier for service-account signed JWTs works against it
        token = sign(key_file["private_key"], key_file["private_key_id"],
                     claims(email, aud=AUDIENCE, sub=email, scope=None))
        payload = google.auth.jwt.decode(token, certs=certs, audience=AUDIENCE)
        assert payload["iss"] == email
        jwks = ok(httpx.get(f"{server.url}/service_accounts/v1/jwk/{email.replace('@', '%40')}"))
        by_kid = {k["kid"]: k for k in jwks["keys"]}
        assert by_kid[key_file["private_key_id"]]["kty"] == "RSA"
        public = jwt.PyJWK(by_kid[key_file["private_key_id"]]).key
        assert jwt.decode(token, public, algorithms=["RS256"], audience=AUDIENCE)["sub"] == email
        # a disabled key is no longer published
        ok(c.post(f"/v1/projects/-/serviceAccounts/{email}/keys/{extra['private_key_id']}:disable", json={}))
        certs = ok(httpx.get(f"{server.url}/service_accounts/v1/metadata/x509/{email}"))
        assert extra["private_key_id"] not in certs and key_file["private_key_id"] in certs
        ok(c.delete(f"/v1/projects/-/serviceAccounts/{email}/keys/{extra['private_key_id']}"))
    r = httpx.get(f"{server.url}/service_accounts/v1/metadata/x509/nobody@{ALLOWED}.iam.gserviceaccount.com")
    assert r.status_code == 404
    assert httpx.get(f"{server.url}/service_accounts/v1/jwk/nobody@x.iam.gserviceaccount.com").status_code == 404


# ---------------------------------------------------------------------------------- key last use
def test_key_last_use_is_recorded_once_a_minute(server: Server) -> None:
    with server.client() as c:
        acct = make_account(c, ALLOWED, "tok-last-used")
        key_file = make_key(c, acct["email"])
        key_path = f"/v1/projects/-/serviceAccounts/{acct['email']}/keys/{key_file['private_key_id']}"
        assert "keycardLastUsedTime" not in ok(c.get(key_path))
        before = dt.datetime.now(dt.UTC).replace(microsecond=0)
        first = post_token(server, assertion(key_file))
        assert first.status_code == 200
        used = ok(c.get(key_path))["keycardLastUsedTime"]
        assert before <= dt.datetime.fromisoformat(used.replace("Z", "+00:00")) <= dt.datetime.now(dt.UTC)
        listed = ok(c.get(f"/v1/projects/-/serviceAccounts/{acct['email']}/keys"))["keys"]
        assert [k["keycardLastUsedTime"] for k in listed] == [used]
        # within the minute: no second write (the store revision does not move)
        second = post_token(server, assertion(key_file))
        assert second.status_code == 200
        assert second.headers["x-keycard-revision"] == first.headers["x-keycard-revision"]
        assert ok(c.get(key_path))["keycardLastUsedTime"] == used


def test_self_signed_jwt_bearer_records_key_last_use_once_a_minute(server: Server) -> None:
    """A GAPIC-style self-signed JWT used directly as a bearer is a use of its key, like a grant at /token;
    the write is throttled (one a minute per key, shared with the token endpoint)."""
    from keycard.store.sql import open_store
    with server.client() as c:
        acct = make_account(c, ALLOWED, "tok-jwt-used")
        key_file = make_key(c, acct["email"])
        key_id = key_file["private_key_id"]
        key_path = f"/v1/projects/-/serviceAccounts/{acct['email']}/keys/{key_id}"
        assert "keycardLastUsedTime" not in ok(c.get(key_path))
        creds = service_account.Credentials.from_service_account_info(key_file, scopes=[CLOUD_PLATFORM])
        creds = creds.with_always_use_jwt_access(True)
        creds.refresh(Request())
        before = dt.datetime.now(dt.UTC).replace(microsecond=0)
        assert _api(server, creds.token, ALLOWED) == 403        # no grant: still a use of the key
        used = None
        deadline = time.monotonic() + 60                       # written off the request path: wait for it
        while used is None and time.monotonic() < deadline:
            used = ok(c.get(key_path)).get("keycardLastUsedTime")
            if used is None:
                time.sleep(0.1)
        assert used is not None, "the key's last use was never recorded"
        assert before <= dt.datetime.fromisoformat(used.replace("Z", "+00:00")) <= dt.datetime.now(dt.UTC)

    def key_revision() -> int:
        store = open_store(server.database)
        try:
            rec = store.get("sa_key", key_id)
            assert rec is not None
            return rec.revision
        finally:
            store.close()

    written = key_revision()
    time.sleep(1.1)                                            # a second write would carry a later time
    for _ in range(20):
        assert _api(server, creds.token, ALLOWED) == 403
    assert post_token(server, assertion(key_file)).status_code == 200    # the token endpoint shares the throttle
    time.sleep(2)                                              # room for a (wrong) background write to land
    assert key_revision() == written
    with server.client() as c:
        assert ok(c.get(key_path))["keycardLastUsedTime"] == used


# ------------------------------------------------------------------------- secrets are never kept
def test_private_key_and_assertion_never_stored_or_logged(server: Server) -> None:
    with server.client() as c:
        acct = make_account(c, ALLOWED, "tok-secrets")
        created = ok(c.post(f"/v1/projects/-/serviceAccounts/{acct['email']}/keys", json={}))
    key_file = json.loads(base64.b64decode(created["privateKeyData"]))
    body = "".join(key_file["private_key"].strip().splitlines()[1:-1])
    signed = assertion(key_file)
    access = ok(post_token(server, signed))["access_token"]
    ok(httpx.get(server.url + "/oauth2/v2/tokeninfo", params={"access_token": access}))
    assert post_token(server, signed[:-8] + "AAAAAAAA").status_code == 400      # the refusal path logs nothing
    secrets = {"private key body": body, "private key line": key_file["private_key"].splitlines()[5],
               "privateKeyData": created["privateKeyData"][40:120], "assertion": signed,
               "assertion signature": signed.rsplit(".", 1)[1], "access token signature": access.rsplit(".", 1)[1]}

    database = Path(server.database.removeprefix("sqlite:///"))
    stored = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    log = server.log.read_bytes()
    audit = subprocess.run([*KEYCARD, "logs", "read", "--format", "json", "--limit", "100000", "--database",
                            server.database], check=True, capture_output=True, text=True).stdout
    assert json.loads(audit), "the audit log was read"
    assert any(e["protoPayload"]["methodName"] == "google.iam.admin.v1.CreateServiceAccountKey"
               for e in json.loads(audit))
    for what, secret in secrets.items():
        assert secret.encode() not in stored, f"{what} found in the database"
        assert secret.encode() not in log, f"{what} found in the server log"
        assert secret not in audit, f"{what} found in the audit log"
    # the greps can fail: the public half is in the database
    private = serialization.load_pem_private_key(key_file["private_key"].encode(), password=None)
    public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    assert public.splitlines()[2].encode() in stored
