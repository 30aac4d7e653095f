"""Workload identity federation against a live server: pools and OIDC providers through the iam v1
discovery client (LROs included), STS token exchange with unmodified google-auth
(``identity_pool.Credentials`` from an external-account JSON whose subject token the test's own IdP key
signs) and with the sts v1 discovery client, federated principals and principal sets in allow policies,
service-account impersonation through ``roles/iam.workloadIdentityUser``, and the STS forgery corpus.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import google.auth.credentials
import google.auth.exceptions
import google.oauth2.credentials
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from google.auth import identity_pool
from google.auth.transport.requests import AuthorizedSession, Request
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from conftest import KEYCARD, Server

PROJECT = "wif-proj-1"
ALLOW_SUBJECT, ALLOW_GROUP, ALLOW_ATTR, ALLOW_POOL, NOBODY = (
    "wif-subj-1", "wif-group-1", "wif-attr-1", "wif-pool-1", "wif-none-1")
ISSUER = "https://idp.example.test"
KID = "test-idp-key-1"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
MAPPING = {"google.subject": "assertion.sub", "google.groups": "assertion.groups", "attribute.env": "assertion.env"}
STRANGER = "mallory@example.com"


@pytest.fixture(scope="module", autouse=True)
def _no_regional_access_boundary_lookup() -> Iterator[None]:
    """google-auth looks up https://iamcredentials.googleapis.com/…/allowedLocations after each refresh
    (API.md §6 #2); tests stay on loopback, so the harness switches that lookup off (library untouched)."""
    cls = google.auth.credentials.CredentialsWithRegionalAccessBoundary
    saved = cls._is_regional_access_boundary_lookup_required
    cls._is_regional_access_boundary_lookup_required = lambda self: False  # type: ignore[method-assign]
    yield
    cls._is_regional_access_boundary_lookup_required = saved  # type: ignore[method-assign]


# ------------------------------------------------------------------------------------------ the IdP

IDP_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ROGUE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks(*keys: tuple[str, Any]) -> str:
    out = []
    for kid, key in keys:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        out.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
    return json.dumps({"keys": out})


def subject_token(audience: str, *, sub: str = "alice", key: Any = IDP_KEY, kid: str = KID, iss: str = ISSUER,
                  lifetime: int = 600, iat_offset: int = 0, **claims: Any) -> str:
    now = int(time.time()) + iat_offset
    body = {"iss": iss, "sub": sub, "aud": audience, "iat": now, "exp": now + lifetime, **claims}
    if sub == "":
        body.pop("sub")
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


# ----------------------------------------------------------------------------------------- helpers

def b64(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def iam(server: Server, user: str = "alice@example.com") -> Any:
    creds = google.oauth2.credentials.Credentials(token=server.token(user))
    return build("iam", "v1", static_discovery=True, credentials=creds, client_options={"api_endpoint": server.url})


def grant(server: Server, path: str, member: str, role: str) -> None:
    with server.client() as c:
        policy = c.post(f"{path}:getIamPolicy", json={}).json()
        policy.setdefault("bindings", []).append({"role": role, "members": [member]})
        r = c.post(f"{path}:setIamPolicy", json={"policy": policy})
        assert r.status_code == 200, r.text


class World:
    def __init__(self, server: Server, number: str) -> None:
        self.server = server
        self.number = number
        self.parent = f"projects/{number}/locations/global"

    def pool(self, pool: str) -> str:
        return f"{self.parent}/workloadIdentityPools/{pool}"

    def audience(self, pool: str, provider: str, https: bool = False) -> str:
        return ("https:" if https else "") + f"//iam.googleapis.com/{self.pool(pool)}/providers/{provider}"

    def subject(self, pool: str, sub: str) -> str:
        return f"principal://iam.googleapis.com/{self.pool(pool)}/subject/{sub}"

    def principal_set(self, pool: str, tail: str) -> str:
        return f"principalSet://iam.googleapis.com/{self.pool(pool)}/{tail}"

    def make(self, pool: str, provider: str, **overrides: Any) -> None:
        """Create (through plain HTTP) a pool unless it exists and an OIDC provider in it."""
        with self.server.client() as c:
            r = c.post(f"/v1/{self.parent}/workloadIdentityPools", params={"workloadIdentityPoolId": pool}, json={})
            assert r.status_code in (200, 409), r.text
            body = {"attributeMapping": MAPPING,
                    "oidc": {"issuerUri": ISSUER, "jwksJson": jwks((KID, IDP_KEY))}, **overrides}
            r = c.post(f"/v1/{self.pool(pool)}/providers", params={"workloadIdentityPoolProviderId": provider},
                       json=body)
            assert r.status_code == 200 and r.json()["done"] is True, r.text

    def exchange(self, pool: str, provider: str, token: str | None, **fields: str) -> httpx.Response:
        form = {"grant_type": EXCHANGE, "audience": self.audience(pool, provider), "scope": " ".join(SCOPES),
                "requested_token_type": ACCESS, "subject_token_type": JWT_TYPE, **fields}
        if token is not None:
            form["subject_token"] = token
        return httpx.post(f"{self.server.url}/v1/token", data=form, timeout=30)


@pytest.fixture(scope="module")
def world(server: Server) -> World:
    with server.client() as c:
        for pid in (PROJECT, ALLOW_SUBJECT, ALLOW_GROUP, ALLOW_ATTR, ALLOW_POOL, NOBODY):
            r = c.post("/v3/projects", json={"projectId": pid, "parent": server.organization})
            assert r.status_code == 200, r.text
        number = c.get(f"/v3/projects/{PROJECT}").json()["name"].split("/")[1]
    w = World(server, number)
    w.make("ci-pool", "ci-oidc")
    grant(server, f"/v3/projects/{ALLOW_SUBJECT}", w.subject("ci-pool", "alice"), "roles/viewer")
    grant(server, f"/v3/projects/{ALLOW_GROUP}", w.principal_set("ci-pool", "group/deployers"), "roles/viewer")
    grant(server, f"/v3/projects/{ALLOW_ATTR}", w.principal_set("ci-pool", "attribute.env/prod"), "roles/viewer")
    grant(server, f"/v3/projects/{ALLOW_POOL}", w.principal_set("ci-pool", "*"), "roles/viewer")
    return w


def external_account(tmp_path: Path, w: World, token: str, pool: str = "ci-pool", provider: str = "ci-oidc",
                     impersonate: str | None = None) -> identity_pool.Credentials:
    path = tmp_path / f"subject-{time.monotonic_ns()}.jwt"
    path.write_text(token)
    info: dict[str, Any] = {
        "type": "external_account", "audience": w.audience(pool, provider), "subject_token_type": JWT_TYPE,
        "token_url": f"{w.server.url}/v1/token", "credential_source": {"file": str(path)}}
    if impersonate:
        info["service_account_impersonation_url"] = (f"{w.server.url}/v1/projects/-/serviceAccounts/{impersonate}"
                                                     ":generateAccessToken")
    return identity_pool.Credentials.from_info(info, scopes=SCOPES)


def project_get(creds: Any, w: World, project: str) -> int:
    return int(AuthorizedSession(creds).get(f"{w.server.url}/v3/projects/{project}").status_code)


def error_of(r: httpx.Response) -> str:
    assert r.status_code == 400, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "error_description"}, body
    return str(body["error"])


# ============================================================================ pools and providers

def test_pool_crud_through_the_discovery_client(server: Server, world: World) -> None:
    pools = iam(server).projects().locations().workloadIdentityPools()
    op = pools.create(parent=f"projects/{PROJECT}/locations/global", workloadIdentityPoolId="crud-pool",
                      body={"displayName": "CRUD pool", "description": "made by a test"}).execute()
    name = world.pool("crud-pool")
    assert op["done"] is True and op["name"].startswith(name + "/operations/")
    assert op["response"]["@type"] == "type.googleapis.com/google.iam.v1.WorkloadIdentityPool"
    assert op["response"]["name"] == name and op["response"]["state"] == "ACTIVE"
    polled = pools.operations().get(name=op["name"]).execute()
    assert polled["done"] is True and polled["response"]["displayName"] == "CRUD pool"

    got = pools.get(name=f"projects/{PROJECT}/locations/global/workloadIdentityPools/crud-pool").execute()
    assert got == {"name": name, "displayName": "CRUD pool", "description": "made by a test", "state": "ACTIVE"}
    listed = pools.list(parent=f"projects/{PROJECT}/locations/global").execute()["workloadIdentityPools"]
    assert name in [p["name"] for p in listed]

    op = pools.patch(name=name, updateMask="displayName,disabled", body={"displayName": "Renamed",
                                                                        "disabled": True}).execute()
    assert op["done"] and op["response"]["displayName"] == "Renamed" and op["response"]["disabled"] is True
    assert pools.get(name=name).execute()["description"] == "made by a test"

    op = pools.delete(name=name).execute()
    assert op["done"] and op["response"]["state"] == "DELETED" and "expireTime" in op["response"]
    assert pools.get(name=name).execute()["state"] == "DELETED"
    visible = pools.list(parent=world.parent).execute().get("workloadIdentityPools", [])
    assert name not in [p["name"] for p in visible]
    with_deleted = pools.list(parent=world.parent, showDeleted=True).execute()["workloadIdentityPools"]
    assert name in [p["name"] for p in with_deleted]
    with pytest.raises(HttpError) as e:
        pools.create(parent=world.parent, workloadIdentityPoolId="crud-pool", body={}).execute()
    assert e.value.status_code == 409
    with pytest.raises(HttpError) as e:
        pools.patch(name=name, updateMask="displayName", body={"displayName": "x"}).execute()
    assert e.value.status_code == 400

    op = pools.undelete(name=name, body={}).execute()
    assert op["done"] and op["response"]["state"] == "ACTIVE" and "expireTime" not in op["response"]


def test_provider_crud_through_the_discovery_client(server: Server, world: World) -> None:
    pools = iam(server).projects().locations().workloadIdentityPools()
    pools.create(parent=world.parent, workloadIdentityPoolId="prov-pool", body={}).execute()
    pool = world.pool("prov-pool")
    providers = pools.providers()
    body = {"displayName": "GitHub-ish", "attributeMapping": MAPPING,
            "attributeCondition": "assertion.env == 'prod'",
            "oidc": {"issuerUri": ISSUER, "allowedAudiences": ["my-aud"], "jwksJson": jwks((KID, IDP_KEY))}}
    op = providers.create(parent=pool, workloadIdentityPoolProviderId="gh-oidc", body=body).execute()
    name = f"{pool}/providers/gh-oidc"
    assert op["done"] and op["response"]["@type"] == "type.googleapis.com/google.iam.v1.WorkloadIdentityPoolProvider"
    assert providers.operations().get(name=op["name"]).execute()["response"]["name"] == name
    got = providers.get(name=name).execute()
    assert got["state"] == "ACTIVE" and got["attributeMapping"] == MAPPING and got["oidc"]["allowedAudiences"] == [
        "my-aud"] and got["attributeCondition"] == "assertion.env == 'prod'"
    assert [p["name"] for p in providers.list(parent=pool).execute()["workloadIdentityPoolProviders"]] == [name]

    op = providers.patch(name=name, updateMask="attributeCondition,oidc.allowedAudiences",
                         body={"attributeCondition": "assertion.env != 'dev'", "oidc": {}}).execute()
    assert op["response"]["attributeCondition"] == "assertion.env != 'dev'"
    assert "allowedAudiences" not in op["response"]["oidc"] and op["response"]["oidc"]["issuerUri"] == ISSUER

    assert providers.delete(name=name).execute()["response"]["state"] == "DELETED"
    assert providers.list(parent=pool).execute().get("workloadIdentityPoolProviders") is None
    assert providers.list(parent=pool, showDeleted=True).execute()["workloadIdentityPoolProviders"][0][
        "state"] == "DELETED"
    assert providers.undelete(name=name, body={}).execute()["response"]["state"] == "ACTIVE"


@pytest.mark.parametrize(("query", "body", "field"), [
    ({"workloadIdentityPoolId": "gcp-reserved"}, {}, "workloadIdentityPoolId"),
    ({"workloadIdentityPoolId": "abc"}, {}, "workloadIdentityPoolId"),
    ({"workloadIdentityPoolId": "Upper-case"}, {}, "workloadIdentityPoolId"),
    ({"workloadIdentityPoolId": "a" * 33}, {}, "workloadIdentityPoolId"),
    ({}, {}, "workloadIdentityPoolId"),
    ({"workloadIdentityPoolId": "fine-pool"}, {"displayName": "x" * 33}, "displayName"),
])
def test_bad_pool_input_is_400_naming_the_field(server: Server, world: World, query: dict[str, str],
                                                body: dict[str, Any], field: str) -> None:
    with server.client() as c:
        r = c.post(f"/v1/{world.parent}/workloadIdentityPools", params=query, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["details"][0]["metadata"]["field"] == field


@pytest.mark.parametrize(("change", "field"), [
    ({"attributeMapping": {"google.groups": "assertion.groups"}}, "attributeMapping"),
    ({"attributeMapping": {"google.subject": "assertion.sub +"}}, "attributeMapping['google.subject']"),
    ({"attributeMapping": {"google.subject": "assertion.sub == 'x'"}}, "attributeMapping['google.subject']"),
    ({"attributeMapping": {"google.subject": "assertion.sub", "attribute.Bad": "assertion.x"}}, "attributeMapping"),
    ({"attributeCondition": "assertion.env ==="}, "attributeCondition"),
    ({"attributeCondition": "assertion.env"}, None),          # dyn: accepted at write time, must be bool at run
    ({"attributeCondition": "'prod'"}, "attributeCondition"),
    ({"attributeCondition": "request.time > 1"}, "attributeCondition"),
    ({"oidc": {"issuerUri": "http://idp.example.test", "jwksJson": jwks((KID, IDP_KEY))}}, "oidc.issuerUri"),
    ({"oidc": {"issuerUri": ISSUER}}, "oidc.jwksJson"),
    ({"oidc": {"issuerUri": ISSUER, "jwksJson": "{not json"}}, "oidc.jwksJson"),
    ({"oidc": {"issuerUri": ISSUER, "jwksJson": json.dumps({"keys": [{
        **json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(IDP_KEY)), "kid": "private"}]})}}, "oidc.jwksJson"),
    ({"oidc": {"issuerUri": ISSUER, "jwksJson": jwks((KID, IDP_KEY)), "allowedAudiences": ["a"] * 11}},
     "oidc.allowedAudiences"),
    ({"oidc": None, "aws": {"accountId": "123456789012"}}, "aws"),
])
def test_bad_provider_input_is_400_naming_the_field(server: Server, world: World, change: dict[str, Any],
                                                    field: str | None) -> None:
    body = {"attributeMapping": MAPPING, "oidc": {"issuerUri": ISSUER, "jwksJson": jwks((KID, IDP_KEY))}, **change}
    with server.client() as c:
        provider_id = "bad-input" if field else "dyn-condition"
        r = c.post(f"/v1/{world.pool('ci-pool')}/providers", params={"workloadIdentityPoolProviderId": provider_id},
                   json=body)
        if field is None:
            assert r.status_code == 200, r.text
            return
    assert r.status_code == 400, r.text
    assert r.json()["error"]["details"][0]["metadata"]["field"] == field, r.text


def test_stranger_gets_403_naming_the_permission(server: Server, world: World) -> None:
    pools = iam(server, STRANGER).projects().locations().workloadIdentityPools()
    for call, perm in ((pools.create(parent=world.parent, workloadIdentityPoolId="evil-pool", body={}),
                        "iam.workloadIdentityPools.create"),
                       (pools.get(name=world.pool("ci-pool")), "iam.workloadIdentityPools.get"),
                       (pools.get(name=world.pool("no-such-pool")), "iam.workloadIdentityPools.get"),
                       (pools.providers().list(parent=world.pool("ci-pool")),
                        "iam.workloadIdentityPoolProviders.list"),
                       (pools.delete(name=world.pool("ci-pool")), "iam.workloadIdentityPools.delete")):
        with pytest.raises(HttpError) as e:
            call.execute()
        assert e.value.status_code == 403 and f"'{perm}'" in str(e.value.reason), e.value.reason


def test_pool_admin_role_grants_pool_management(server: Server, world: World) -> None:
    grant(server, f"/v3/projects/{PROJECT}", "user:wip-admin@example.com", "roles/iam.workloadIdentityPoolAdmin")
    pools = iam(server, "wip-admin@example.com").projects().locations().workloadIdentityPools()
    op = pools.create(parent=world.parent, workloadIdentityPoolId="admin-pool", body={}).execute()
    assert op["done"] and pools.get(name=world.pool("admin-pool")).execute()["state"] == "ACTIVE"


# ============================================================================== STS + google-auth

def test_google_auth_identity_pool_credentials_reach_what_the_policy_allows(tmp_path: Path, world: World) -> None:
    token = subject_token(world.audience("ci-pool", "ci-oidc", https=True), groups=["deployers"], env="prod")
    creds = external_account(tmp_path, world, token)
    creds.refresh(Request())
    assert creds.token.startswith("kc1.") and creds.valid
    assert project_get(creds, world, ALLOW_SUBJECT) == 200
    assert project_get(creds, world, ALLOW_GROUP) == 200
    assert project_get(creds, world, ALLOW_ATTR) == 200
    assert project_get(creds, world, ALLOW_POOL) == 200
    assert project_get(creds, world, NOBODY) == 403


def test_other_subject_without_the_group_or_attribute_is_refused(tmp_path: Path, world: World) -> None:
    token = subject_token(world.audience("ci-pool", "ci-oidc"), sub="bob", groups=["testers"], env="dev")
    creds = external_account(tmp_path, world, token)
    creds.refresh(Request())
    assert project_get(creds, world, ALLOW_SUBJECT) == 403
    assert project_get(creds, world, ALLOW_GROUP) == 403
    assert project_get(creds, world, ALLOW_ATTR) == 403
    assert project_get(creds, world, ALLOW_POOL) == 200        # principalSet://…/* : every identity of the pool


def test_group_membership_follows_the_token_not_the_subject(tmp_path: Path, world: World) -> None:
    """The same subject with a token that no longer carries the group loses what the group gave."""
    with_group = external_account(tmp_path, world, subject_token(world.audience("ci-pool", "ci-oidc"), sub="carol",
                                                                 groups=["deployers"]))
    with_group.refresh(Request())
    assert project_get(with_group, world, ALLOW_GROUP) == 200
    without = external_account(tmp_path, world, subject_token(world.audience("ci-pool", "ci-oidc"), sub="carol"))
    without.refresh(Request())
    assert project_get(without, world, ALLOW_GROUP) == 403


def test_two_tokens_of_one_subject_with_different_claims_used_concurrently(world: World) -> None:
    """Principal sets travel with the request: the same subject's two live tokens — one in group
    deployers, the other with attribute env=prod — used at the same moment each reach only what their
    own sets are granted (nothing about the subject is remembered between requests)."""
    aud = world.audience("ci-pool", "ci-oidc")
    deployer = world.exchange("ci-pool", "ci-oidc", subject_token(aud, sub="frank", groups=["deployers"], env="dev"))
    prod = world.exchange("ci-pool", "ci-oidc", subject_token(aud, sub="frank", groups=["testers"], env="prod"))
    tokens = {"deployer": deployer.json()["access_token"], "prod": prod.json()["access_token"]}
    want = {"deployer": {ALLOW_GROUP: 200, ALLOW_ATTR: 403, ALLOW_POOL: 200},
            "prod": {ALLOW_GROUP: 403, ALLOW_ATTR: 200, ALLOW_POOL: 200}}

    def run(who: str) -> list[str]:
        wrong = []
        with httpx.Client(base_url=world.server.url, headers={"Authorization": f"Bearer {tokens[who]}"},
                          timeout=30) as c:
            for _ in range(15):
                for project, code in want[who].items():
                    got = c.get(f"/v3/projects/{project}").status_code
                    if got != code:
                        wrong.append(f"{who} {project}: {got}")
        return wrong

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, ["deployer", "prod", "deployer", "prod"]))
    assert results == [[], [], [], []]


