"""IAM Credentials v1 against a live server: impersonation with unmodified google-auth, delegation
chains, the discovery client for every method, signatures checked against the published key, the
lifetime org policy, and what disabled or deleted accounts get.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import google.auth.credentials
import google.auth.exceptions
import google.oauth2.credentials
import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from google.auth import impersonated_credentials
from google.auth.transport.requests import AuthorizedSession, Request
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from conftest import Server

ALICE = "alice@example.com"
BOB = "bob@example.com"
CAROL = "carol@example.com"
PROJECT = "imp-proj-1"
OTHER = "imp-proj-2"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
TOKEN_CREATOR = "roles/iam.serviceAccountTokenCreator"
EXPIRE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture(scope="module", autouse=True)
def _no_regional_access_boundary_lookup() -> Iterator[None]:
    """google-auth 2.62 looks up https://iamcredentials.googleapis.com/…/allowedLocations after each refresh
    (API.md §6 #2); tests stay on loopback, so the harness switches that lookup off (library untouched)."""
    cls = google.auth.credentials.CredentialsWithRegionalAccessBoundary
    saved = cls._is_regional_access_boundary_lookup_required
    cls._is_regional_access_boundary_lookup_required = lambda self: False  # type: ignore[method-assign]
    yield
    cls._is_regional_access_boundary_lookup_required = saved  # type: ignore[method-assign]


def user_creds(server: Server, user: str = ALICE) -> google.oauth2.credentials.Credentials:
    return google.oauth2.credentials.Credentials(token=server.token(user))


def discovery(server: Server, api: str, creds: Any) -> Any:
    return build(api, "v1", static_discovery=True, credentials=creds, client_options={"api_endpoint": server.url})


def email(account_id: str, project: str = PROJECT) -> str:
    return f"{account_id}@{project}.iam.gserviceaccount.com"


def endpoint(server: Server, sa: str) -> str:
    return f"{server.url}/v1/projects/-/serviceAccounts/{sa}:generateAccessToken"


def impersonate(server: Server, source: Any, target: str, *, delegates: list[str] | None = None,
                lifetime: int = 600) -> impersonated_credentials.Credentials:
    return impersonated_credentials.Credentials(
        source_credentials=source, target_principal=target, target_scopes=SCOPES, delegates=delegates,
        lifetime=lifetime, iam_endpoint_override=endpoint(server, target))


def grant(server: Server, resource_path: str, member: str, role: str) -> None:
    """Add ``member`` to ``role`` on a service account (``/v1/projects/-/serviceAccounts/E``) or project
    (``/v3/projects/P``)."""
    with server.client() as c:
        policy = c.post(f"{resource_path}:getIamPolicy", json={}).json()
        bindings = policy.setdefault("bindings", [])
        b = next((b for b in bindings if b["role"] == role and "condition" not in b), None)
        if b is None:
            bindings.append({"role": role, "members": [member]})
        elif member not in b["members"]:
            b["members"].append(member)
        r = c.post(f"{resource_path}:setIamPolicy", json={"policy": policy})
        assert r.status_code == 200, r.text


def sa_path(sa: str) -> str:
    return f"/v1/projects/-/serviceAccounts/{sa}"


@pytest.fixture(scope="module")
def world(server: Server) -> dict[str, str]:
    with server.client() as c:
        for pid in (PROJECT, OTHER):
            r = c.post("/v3/projects", json={"projectId": pid, "parent": server.organization})
            assert r.status_code == 200, r.text
        out = {}
        for pid, account_id in ((PROJECT, "target-sa"), (PROJECT, "hop-one"), (PROJECT, "hop-two"),
                                (PROJECT, "caller-sa"), (PROJECT, "signer-sa"), (OTHER, "doomed-sa"),
                                (OTHER, "sleepy-sa"), (OTHER, "long-sa")):
            r = c.post(f"/v1/projects/{pid}/serviceAccounts", json={"accountId": account_id})
            assert r.status_code == 200, r.text
            out[account_id] = r.json()["email"]
            out[account_id + ":uid"] = r.json()["uniqueId"]
    # the target may read its own project, nothing else
    grant(server, f"/v3/projects/{PROJECT}", f"serviceAccount:{out['target-sa']}", "roles/viewer")
    for name in ("doomed-sa", "sleepy-sa", "long-sa"):
        grant(server, f"/v3/projects/{OTHER}", f"serviceAccount:{out[name]}", "roles/viewer")
    return out


def project_get(creds: Any, server: Server, project: str) -> int:
    return int(AuthorizedSession(creds).get(f"{server.url}/v3/projects/{project}").status_code)


def claims(token: str) -> dict[str, Any]:
    assert token.startswith("kc1.")
    out: dict[str, Any] = jwt.decode(token[4:], options={"verify_signature": False})
    return out


# ------------------------------------------------------------------------------- google-auth

def test_impersonated_credentials_refresh_then_call_an_api(server: Server, world: dict[str, str]) -> None:
    target = world["target-sa"]
    grant(server, sa_path(target), f"user:{ALICE}", TOKEN_CREATOR)
    creds = impersonate(server, user_creds(server), target)
    before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    creds.refresh(Request())
    assert creds.valid and creds.token.startswith("kc1.")
    assert dt.timedelta(seconds=590) <= creds.expiry - before <= dt.timedelta(seconds=610)
    c = claims(creds.token)
    assert c["sub"] == f"serviceAccount:{target}" and c["uid"] == world["target-sa:uid"]
    assert c["act"] == {"sub": f"user:{ALICE}"} and c["scope"] == SCOPES[0]
    assert project_get(creds, server, PROJECT) == 200          # roles/viewer on its project
    assert project_get(creds, server, OTHER) == 403            # nothing on the other one


def test_without_the_token_creator_grant_refresh_fails_with_403(server: Server, world: dict[str, str]) -> None:
    creds = impersonate(server, user_creds(server, BOB), world["target-sa"])
    with pytest.raises(google.auth.exceptions.RefreshError) as e:
        creds.refresh(Request())
    text = str(e.value)
    assert "403" in text and "iam.serviceAccounts.getAccessToken" in text
    assert f"projects/-/serviceAccounts/{world['target-sa']}" in text


def test_service_account_source_credentials(server: Server, world: dict[str, str]) -> None:
    """The source may itself be a service account: here its self-signed JWT from a key keycard created."""
    from google.auth import jwt as google_jwt
    caller, target = world["caller-sa"], world["target-sa"]
    with server.client() as c:
        r = c.post(f"{sa_path(caller)}/keys", json={})
        assert r.status_code == 200, r.text
        keyfile = json.loads(base64.b64decode(r.json()["privateKeyData"]))
    source = google_jwt.Credentials.from_service_account_info(
        keyfile, audience="https://iamcredentials.googleapis.com/")
    creds = impersonate(server, source, target)
    with pytest.raises(google.auth.exceptions.RefreshError, match="getAccessToken"):
        creds.refresh(Request())
    grant(server, sa_path(target), f"serviceAccount:{caller}", TOKEN_CREATOR)
    creds = impersonate(server, source, target)
    creds.refresh(Request())
    assert claims(creds.token)["act"] == {"sub": f"serviceAccount:{caller}"}
    assert project_get(creds, server, PROJECT) == 200


def test_two_hop_delegation_chain_needs_every_hop(server: Server, world: dict[str, str]) -> None:
    one, two, target = world["hop-one"], world["hop-two"], world["target-sa"]
    delegates = [f"projects/-/serviceAccounts/{one}", f"projects/-/serviceAccounts/{two}"]

    def attempt() -> impersonated_credentials.Credentials:
        creds = impersonate(server, user_creds(server, CAROL), target, delegates=delegates)
        creds.refresh(Request())
        return creds

    def missing(hop: str, on: str) -> None:
        with pytest.raises(google.auth.exceptions.RefreshError) as e:
            attempt()
        text = str(e.value)
        assert "403" in text and "iam.serviceAccounts.getAccessToken" in text, text
        assert f"serviceAccounts/{on}" in text and (hop == "caller" or hop in text), text

    missing("caller", one)                                              # carol → hop-one missing
    grant(server, sa_path(one), f"user:{CAROL}", TOKEN_CREATOR)
    missing(f"serviceAccount:{one}", two)                               # hop-one → hop-two missing
    grant(server, sa_path(two), f"serviceAccount:{one}", TOKEN_CREATOR)
    missing(f"serviceAccount:{two}", target)                            # hop-two → target missing
    grant(server, sa_path(target), f"serviceAccount:{two}", TOKEN_CREATOR)
    creds = attempt()
    c = claims(creds.token)
    assert c["sub"] == f"serviceAccount:{target}"
    assert c["act"] == {"sub": f"serviceAccount:{two}",
                        "act": {"sub": f"serviceAccount:{one}", "act": {"sub": f"user:{CAROL}"}}}
    assert project_get(creds, server, PROJECT) == 200
    # carol herself still may not impersonate the target directly
    with pytest.raises(google.auth.exceptions.RefreshError, match="403"):
        impersonate(server, user_creds(server, CAROL), target).refresh(Request())


def test_lifetime_over_an_hour_needs_the_org_policy(server: Server, world: dict[str, str]) -> None:
    sa = world["long-sa"]
    grant(server, sa_path(sa), f"user:{ALICE}", TOKEN_CREATOR)
    with pytest.raises(google.auth.exceptions.RefreshError) as e:
        impersonate(server, user_creds(server), sa, lifetime=7200).refresh(Request())
    assert "400" in str(e.value) and "iam.allowServiceAccountCredentialLifetimeExtension" in str(e.value)
    with server.client() as c:
        name = f"projects/{OTHER}/policies/iam.allowServiceAccountCredentialLifetimeExtension"
        r = c.post(f"/v2/projects/{OTHER}/policies",
                   json={"name": name, "spec": {"rules": [{"values": {"allowedValues": [sa]}}]}})
        assert r.status_code == 200, r.text
        creds = impersonate(server, user_creds(server), sa, lifetime=7200)
        before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        creds.refresh(Request())
        assert dt.timedelta(seconds=7190) <= creds.expiry - before <= dt.timedelta(seconds=7210)
        over = c.post(f"{sa_path(sa)}:generateAccessToken", json={"scope": SCOPES, "lifetime": "43201s"})
        assert over.status_code == 400 and over.json()["error"]["details"][0]["metadata"]["field"] == "lifetime"
        # the policy names this account only
        grant(server, sa_path(world["sleepy-sa"]), f"user:{ALICE}", TOKEN_CREATOR)
        other = c.post(f"{sa_path(world['sleepy-sa'])}:generateAccessToken",
                       json={"scope": SCOPES, "lifetime": "7200s"})
        assert other.status_code == 400, other.text
        r = c.delete(f"/v2/{name}")
        assert r.status_code == 200, r.text
        again = c.post(f"{sa_path(sa)}:generateAccessToken", json={"scope": SCOPES, "lifetime": "7200s"})
        assert again.status_code == 400


def test_expire_time_has_no_fractional_seconds(server: Server, world: dict[str, str]) -> None:
    target = world["target-sa"]
    grant(server, sa_path(target), f"user:{ALICE}", TOKEN_CREATOR)
    with server.client() as c:
        for body in ({"scope": SCOPES}, {"scope": SCOPES, "lifetime": "1.5s", "delegates": None},
                     {"scope": SCOPES, "lifetime": "3600s", "delegates": []}):
            r = c.post(f"{sa_path(target)}:generateAccessToken", json=body)
            assert r.status_code == 200, r.text
            assert EXPIRE_TIME.match(r.json()["expireTime"]), r.json()["expireTime"]
        exp = dt.datetime.strptime(r.json()["expireTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        assert abs((exp - dt.datetime.now(dt.UTC)).total_seconds() - 3600) < 10


# ---------------------------------------------------------------------- disabled, deleted, strangers

def test_disabled_or_deleted_target(server: Server, world: dict[str, str]) -> None:
    sleepy, doomed = world["sleepy-sa"], world["doomed-sa"]
    grant(server, sa_path(sleepy), f"user:{ALICE}", TOKEN_CREATOR)
    grant(server, sa_path(doomed), f"user:{ALICE}", TOKEN_CREATOR)
    live = impersonate(server, user_creds(server), sleepy)
    live.refresh(Request())
    assert project_get(live, server, OTHER) == 200
    with server.client() as c:
        assert c.post(f"/v1/projects/{OTHER}/serviceAccounts/{sleepy}:disable", json={}).status_code == 200
        # its live token stops at the next request; no new ones are issued
        r = httpx.get(f"{server.url}/v3/projects/{OTHER}", headers={"Authorization": f"Bearer {live.token}"})
        assert r.status_code == 401
        r = c.post(f"{sa_path(sleepy)}:generateAccessToken", json={"scope": SCOPES})
        assert r.status_code == 400 and r.json()["error"]["status"] == "FAILED_PRECONDITION", r.text
        assert "disabled" in r.json()["error"]["message"]
        assert c.post(f"/v1/projects/{OTHER}/serviceAccounts/{sleepy}:enable", json={}).status_code == 200
        assert c.post(f"{sa_path(sleepy)}:generateAccessToken", json={"scope": SCOPES}).status_code == 200

        doomed_token = c.post(f"{sa_path(doomed)}:generateAccessToken", json={"scope": SCOPES}).json()["accessToken"]
        auth = {"Authorization": f"Bearer {doomed_token}"}
        assert httpx.get(f"{server.url}/v3/projects/{OTHER}", headers=auth).status_code == 200
        assert c.delete(f"/v1/projects/{OTHER}/serviceAccounts/{doomed}").status_code == 200
        assert httpx.get(f"{server.url}/v3/projects/{OTHER}", headers=auth).status_code == 401
        # gone: its own policy went with it, so alice is refused as for any unknown account…
        r = c.post(f"{sa_path(doomed)}:generateAccessToken", json={"scope": SCOPES})
        assert r.status_code == 403, r.text
        # …unless she holds the permission on its project: then she learns it is not there
        grant(server, f"/v3/projects/{OTHER}", f"user:{ALICE}", TOKEN_CREATOR)
        r = c.post(f"{sa_path(doomed)}:generateAccessToken", json={"scope": SCOPES})
        assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND", r.text
        # a disabled delegate breaks the chain
        assert c.post(f"/v1/projects/{OTHER}/serviceAccounts/{sleepy}:disable", json={}).status_code == 200
        r = c.post(f"{sa_path(world['long-sa'])}:generateAccessToken",
                   json={"scope": SCOPES, "delegates": [f"projects/-/serviceAccounts/{sleepy}"]})
        assert r.status_code == 400 and "delegates[0]" in r.json()["error"]["message"], r.text
        assert c.post(f"/v1/projects/{OTHER}/serviceAccounts/{sleepy}:enable", json={}).status_code == 200


def test_a_stranger_learns_nothing_about_existence(server: Server, world: dict[str, str]) -> None:
    real, fake = world["target-sa"], email("no-such-sa")
    with server.client(BOB) as c:
        for verb, body in (("generateAccessToken", {"scope": SCOPES}), ("generateIdToken", {"audience": "a"}),
                           ("signJwt", {"payload": "{}"}), ("signBlob", {"payload": "aGk="}),
                           ("signBlob", {"bytesToSign": "aGk="})):
            a = c.post(f"{sa_path(real)}:{verb}", json=body)
            b = c.post(f"{sa_path(fake)}:{verb}", json=body)
            assert a.status_code == b.status_code == 403, (a.text, b.text)
            assert a.json() == json.loads(b.text.replace(fake, real))


def test_bad_input_gets_400_naming_the_field(server: Server, world: dict[str, str]) -> None:
    target = world["target-sa"]
    cases = [
        ("generateAccessToken", {}, "scope"),
        ("generateAccessToken", {"scope": []}, "scope"),
        ("generateAccessToken", {"scope": [""]}, "scope"),
        ("generateAccessToken", {"scope": SCOPES, "lifetime": "an hour"}, "lifetime"),
        ("generateAccessToken", {"scope": SCOPES, "lifetime": 3600}, "lifetime"),
        ("generateAccessToken", {"scope": SCOPES, "lifetime": "-5s"}, "lifetime"),
        ("generateAccessToken", {"scope": SCOPES, "delegates": "x"}, "delegates"),
        ("generateAccessToken", {"scope": SCOPES, "delegates": [f"projects/{PROJECT}/serviceAccounts/{target}"]},
         "delegates[0]"),
        ("generateIdToken", {}, "audience"),
        ("generateIdToken", {"audience": "a", "includeEmail": "yes"}, "includeEmail"),
        ("signJwt", {}, "payload"),
        ("signJwt", {"payload": "not json"}, "payload"),
        ("signJwt", {"payload": "[1, 2]"}, "payload"),
        ("signJwt", {"payload": json.dumps({"exp": "soon"})}, "payload"),
        ("signJwt", {"payload": json.dumps({"exp": int(time.time()) + 13 * 3600})}, "payload"),
        ("signJwt", {"payload": json.dumps({"exp": int(time.time()) - 60})}, "payload"),
        ("signBlob", {}, "payload"),
        ("signBlob", {"payload": "!!not base64!!"}, "payload"),
        ("signBlob", {"bytesToSign": 5}, "bytesToSign"),
    ]
    with server.client() as c:
        for verb, body, fld in cases:
            r = c.post(f"{sa_path(target)}:{verb}", json=body)
            assert r.status_code == 400, (verb, body, r.text)
            assert r.json()["error"]["details"][0]["metadata"]["field"] == fld, (verb, body, r.text)
        r = c.post(f"/v1/projects/{PROJECT}/serviceAccounts/{target}:generateAccessToken", json={"scope": SCOPES})
        assert r.status_code == 400 and r.json()["error"]["details"][0]["metadata"]["field"] == "name"
        r = c.post(f"{sa_path(target)}:generateAccessToken", content=b"{nope", headers={"content-type":
                                                                                         "application/json"})
        assert r.status_code == 400


# ----------------------------------------------------------------------------- discovery client

def _certificate(server: Server, sa: str, key_id: str) -> x509.Certificate:
    iam = discovery(server, "iam", user_creds(server))
    got = iam.projects().serviceAccounts().keys().get(
        name=f"projects/-/serviceAccounts/{sa}/keys/{key_id}", publicKeyType="TYPE_X509_PEM_FILE").execute()
    assert got["keyType"] == "SYSTEM_MANAGED" and got["keyOrigin"] == "GOOGLE_PROVIDED"
    assert "privateKeyData" not in got
    return x509.load_pem_x509_certificate(base64.b64decode(got["publicKeyData"]))


def test_discovery_client_every_method(server: Server, world: dict[str, str]) -> None:
    sa, uid = world["signer-sa"], world["signer-sa:uid"]
    grant(server, sa_path(sa), f"user:{ALICE}", TOKEN_CREATOR)
    api = discovery(server, "iamcredentials", user_creds(server)).projects().serviceAccounts()
    name = f"projects/-/serviceAccounts/{sa}"

    tok = api.generateAccessToken(name=name, body={"scope": SCOPES, "lifetime": "300s"}).execute()
    assert EXPIRE_TIME.match(tok["expireTime"]) and claims(tok["accessToken"])["sub"] == f"serviceAccount:{sa}"

    # ID token: verified with the server's JWKS like any OIDC relying party would
    idt = api.generateIdToken(name=name, body={"audience": "https://my-app.example.com", "includeEmail": True,
                                               "organizationNumberIncluded": True}).execute()["token"]
    jwks = httpx.get(f"{server.url}/.well-known/jwks.json").json()
    kid = jwt.get_unverified_header(idt)["kid"]
    key = jwt.PyJWK(next(k for k in jwks["keys"] if k["kid"] == kid))
    idc = jwt.decode(idt, key.key, algorithms=["ES256"], audience="https://my-app.example.com", issuer=server.url)
    assert idc["sub"] == uid and idc["azp"] == uid and idc["email"] == sa and idc["email_verified"] is True
    assert idc["google"] == {"organization_number": int(server.organization.rsplit("/", 1)[1])}
    plain = jwt.decode(api.generateIdToken(name=name, body={"audience": "aud"}).execute()["token"],
                       options={"verify_signature": False})
    assert "email" not in plain and "google" not in plain and plain["aud"] == "aud"

    # signBlob: verified with the certificate of the system-managed key from keys.get
    blob = b"\x00bytes to sign\xff"
    sb = api.signBlob(name=name, body={"payload": base64.b64encode(blob).decode()}).execute()
    cert = _certificate(server, sa, sb["keyId"])
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(base64.b64decode(sb["signedBlob"]), blob, padding.PKCS1v15(), hashes.SHA256())

    # signJwt: exp added when absent (1 hour), header kid = the same key, verifies with the certificate
    now = int(time.time())
    sj = api.signJwt(name=name, body={"payload": json.dumps({"sub": "someone", "iat": now, "aud": "x"})}).execute()
    assert sj["keyId"] == sb["keyId"], "one current system-managed key per account"
    assert jwt.get_unverified_header(sj["signedJwt"]) == {"alg": "RS256", "kid": sb["keyId"], "typ": "JWT"}
    got = jwt.decode(sj["signedJwt"], public, algorithms=["RS256"], audience="x")
    assert got["sub"] == "someone" and abs(got["exp"] - (now + 3600)) <= 5
    kept = api.signJwt(name=name, body={"payload": json.dumps({"exp": now + 11 * 3600})}).execute()
    assert jwt.decode(kept["signedJwt"], public, algorithms=["RS256"])["exp"] == now + 11 * 3600

    # the key is listed as SYSTEM_MANAGED (and not as a user-managed key)
    keys = discovery(server, "iam", user_creds(server)).projects().serviceAccounts().keys()
    system = keys.list(name=name, keyTypes="SYSTEM_MANAGED").execute()["keys"]
    assert [k["name"].rsplit("/", 1)[1] for k in system] == [sb["keyId"]]
    valid = (dt.datetime.fromisoformat(system[0]["validBeforeTime"].replace("Z", "+00:00"))
             - dt.datetime.fromisoformat(system[0]["validAfterTime"].replace("Z", "+00:00")))
    assert valid == dt.timedelta(days=14)
    assert keys.list(name=name, keyTypes="USER_MANAGED").execute().get("keys") is None


def test_iam_v1_sign_blob_shares_the_path(server: Server, world: dict[str, str]) -> None:
    sa = world["signer-sa"]
    grant(server, sa_path(sa), f"user:{ALICE}", TOKEN_CREATOR)
    iam = discovery(server, "iam", user_creds(server)).projects().serviceAccounts()
    blob = b"legacy"
    out = iam.signBlob(name=f"projects/{PROJECT}/serviceAccounts/{sa}",
                       body={"bytesToSign": base64.b64encode(blob).decode()}).execute()
    assert set(out) == {"keyId", "signature"}
    public = _certificate(server, sa, out["keyId"]).public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(base64.b64decode(out["signature"]), blob, padding.PKCS1v15(), hashes.SHA256())
    jw = iam.signJwt(name=f"projects/{PROJECT}/serviceAccounts/{sa}", body={"payload": '{"a": 1}'}).execute()
    assert set(jw) == {"keyId", "signedJwt"} and jwt.decode(jw["signedJwt"], public, algorithms=["RS256"])["a"] == 1
    with pytest.raises(HttpError) as e:                       # the account is not in that project
        iam.signBlob(name=f"projects/{OTHER}/serviceAccounts/{sa}", body={"bytesToSign": "aGk="}).execute()
    assert e.value.status_code in (403, 404)


def test_signed_jwt_is_a_self_signed_bearer(server: Server, world: dict[str, str]) -> None:
    """A JWT the account signed with signJwt, shaped like google-auth's self-signed JWTs, authenticates
    as the account: the verifier finds the system-managed key's public half."""
    sa = world["signer-sa"]
    grant(server, sa_path(sa), f"user:{ALICE}", TOKEN_CREATOR)
    grant(server, f"/v3/projects/{PROJECT}", f"serviceAccount:{sa}", "roles/browser")
    now = int(time.time())
    payload = {"iss": sa, "sub": sa, "aud": "https://cloudresourcemanager.googleapis.com/", "iat": now,
               "exp": now + 600}
    with server.client() as c:
        r = c.post(f"{sa_path(sa)}:signJwt", json={"payload": json.dumps(payload)})
        assert r.status_code == 200, r.text
    auth = {"Authorization": f"Bearer {r.json()['signedJwt']}"}
    assert httpx.get(f"{server.url}/v3/projects/{PROJECT}", headers=auth).status_code == 200
    assert httpx.get(f"{server.url}/v3/projects/{OTHER}", headers=auth).status_code == 403


def test_without_the_permission_nothing_is_signed(server: Server, world: dict[str, str]) -> None:
    api = discovery(server, "iamcredentials", user_creds(server, BOB)).projects().serviceAccounts()
    name = f"projects/-/serviceAccounts/{world['signer-sa']}"
    for call, perm in ((api.signBlob(name=name, body={"payload": "aGk="}), "signBlob"),
                       (api.signJwt(name=name, body={"payload": "{}"}), "signJwt"),
                       (api.generateIdToken(name=name, body={"audience": "a"}), "getOpenIdToken")):
        with pytest.raises(HttpError) as e:
            call.execute()
        assert e.value.status_code == 403 and f"iam.serviceAccounts.{perm}" in str(e.value)


def test_system_key_private_half_stays_out_of_apis_and_audit(server: Server, world: dict[str, str]) -> None:
    from keycard.store.sql import open_store
    sa = world["signer-sa"]
    grant(server, sa_path(sa), f"user:{ALICE}", TOKEN_CREATOR)
    with server.client() as c:
        r = c.post(f"{sa_path(sa)}:signBlob", json={"payload": "aGk="})
        assert r.status_code == 200
        key_id = r.json()["keyId"]
        listed = c.get(f"{sa_path(sa)}/keys").text + c.get(f"{sa_path(sa)}/keys/{key_id}").text
    store = open_store(server.database)
    try:
        held = store.get("system_key", key_id)
        assert held is not None and "PRIVATE KEY" in held.data["privateKeyPem"]
        secret = held.data["privateKeyPem"].splitlines()[3]
        assert secret not in listed and "PRIVATE KEY" not in listed
        audit = json.dumps([e.entry for e in store.audit(limit=100_000)])
        assert "PRIVATE KEY" not in audit and secret not in audit
        assert "keycard.iam.CreateSystemManagedKey" in audit
    finally:
        store.close()


def test_every_method_is_audited_without_token_material(server: Server, world: dict[str, str]) -> None:
    """generateAccessToken, generateIdToken, signJwt and signBlob each write a Data Access entry naming the
    caller, the account and the delegation chain; no token, signature or signed payload reaches the log."""
    from keycard.store.sql import open_store
    with server.client() as c:
        r = c.post(f"/v1/projects/{PROJECT}/serviceAccounts", json={"accountId": "audited-sa"})
        assert r.status_code == 200, r.text
        sa, uid = r.json()["email"], r.json()["uniqueId"]
    grant(server, sa_path(sa), f"user:{ALICE}", TOKEN_CREATOR)
    canary_claim, canary_blob = "audit-canary-claim-7f3a", base64.b64encode(b"audit-canary-blob-9c2e").decode()
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token(ALICE)}"},
                      timeout=30) as c:
        outs = {
            "access token": c.post(f"{sa_path(sa)}:generateAccessToken", json={"scope": SCOPES}).json()["accessToken"],
            "ID token": c.post(f"{sa_path(sa)}:generateIdToken", json={"audience": "https://a.example"}).json()["token"],
            "signed JWT": c.post(f"{sa_path(sa)}:signJwt",
                                 json={"payload": json.dumps({"sub": canary_claim})}).json()["signedJwt"],
            "signed blob": c.post(f"{sa_path(sa)}:signBlob", json={"payload": canary_blob}).json()["signedBlob"],
        }
    store = open_store(server.database)
    try:
        audit = [e.entry for e in store.audit(limit=100_000)]
    finally:
        store.close()
    mine = [e["protoPayload"] for e in audit
            if e["protoPayload"].get("serviceName") == "iamcredentials.googleapis.com"
            and e["protoPayload"].get("resourceName") == f"projects/-/serviceAccounts/{uid}"]
    assert sorted(p["methodName"] for p in mine) == ["GenerateAccessToken", "GenerateIdToken", "SignBlob", "SignJwt"]
    for p in mine:
        assert p["authenticationInfo"] == {"principalEmail": ALICE}
        assert p["metadata"]["identityDelegationChain"] == [f"projects/-/serviceAccounts/{sa}"]
        assert any(a["permission"].startswith("iam.serviceAccounts.") and a["granted"]
                   for a in p["authorizationInfo"])
    text = json.dumps(audit)
    secrets = {**outs, **{f"{k} signature": v.rsplit(".", 1)[-1] for k, v in outs.items() if "." in v},
               "signJwt payload claim": canary_claim, "signBlob payload": canary_blob}
    for what, secret in secrets.items():
        assert secret not in text, f"{what} found in the audit log"


def test_federated_caller_needs_workload_identity_user(server: Server, world: dict[str, str]) -> None:
    """A workload identity federation principal impersonates with roles/iam.workloadIdentityUser."""
    number = httpx.get(f"{server.url}/v3/projects/{PROJECT}",
                       headers={"Authorization": f"Bearer {server.token()}"}).json()["name"].split("/")[1]
    subject = (f"principal://iam.googleapis.com/projects/{number}/locations/global/workloadIdentityPools/"
               "ci-pool/subject/repo:acme/app")
    sa = world["target-sa"]
    fed = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token(subject)}"})
    with fed:
        r = fed.post(f"{sa_path(sa)}:generateAccessToken", json={"scope": SCOPES, "delegates": None})
        assert r.status_code == 403 and "iam.serviceAccounts.getAccessToken" in r.text, r.text
        grant(server, sa_path(sa), subject, "roles/iam.workloadIdentityUser")
        r = fed.post(f"{sa_path(sa)}:generateAccessToken", json={"scope": SCOPES, "delegates": None})
        assert r.status_code == 200, r.text
        assert claims(r.json()["accessToken"])["act"] == {"sub": subject}
        r = fed.post(f"{sa_path(sa)}:signBlob", json={"payload": "aGk="})     # the role cannot sign
        assert r.status_code == 403 and "iam.serviceAccounts.signBlob" in r.text, r.text
