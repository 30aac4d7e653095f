"""Organization Policy v2 against a live server, driven by Google's discovery client, and domain restricted
sharing enforced on setIamPolicy."""

from __future__ import annotations

import base64
from typing import Any

import google.oauth2.credentials
import pytest
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from conftest import Server
from keycard.store.sql import open_store

ALICE = "alice@example.com"
PROJECT = "orgpol-proj-1"
KEYS = "iam.disableServiceAccountKeyCreation"
DRS = "iam.allowedPolicyMemberDomains"


def orgpolicy(server: Server, user: str = ALICE) -> Any:
    creds = google.oauth2.credentials.Credentials(token=server.token(user))
    return build("orgpolicy", "v2", credentials=creds, static_discovery=True,
                 client_options={"api_endpoint": server.url})


def error(e: HttpError) -> dict[str, Any]:
    import json
    return dict(json.loads(e.content)["error"])


@pytest.fixture(scope="module")
def project(server: Server) -> str:
    r = server.client().post("/v3/projects", json={"projectId": PROJECT, "parent": server.organization})
    assert r.status_code == 200, r.text
    return str(r.json()["response"]["name"])


def test_constraints_and_the_policy_keycard_init_sets(server: Server, project: str) -> None:
    api = orgpolicy(server)
    got = api.projects().constraints().list(parent=f"projects/{PROJECT}").execute()["constraints"]
    names = [c["name"] for c in got]
    assert f"{project}/constraints/{DRS}" in names and f"{project}/constraints/{KEYS}" in names
    drs = next(c for c in got if c["name"].endswith(DRS))
    assert "listConstraint" in drs and drs["constraintDefault"] == "ALLOW"
    page = api.projects().constraints().list(parent=f"projects/{PROJECT}", pageSize=2).execute()
    assert len(page["constraints"]) == 2 and page["nextPageToken"]
    rest = api.projects().constraints().list(parent=f"projects/{PROJECT}", pageSize=100,
                                             pageToken=page["nextPageToken"]).execute()["constraints"]
    assert [c["name"] for c in page["constraints"] + rest] == names
    # keycard init enforces "no automatic grants for default service accounts" on the organization
    pols = api.organizations().policies().list(parent=server.organization).execute()["policies"]
    auto = f"{server.organization}/policies/iam.automaticIamGrantsForDefaultServiceAccounts"
    assert [p["name"] for p in pols] == [auto]
    assert pols[0]["spec"]["rules"] == [{"enforce": True}]
    eff = api.projects().policies().getEffectivePolicy(
        name=f"projects/{PROJECT}/policies/iam.automaticIamGrantsForDefaultServiceAccounts").execute()
    assert eff["spec"]["rules"] == [{"enforce": True}]
    assert api.projects().policies().list(parent=f"projects/{PROJECT}").execute() == {}