def test_exchange_is_audited_without_token_material(server: Server, world: World) -> None:
    """Each exchange writes a Data Access entry like Google's sts.googleapis.com ExchangeToken log: the
    federated principal, the provider, the mapped attributes — and neither token."""
    aud = world.audience("ci-pool", "ci-oidc")
    subject = subject_token(aud, sub="audited-gina", groups=["deployers"], env="prod")
    r = world.exchange("ci-pool", "ci-oidc", subject)
    assert r.status_code == 200, r.text
    access = r.json()["access_token"]
    out = subprocess.run([*KEYCARD, "logs", "read", 'protoPayload.serviceName="sts.googleapis.com"', "--format",
                          "json", "--limit", "1000", "--database", server.database],
                         check=True, capture_output=True, text=True).stdout
    entries = [e for e in json.loads(out)
               if e["protoPayload"].get("authenticationInfo", {}).get("principalSubject")
               == world.subject("ci-pool", "audited-gina")]
    assert len(entries) == 1, out[:2000]
    p = entries[0]["protoPayload"]
    assert entries[0]["logName"].endswith("/logs/cloudaudit.googleapis.com%2Fdata_access")
    assert p["methodName"] == "google.identity.sts.v1.SecurityTokenService.ExchangeToken"
    assert p["resourceName"] == f"{world.pool('ci-pool')}/providers/ci-oidc"
    assert p["request"]["audience"] == aud and p["request"]["subjectTokenType"] == JWT_TYPE
    assert p["metadata"]["mapAttributes"] == {"google.subject": "audited-gina", "google.groups": ["deployers"],
                                              "attribute.env": "prod"}
    everything = subprocess.run([*KEYCARD, "logs", "read", "--format", "json", "--limit", "100000", "--database",
                                 server.database], check=True, capture_output=True, text=True).stdout
    for what, secret in {"subject token": subject, "subject token signature": subject.rsplit(".", 1)[1],
                         "access token": access, "access token signature": access.rsplit(".", 1)[1]}.items():
        assert secret not in everything, f"{what} found in the audit log"


