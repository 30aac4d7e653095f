"""IAM v1 service accounts and keys against a live server, driven by Google's discovery client.

Covers the account lifecycle (create, get, list, patch, disable, enable, delete, undelete), the
account's own IAM policy, keys (create, upload, list, get in public formats, disable, enable,
delete, the 10-key limit, org-policy constraints), Google-managed accounts of a new project, and
what bad input gets.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import google.oauth2.credentials
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from conftest import Server

ALICE = "alice@example.com"
BOB = "bob@example.com"
PROJECT = "sa-proj-1"


def iam(server: Server, user: str = ALICE) -> Any:
    creds = google.oauth2.credentials.Credentials(token=server.token(user))
    return build("iam", "v1", credentials=creds, static_discovery=True, client_options={"api_endpoint": server.url})


def status(err: pytest.ExceptionInfo[HttpError]) -> int:
    return int(err.value.status_code)


@pytest.fixture(scope="module")
def project(server: Server) -> str:
    with server.client() as c:
        r = c.post("/v3/projects", json={"projectId": PROJECT, "parent": server.organization})
        assert r.status_code == 200, r.text
    return PROJECT


def _create(server: Server, account_id: str, **sa: Any) -> dict[str, Any]:
    body = {"accountId": account_id, "serviceAccount": sa}
    out: dict[str, Any] = iam(server).projects().serviceAccounts().create(
        name=f"projects/{PROJECT}", body=body).execute()
    return out


def test_lifecycle(server: Server, project: str) -> None:
    sa = _create(server, "lifecycle-sa", displayName="Lifecycle", description="d")
    email = sa["email"]
    assert email == f"lifecycle-sa@{PROJECT}.iam.gserviceaccount.com"
    assert sa["name"] == f"projects/{PROJECT}/serviceAccounts/{email}"
    assert len(sa["uniqueId"]) == 21 and sa["uniqueId"].isdigit() and sa["oauth2ClientId"] == sa["uniqueId"]
    accounts = iam(server).projects().serviceAccounts()
    got = accounts.get(name=f"projects/-/serviceAccounts/{email}").execute()
    assert got["displayName"] == "Lifecycle" and "disabled" not in got
    by_id = accounts.get(name=f"projects/-/serviceAccounts/{sa['uniqueId']}").execute()
    assert by_id["email"] == email
    listed = accounts.list(name=f"projects/{PROJECT}").execute()["accounts"]
    assert email in [a["email"] for a in listed]
    patched = accounts.patch(name=sa["name"], body={"serviceAccount": {"displayName": "Renamed"},
                                                    "updateMask": "displayName"}).execute()
    assert patched["displayName"] == "Renamed" and patched["name"] == sa["name"]
    accounts.disable(name=sa["name"], body={}).execute()
    assert accounts.get(name=sa["name"]).execute()["disabled"] is True
    accounts.enable(name=sa["name"], body={}).execute()
    assert "disabled" not in accounts.get(name=sa["name"]).execute()
    accounts.delete(name=sa["name"]).execute()
    with pytest.raises(HttpError) as e:
        accounts.get(name=sa["name"]).execute()
    assert status(e) == 404
    assert email not in [a["email"] for a in accounts.list(name=f"projects/{PROJECT}").execute().get("accounts", [])]
    restored = accounts.undelete(name=f"projects/{PROJECT}/serviceAccounts/{sa['uniqueId']}", body={}).execute()
    assert restored["restoredAccount"]["email"] == email
    assert accounts.get(name=sa["name"]).execute()["uniqueId"] == sa["uniqueId"]


def _project_members(server: Server) -> list[str]:
    with server.client() as c:
        policy = c.post(f"/v3/projects/{PROJECT}:getIamPolicy", json={}).json()
    return [m for b in policy.get("bindings", []) for m in b["members"]]


def test_deletion_marks_bindings_and_undelete_restores_them(server: Server, project: str) -> None:
    accounts = iam(server).projects().serviceAccounts()
    sa = _create(server, "marked-sa")
    member = f"serviceAccount:{sa['email']}"
    with server.client() as c:
        policy = c.post(f"/v3/projects/{PROJECT}:getIamPolicy", json={}).json()
        policy["bindings"].append({"role": "roles/viewer", "members": [member]})
        assert c.post(f"/v3/projects/{PROJECT}:setIamPolicy", json={"policy": policy}).status_code == 200
    accounts.delete(name=sa["name"]).execute()
    assert member not in _project_members(server)
    assert f"deleted:{member}?uid={sa['uniqueId']}" in _project_members(server)
    accounts.undelete(name=f"projects/{PROJECT}/serviceAccounts/{sa['uniqueId']}", body={}).execute()
    assert member in _project_members(server)
    assert f"deleted:{member}?uid={sa['uniqueId']}" not in _project_members(server)


def test_email_reuse_is_a_new_identity(server: Server, project: str) -> None:
    accounts = iam(server).projects().serviceAccounts()
    first = _create(server, "reused-sa")
    member = f"serviceAccount:{first['email']}"
    with server.client() as c:
        policy = c.post(f"/v3/projects/{PROJECT}:getIamPolicy", json={}).json()
        policy["bindings"].append({"role": "roles/browser", "members": [member]})
        assert c.post(f"/v3/projects/{PROJECT}:setIamPolicy", json={"policy": policy}).status_code == 200
    accounts.delete(name=first["name"]).execute()
    second = _create(server, "reused-sa")
    assert second["uniqueId"] != first["uniqueId"]
    assert member not in _project_members(server)       # the new account inherits nothing
    with pytest.raises(HttpError) as e:
        accounts.undelete(name=f"projects/{PROJECT}/serviceAccounts/{first['uniqueId']}", body={}).execute()
    assert status(e) == 400 and "new service account" in str(e.value)


@pytest.mark.parametrize("account_id", ["short", "UPPERCASE-name", "1starts-with-digit", "ends-with-hyphen-",
                                        "a" * 31, "under_score", ""])
def test_bad_account_id(server: Server, project: str, account_id: str) -> None:
    with pytest.raises(HttpError) as e:
        _create(server, account_id)
    assert status(e) == 400 and "accountId" in str(e.value)


def test_duplicate_is_409(server: Server, project: str) -> None:
    _create(server, "dup-sa-1")
    with pytest.raises(HttpError) as e:
        _create(server, "dup-sa-1")
    assert status(e) == 409


def test_permission_checked_before_existence(server: Server, project: str) -> None:
    accounts = iam(server, BOB).projects().serviceAccounts()
    for name in (f"projects/{PROJECT}/serviceAccounts/nobody@{PROJECT}.iam.gserviceaccount.com",
                 f"projects/{PROJECT}/serviceAccounts/lifecycle-sa@{PROJECT}.iam.gserviceaccount.com"):
        with pytest.raises(HttpError) as e:
            accounts.get(name=name).execute()
        assert status(e) == 403 and "iam.serviceAccounts.get" in str(e.value)
    with pytest.raises(HttpError) as e:
        iam(server).projects().serviceAccounts().get(
            name=f"projects/{PROJECT}/serviceAccounts/nobody@{PROJECT}.iam.gserviceaccount.com").execute()
    assert status(e) == 404


def test_account_policy_grants_on_the_account_only(server: Server, project: str) -> None:
    sa = _create(server, "policy-sa")
    other = _create(server, "policy-other")
    accounts = iam(server).projects().serviceAccounts()
    policy = accounts.getIamPolicy(resource=sa["name"]).execute()
    policy["bindings"] = [{"role": "roles/iam.serviceAccountViewer", "members": [f"user:{BOB}"]}]
    accounts.setIamPolicy(resource=sa["name"], body={"policy": policy}).execute()
    bob = iam(server, BOB).projects().serviceAccounts()
    assert bob.get(name=sa["name"]).execute()["email"] == sa["email"]
    with pytest.raises(HttpError) as e:
        bob.get(name=other["name"]).execute()
    assert status(e) == 403
    granted = bob.testIamPermissions(resource=sa["name"], body={"permissions": [
        "iam.serviceAccounts.get", "iam.serviceAccounts.actAs"]}).execute()
    assert granted.get("permissions") == ["iam.serviceAccounts.get"]


def test_keys(server: Server, project: str) -> None:
    sa = _create(server, "keys-sa")
    keys = iam(server).projects().serviceAccounts().keys()
    created = keys.create(name=sa["name"], body={}).execute()
    assert created["keyType"] == "USER_MANAGED" and created["keyAlgorithm"] == "KEY_ALG_RSA_2048"
    key_file = json.loads(base64.b64decode(created["privateKeyData"]))
    assert key_file["type"] == "service_account" and key_file["client_email"] == sa["email"]
    assert key_file["token_uri"] == server.url + "/token"
    key_id = created["name"].rsplit("/", 1)[1]
    assert key_file["private_key_id"] == key_id
    listed = keys.list(name=sa["name"]).execute()["keys"]
    assert [k["name"] for k in listed] == [created["name"]] and "privateKeyData" not in listed[0]
    got = keys.get(name=created["name"], publicKeyType="TYPE_X509_PEM_FILE").execute()
    cert = x509.load_pem_x509_certificate(base64.b64decode(got["publicKeyData"]))
    private = serialization.load_pem_private_key(key_file["private_key"].encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert cert.public_key().public_numbers() == private.public_key().public_numbers()  # type: ignore[union-attr]
    keys.disable(name=created["name"], body={}).execute()
    assert keys.get(name=created["name"]).execute()["disabled"] is True
    keys.enable(name=created["name"], body={}).execute()
    keys.delete(name=created["name"]).execute()
    assert keys.list(name=sa["name"]).execute().get("keys", []) == []
    with pytest.raises(HttpError) as e:
        keys.get(name=created["name"]).execute()
    assert status(e) == 404


def test_key_limit(server: Server, project: str) -> None:
    sa = _create(server, "limit-sa")
    keys = iam(server).projects().serviceAccounts().keys()
    for _ in range(10):
        keys.create(name=sa["name"], body={}).execute()
    with pytest.raises(HttpError) as e:
        keys.create(name=sa["name"], body={}).execute()
    assert status(e) == 400 and "10" in str(e.value)


def _cert(not_before: dt.datetime, not_after: dt.datetime, bits: int = 2048) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "uploaded")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))
    return base64.b64encode(cert.public_bytes(serialization.Encoding.PEM)).decode()


def test_upload(server: Server, project: str) -> None:
    sa = _create(server, "upload-sa")
    keys = iam(server).projects().serviceAccounts().keys()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    data = _cert(now - dt.timedelta(days=1), now + dt.timedelta(days=30))
    up = keys.upload(name=sa["name"], body={"publicKeyData": data}).execute()
    assert up["keyOrigin"] == "USER_PROVIDED" and up["keyType"] == "USER_MANAGED"
    assert up["validBeforeTime"] == (now + dt.timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with pytest.raises(HttpError) as e:
        keys.upload(name=sa["name"], body={"publicKeyData": data}).execute()
    assert status(e) == 400
    for bad in ("not base64!", base64.b64encode(b"garbage").decode(),
                _cert(now, now + dt.timedelta(days=1), bits=1024)):
        with pytest.raises(HttpError) as e:
            keys.upload(name=sa["name"], body={"publicKeyData": bad}).execute()
        assert status(e) == 400 and "publicKeyData" in str(e.value)


def test_org_policy_blocks_key_creation(server: Server, project: str) -> None:
    sa = _create(server, "orgpol-sa")
    with server.client() as c:
        r = c.post(f"/v2/projects/{PROJECT}/policies", json={
            "name": f"projects/{PROJECT}/policies/iam.disableServiceAccountKeyCreation",
            "spec": {"rules": [{"enforce": True}]}})
        assert r.status_code == 200, r.text
        try:
            r = c.post(f"/v1/{sa['name']}/keys", json={})
            assert r.status_code == 400 and "iam.disableServiceAccountKeyCreation" in r.text
        finally:
            c.delete(f"/v2/projects/{PROJECT}/policies/iam.disableServiceAccountKeyCreation")
        assert c.post(f"/v1/{sa['name']}/keys", json={}).status_code == 200


def test_key_expiry_from_org_policy(server: Server, project: str) -> None:
    sa = _create(server, "expiry-sa")
    with server.client() as c:
        r = c.post(f"/v2/projects/{PROJECT}/policies", json={
            "name": f"projects/{PROJECT}/policies/iam.serviceAccountKeyExpiryHours",
            "spec": {"rules": [{"values": {"allowedValues": ["24h"]}}]}})
        assert r.status_code == 200, r.text
        try:
            key = c.post(f"/v1/{sa['name']}/keys", json={}).json()
        finally:
            c.delete(f"/v2/projects/{PROJECT}/policies/iam.serviceAccountKeyExpiryHours")
    after = dt.datetime.fromisoformat(key["validAfterTime"].replace("Z", "+00:00"))
    before = dt.datetime.fromisoformat(key["validBeforeTime"].replace("Z", "+00:00"))
    assert before - after == dt.timedelta(hours=24)


def test_managed_accounts_of_a_new_project(server: Server, project: str) -> None:
    with server.client() as c:
        number = c.get(f"/v3/projects/{PROJECT}").json()["name"].split("/")[1]
        listed = c.get(f"/v1/projects/{PROJECT}/serviceAccounts").json()["accounts"]
        emails = [a["email"] for a in listed]
        assert f"{number}-compute@developer.gserviceaccount.com" in emails
        agent = f"service-{number}@cloud-ml.google.com.iam.gserviceaccount.com"
        assert agent not in emails            # service agents are not listed in the project
        policy = c.post(f"/v3/projects/{PROJECT}:getIamPolicy", json={}).json()
        roles = {b["role"]: b["members"] for b in policy["bindings"]}
        assert roles["roles/ml.serviceAgent"] == [f"serviceAccount:{agent}"]
        # keycard init enforces iam.automaticIamGrantsForDefaultServiceAccounts: no Editor for the compute account
        assert "roles/editor" not in roles


@pytest.mark.parametrize("body", [[], "x", {"accountId": 5}, {"accountId": "good-name-1", "serviceAccount": []},
                                  {"accountId": "good-name-2", "serviceAccount": {"displayName": "x" * 101}}])
def test_garbage_is_400(server: Server, project: str, body: Any) -> None:
    with server.client() as c:
        r = c.post(f"/v1/projects/{PROJECT}/serviceAccounts", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_unauthenticated_is_401(server: Server, project: str) -> None:
    r = httpx.get(f"{server.url}/v1/projects/{PROJECT}/serviceAccounts")
    assert r.status_code == 401 and "WWW-Authenticate" in r.headers


def test_system_managed_keys_cannot_be_deleted_or_disabled(server: Server, project: str) -> None:
    sa = _create(server, "sysk-sa")
    with server.client() as c:
        grant = {"bindings": [{"role": "roles/iam.serviceAccountTokenCreator", "members": [f"user:{ALICE}"]}]}
        assert c.post(f"/v1/{sa['name']}:setIamPolicy", json={"policy": grant}).status_code == 200
        r = c.post(f"/v1/projects/-/serviceAccounts/{sa['email']}:signBlob",
                   json={"payload": base64.b64encode(b"x").decode()})
        assert r.status_code == 200, r.text
        key = f"{sa['name']}/keys/{r.json()['keyId']}"
        listed = c.get(f"/v1/{sa['name']}/keys", params={"keyTypes": "SYSTEM_MANAGED"}).json()["keys"]
        assert [k["name"] for k in listed] == [key]
        for r in (c.delete(f"/v1/{key}"), c.post(f"/v1/{key}:disable", json={})):
            assert r.status_code == 400 and "SYSTEM_MANAGED" in r.text