def test_policy_lifecycle_with_etags(server: Server, project: str) -> None:
    api = orgpolicy(server)
    pols = api.projects().policies()
    name = f"projects/{PROJECT}/policies/{KEYS}"
    created = pols.create(parent=f"projects/{PROJECT}",
                          body={"name": name, "spec": {"rules": [{"enforce": True}]}}).execute()
    # stored and answered under the project number, whatever the request said
    assert created["name"] == f"{project}/policies/{KEYS}"
    assert created["spec"]["rules"] == [{"enforce": True}] and created["spec"]["updateTime"]
    etag = created["etag"]
    assert base64.b64encode(base64.b64decode(etag)).decode() == etag and created["spec"]["etag"] == etag
    with pytest.raises(HttpError) as err:
        pols.create(parent=f"projects/{PROJECT}", body={"name": name, "spec": {"rules": [{"enforce": False}]}}
                    ).execute()
    assert err.value.status_code == 409 and error(err.value)["status"] == "ALREADY_EXISTS"
    assert pols.get(name=name).execute() == created
    assert pols.get(name=created["name"]).execute() == created            # by number, too
    assert pols.getEffectivePolicy(name=name).execute() == {"name": f"{project}/policies/{KEYS}",
                                                            "spec": {"rules": [{"enforce": True}]}}
    org_eff = api.organizations().policies().getEffectivePolicy(
        name=f"{server.organization}/policies/{KEYS}").execute()
    assert org_eff["spec"]["rules"] == [{"enforce": False}]               # the constraint's default
    assert [p["name"] for p in pols.list(parent=f"projects/{PROJECT}").execute()["policies"]] == [created["name"]]

    # update: the current etag works, a stale one is refused with 409 ABORTED and changes nothing
    updated = pols.patch(name=name, body={"name": name, "etag": etag,
                                          "spec": {"rules": [{"enforce": False}]}}).execute()
    assert updated["spec"]["rules"] == [{"enforce": False}] and updated["etag"] != etag
    with pytest.raises(HttpError) as err:
        pols.patch(name=name, body={"name": name, "etag": etag, "spec": {"rules": [{"enforce": True}]}}).execute()
    assert err.value.status_code == 409 and error(err.value)["status"] == "ABORTED"
    assert pols.get(name=name).execute()["spec"]["rules"] == [{"enforce": False}]
    # updateMask: only the dry-run spec changes
    masked = pols.patch(name=name, updateMask="dryRunSpec", body={
        "name": name, "spec": {"rules": [{"enforce": True}]}, "dryRunSpec": {"rules": [{"enforce": True}]}}).execute()
    assert masked["spec"]["rules"] == [{"enforce": False}] and masked["dryRunSpec"]["rules"] == [{"enforce": True}]
    with pytest.raises(HttpError) as err:
        pols.patch(name=f"projects/{PROJECT}/policies/{DRS}", body={"spec": {"rules": [{"allowAll": True}]}}
                   ).execute()
    assert err.value.status_code == 404

    # delete: stale etag refused; then gone
    with pytest.raises(HttpError) as err:
        pols.delete(name=name, etag=etag).execute()
    assert err.value.status_code == 409 and error(err.value)["status"] == "ABORTED"
    assert pols.delete(name=name, etag=masked["etag"]).execute() == {}
    with pytest.raises(HttpError) as err:
        pols.get(name=name).execute()
    assert err.value.status_code == 404
    assert pols.getEffectivePolicy(name=name).execute()["spec"]["rules"] == [{"enforce": False}]

    # every mutation left an Admin Activity entry
    store = open_store(server.database)
    try:
        entries = [e.entry["protoPayload"] for e in store.audit(newest_first=True, limit=50)]
    finally:
        store.close()
    methods = [p["methodName"] for p in entries if p["serviceName"] == "orgpolicy.googleapis.com"]
    for verb in ("CreatePolicy", "UpdatePolicy", "DeletePolicy"):
        assert f"google.cloud.orgpolicy.v2.OrgPolicy.{verb}" in methods