def test_sts_response_shape_and_lifetime_bounded_by_the_subject_token(world: World) -> None:
    r = world.exchange("ci-pool", "ci-oidc", subject_token(world.audience("ci-pool", "ci-oidc"), lifetime=300))
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"access_token", "issued_token_type", "token_type", "expires_in"}
    assert body["issued_token_type"] == ACCESS and body["token_type"] == "Bearer"
    assert 290 <= body["expires_in"] <= 300
    claims = jwt.decode(body["access_token"][4:], options={"verify_signature": False})
    assert claims["sub"] == world.subject("ci-pool", "alice")
    assert claims["fed"] == f"{world.pool('ci-pool')}/providers/ci-oidc"
    long = world.exchange("ci-pool", "ci-oidc", subject_token(world.audience("ci-pool", "ci-oidc"), lifetime=7200))
    assert long.json()["expires_in"] == 3600


def test_https_prefixed_audience_parameter_is_accepted(world: World) -> None:
    r = world.exchange("ci-pool", "ci-oidc", subject_token(world.audience("ci-pool", "ci-oidc")),
                       audience=world.audience("ci-pool", "ci-oidc", https=True))
    assert r.status_code == 200, r.text


def test_discovery_sts_client_sends_json_camel_case(server: Server, world: World) -> None:
    sts = build("sts", "v1", static_discovery=True, client_options={"api_endpoint": server.url},
                credentials=google.auth.credentials.AnonymousCredentials())
    out = sts.v1().token(body={
        "grantType": EXCHANGE, "audience": world.audience("ci-pool", "ci-oidc"), "scope": SCOPES[0],
        "requestedTokenType": ACCESS, "subjectTokenType": "urn:ietf:params:oauth:token-type:id_token",
        "subjectToken": subject_token(world.audience("ci-pool", "ci-oidc"))}).execute()
    assert out["token_type"] == "Bearer" and out["access_token"].startswith("kc1.")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {out['access_token']}"}) as c:
        assert c.get(f"/v3/projects/{ALLOW_SUBJECT}").status_code == 200


def _serves_generate_access_token() -> bool:
    from keycard.http import routes
    from keycard.http.routing import Router
    router = Router()
    routes.register(router)
    return any(r.operation_id == "iamcredentials.projects.serviceAccounts.generateAccessToken" for r in router.routes)


@pytest.mark.skipif(not _serves_generate_access_token(), reason="IAM Credentials generateAccessToken not built in")
def test_impersonation_through_workload_identity_user(tmp_path: Path, server: Server, world: World) -> None:
    with server.client() as c:
        r = c.post(f"/v1/projects/{PROJECT}/serviceAccounts", json={"accountId": "wif-deployer"})
        assert r.status_code == 200, r.text
        sa = r.json()["email"]
    grant(server, f"/v3/projects/{NOBODY}", f"serviceAccount:{sa}", "roles/viewer")
    grant(server, f"/v1/projects/-/serviceAccounts/{sa}", world.principal_set("ci-pool", "group/deployers"),
          "roles/iam.workloadIdentityUser")
    allowed = external_account(tmp_path, world, subject_token(world.audience("ci-pool", "ci-oidc"), sub="dave",
                                                              groups=["deployers"]), impersonate=sa)
    allowed.refresh(Request())
    assert project_get(allowed, world, NOBODY) == 200          # as the service account
    refused = external_account(tmp_path, world, subject_token(world.audience("ci-pool", "ci-oidc"), sub="erin",
                                                              groups=["testers"]), impersonate=sa)
    with pytest.raises(google.auth.exceptions.RefreshError, match="getAccessToken"):
        refused.refresh(Request())