def test_permissions_are_checked_before_existence(server: Server, project: str) -> None:
    eve = server.client("eve@example.com")
    for method, path, perm in [
        ("GET", f"/v2/projects/{PROJECT}/policies/{KEYS}", "orgpolicy.policy.get"),
        ("GET", f"/v2/projects/{PROJECT}/policies/{KEYS}:getEffectivePolicy", "orgpolicy.policy.get"),
        ("GET", f"/v2/projects/{PROJECT}/policies", "orgpolicy.policies.list"),
        ("GET", f"/v2/projects/{PROJECT}/constraints", "orgpolicy.constraints.list"),
        ("POST", f"/v2/projects/{PROJECT}/policies", "orgpolicy.policies.create"),
        ("PATCH", f"/v2/projects/{PROJECT}/policies/{KEYS}", "orgpolicy.policies.update"),
        ("DELETE", f"/v2/projects/{PROJECT}/policies/{KEYS}", "orgpolicy.policies.delete"),
        ("GET", "/v2/projects/no-such-proj-9/policies", "orgpolicy.policies.list"),
        ("GET", "/v2/folders/123/policies", "orgpolicy.policies.list"),
    ]:
        r = eve.request(method, path, json={"spec": {}} if method in ("POST", "PATCH") else None)
        assert r.status_code == 403, (path, r.text)
        err = r.json()["error"]
        assert err["details"][0]["metadata"]["permission"] == perm and perm in err["message"]


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "projects/PROJECT/policies/iam.noSuchConstraint", "spec": {}}, "policy.name"),
    ({"name": f"projects/PROJECT/policies/{KEYS}", "spec": {"rules": [{"values": {"allowedValues": ["x"]}}]}},
     "policy.spec.rules[0].values"),
    ({"name": f"projects/PROJECT/policies/{DRS}", "spec": {"rules": [{"values": {"allowedValues": ["not a domain"]}}]}},
     "policy.spec.rules[0].values.allowedValues[0]"),
    ({"name": f"projects/other-proj-1/policies/{KEYS}", "spec": {"rules": [{"enforce": True}]}}, "policy.name"),
    ({"spec": {"rules": [{"enforce": True}]}}, "policy.name"),
])
def test_bad_policies_are_400_naming_the_field(server: Server, project: str, body: dict[str, Any],
                                                field: str) -> None:
    if "name" in body:
        body = {**body, "name": body["name"].replace("PROJECT", PROJECT)}
    r = server.client().post(f"/v2/projects/{PROJECT}/policies", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["status"] == "INVALID_ARGUMENT" and err["details"][0]["metadata"]["field"] == field, err


def _grant(server: Server, project: str, member: str) -> Any:
    c = server.client()
    pol = c.post(f"/v3/{project}:getIamPolicy", json={}).json()
    pol.setdefault("bindings", []).append({"role": "roles/viewer", "members": [member]})
    return c.post(f"/v3/{project}:setIamPolicy", json={"policy": pol})


def test_domain_restricted_sharing_on_set_iam_policy(server: Server, project: str) -> None:
    api = orgpolicy(server)
    # before any restriction, anyone may be granted a role
    assert _grant(server, project, "user:early@elsewhere.test").status_code == 200
    api.projects().policies().create(parent=f"projects/{PROJECT}", body={
        "name": f"projects/{PROJECT}/policies/{DRS}",
        "spec": {"rules": [{"values": {"allowedValues": ["example.com"]}}]}}).execute()
    r = _grant(server, project, "user:x@evil.test")
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["status"] == "FAILED_PRECONDITION"
    assert "do not belong to a permitted customer" in err["message"] and "user:x@evil.test" in err["message"]
    assert "user:early@elsewhere.test" not in err["message"]        # not retroactive
    assert _grant(server, project, "allUsers").status_code == 400
    assert _grant(server, project, "user:y@example.com").status_code == 200
    eff = api.projects().policies().getEffectivePolicy(name=f"projects/{PROJECT}/policies/{DRS}").execute()
    assert eff["spec"]["rules"] == [{"values": {"allowedValues": ["example.com"]}}]


def test_domain_restriction_by_customer_id_is_inherited_from_a_folder(server: Server) -> None:
    c = server.client()
    customer = c.get(f"/v3/{server.organization}").json()["directoryCustomerId"]
    folder = c.post("/v3/folders", json={"parent": server.organization, "displayName": "drs"}).json()
    folder_name = folder["response"]["name"]
    r = c.post("/v3/projects", json={"projectId": "orgpol-proj-2", "parent": folder_name})
    assert r.status_code == 200, r.text
    child = r.json()["response"]["name"]
    r = c.post(f"/v2/{folder_name}/policies", json={
        "name": f"{folder_name}/policies/{DRS}", "spec": {"rules": [{"values": {"allowedValues": [customer]}}]}})
    assert r.status_code == 200, r.text
    assert _grant(server, child, "user:x@evil.test").status_code == 400
    assert _grant(server, child, "group:team@example.com").status_code == 200     # example.com → its customer id
    eff = c.get(f"/v2/projects/orgpol-proj-2/policies/{DRS}:getEffectivePolicy").json()
    assert eff == {"name": f"{child}/policies/{DRS}",
                   "spec": {"rules": [{"values": {"allowedValues": [customer]}}]}}
    # the folder itself is restricted, the organization above it is not
    assert _grant(server, folder_name, "user:z@evil.test").status_code == 400
    assert _grant(server, server.organization, "user:z@evil.test").status_code == 200