# ================================================================================== STS forgeries

def test_forgery_wrong_audience_in_the_subject_token(world: World) -> None:
    r = world.exchange("ci-pool", "ci-oidc", subject_token("https://some-other-service.example.com"))
    assert error_of(r) == "invalid_grant" and "audience" in r.json()["error_description"]


def test_forgery_audience_parameter_naming_an_unknown_provider(world: World) -> None:
    r = world.exchange("ci-pool", "no-such-prov", subject_token(world.audience("ci-pool", "no-such-prov")))
    assert error_of(r) == "invalid_target"


def test_forgery_malformed_audience_parameter(world: World) -> None:
    r = world.exchange("ci-pool", "ci-oidc", subject_token(world.audience("ci-pool", "ci-oidc")),
                       audience=f"projects/{world.number}/providers/ci-oidc")
    assert error_of(r) == "invalid_request"


def test_forgery_unmapped_subject_attribute(world: World) -> None:
    world.make("ci-pool", "email-oidc", attributeMapping={"google.subject": "assertion.email"})
    r = world.exchange("ci-pool", "email-oidc", subject_token(world.audience("ci-pool", "email-oidc")))
    assert error_of(r) == "invalid_grant" and "google.subject" in r.json()["error_description"]


def test_forgery_failing_attribute_condition(world: World) -> None:
    world.make("ci-pool", "prod-oidc", attributeCondition="assertion.env == 'prod' && 'deployers' in google.groups")
    aud = world.audience("ci-pool", "prod-oidc")
    r = world.exchange("ci-pool", "prod-oidc", subject_token(aud, env="dev", groups=["deployers"]))
    assert error_of(r) == "invalid_grant" and "attribute condition" in r.json()["error_description"]
    missing_claim = world.exchange("ci-pool", "prod-oidc", subject_token(aud, groups=["deployers"]))
    assert error_of(missing_claim) == "invalid_grant"
    ok = world.exchange("ci-pool", "prod-oidc", subject_token(aud, env="prod", groups=["deployers"]))
    assert ok.status_code == 200, ok.text


def test_forgery_missing_subject_token(world: World) -> None:
    assert error_of(world.exchange("ci-pool", "ci-oidc", None)) == "invalid_request"


def test_forgery_token_signed_by_a_key_not_in_the_jwks(world: World) -> None:
    aud = world.audience("ci-pool", "ci-oidc")
    same_kid = world.exchange("ci-pool", "ci-oidc", subject_token(aud, key=ROGUE_KEY))
    assert error_of(same_kid) == "invalid_grant"
    other_kid = world.exchange("ci-pool", "ci-oidc", subject_token(aud, key=ROGUE_KEY, kid="rogue"))
    assert error_of(other_kid) == "invalid_grant"


def test_forgery_alg_none_and_hs256_with_the_public_key(world: World) -> None:
    aud = world.audience("ci-pool", "ci-oidc")
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "alice", "aud": aud, "iat": now, "exp": now + 600}
    none = jwt.encode(claims, None, algorithm="none", headers={"kid": KID})
    assert error_of(world.exchange("ci-pool", "ci-oidc", none)) == "invalid_grant"
    # the classic confusion: the provider's public key (JWKS or PEM) as an HMAC secret
    pem = IDP_KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for secret in (jwks((KID, IDP_KEY)).encode(), pem):
        signing_input = b".".join(b64(json.dumps(part).encode()) for part in
                                  ({"alg": "HS256", "typ": "JWT", "kid": KID}, claims))
        hs_token = (signing_input + b"." + b64(hmac.new(secret, signing_input, hashlib.sha256).digest())).decode()
        assert error_of(world.exchange("ci-pool", "ci-oidc", hs_token)) == "invalid_grant"
    ec_key = ec.generate_private_key(ec.SECP256R1())
    es = jwt.encode(claims, ec_key, algorithm="ES256", headers={"kid": KID})
    assert error_of(world.exchange("ci-pool", "ci-oidc", es)) == "invalid_grant"


def test_forgery_expired_token(world: World) -> None:
    token = subject_token(world.audience("ci-pool", "ci-oidc"), iat_offset=-7200, lifetime=600)
    assert error_of(world.exchange("ci-pool", "ci-oidc", token)) == "invalid_grant"


def test_forgery_wrong_issuer_future_token_and_overlong_lifetime(world: World) -> None:
    aud = world.audience("ci-pool", "ci-oidc")
    assert error_of(world.exchange("ci-pool", "ci-oidc", subject_token(aud, iss="https://evil.example"))) == \
        "invalid_grant"
    assert error_of(world.exchange("ci-pool", "ci-oidc", subject_token(aud, iat_offset=3600))) == "invalid_grant"
    assert error_of(world.exchange("ci-pool", "ci-oidc", subject_token(aud, lifetime=2 * 86400))) == "invalid_grant"


def test_forgery_disabled_provider(server: Server, world: World) -> None:
    world.make("ci-pool", "soon-off")
    aud = world.audience("ci-pool", "soon-off")
    issued = world.exchange("ci-pool", "soon-off", subject_token(aud)).json()["access_token"]
    with server.client() as c:
        r = c.patch(f"/v1/{world.pool('ci-pool')}/providers/soon-off", params={"updateMask": "disabled"},
                    json={"disabled": True})
        assert r.status_code == 200, r.text
    assert error_of(world.exchange("ci-pool", "soon-off", subject_token(aud))) == "invalid_target"
    r = httpx.get(f"{server.url}/v3/projects/{ALLOW_SUBJECT}", headers={"Authorization": f"Bearer {issued}"})
    assert r.status_code == 401, r.text


def test_forgery_deleted_pool(server: Server, world: World) -> None:
    world.make("gone-pool", "gone-oidc")
    grant(server, f"/v3/projects/{NOBODY}", world.subject("gone-pool", "alice"), "roles/browser")
    aud = world.audience("gone-pool", "gone-oidc")
    issued = world.exchange("gone-pool", "gone-oidc", subject_token(aud)).json()["access_token"]
    auth = {"Authorization": f"Bearer {issued}"}
    assert httpx.get(f"{server.url}/v3/projects/{NOBODY}", headers=auth).status_code == 200
    with server.client() as c:
        assert c.delete(f"/v1/{world.pool('gone-pool')}").status_code == 200
    assert error_of(world.exchange("gone-pool", "gone-oidc", subject_token(aud))) == "invalid_target"
    assert httpx.get(f"{server.url}/v3/projects/{NOBODY}", headers=auth).status_code == 401
    with server.client() as c:
        assert c.post(f"/v1/{world.pool('gone-pool')}:undelete", json={}).status_code == 200
    assert httpx.get(f"{server.url}/v3/projects/{NOBODY}", headers=auth).status_code == 200   # undelete revives


def test_bad_requests_are_oauth_errors_never_5xx(world: World) -> None:
    aud = world.audience("ci-pool", "ci-oidc")
    good = subject_token(aud)
    assert error_of(world.exchange("ci-pool", "ci-oidc", good, grant_type="password")) == "unsupported_grant_type"
    assert error_of(world.exchange("ci-pool", "ci-oidc", good,
                                   subject_token_type="urn:ietf:params:oauth:token-type:saml2")) == "invalid_request"
    assert error_of(world.exchange("ci-pool", "ci-oidc", good,
                                   requested_token_type="urn:x")) == "invalid_request"
    assert error_of(world.exchange("ci-pool", "ci-oidc", "not.a.jwt")) == "invalid_grant"
    assert error_of(world.exchange("ci-pool", "ci-oidc", "x" * 100)) == "invalid_grant"
    r = httpx.post(f"{world.server.url}/v1/token", json={"grantType": EXCHANGE, "audience": ["not", "a", "string"]})
    assert error_of(r) == "invalid_request"
    r = httpx.post(f"{world.server.url}/v1/token", json=[1, 2])
    assert error_of(r) == "invalid_request"
