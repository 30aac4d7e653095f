"""IAM v2 deny policies against a live server, driven by Google's discovery and GAPIC REST clients."""

from __future__ import annotations

import base64
from typing import Any

import google.oauth2.credentials
import httpx
import pytest
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.cloud import iam_v2
from google.cloud.iam_v2 import types as v2types
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from conftest import Server

ALICE = "alice@example.com"
BOB = "bob@example.com"
PROJECT = "deny-proj-1"
PARENT = f"policies/cloudresourcemanager.googleapis.com%2Fprojects%2F{PROJECT}/denypolicies"
DELETE = "cloudresourcemanager.googleapis.com/projects.delete"


def creds(server: Server, user: str = ALICE) -> google.oauth2.credentials.Credentials:
    return google.oauth2.credentials.Credentials(token=server.token(user))


def iam(server: Server, user: str = ALICE) -> Any:
    return build("iam", "v2", credentials=creds(server, user), static_discovery=True,
                 client_options={"api_endpoint": server.url})


def http(server: Server, user: str = ALICE) -> httpx.Client:
    return server.client(user)


def gapic(server: Server, user: str = ALICE) -> iam_v2.PoliciesClient:
    return iam_v2.PoliciesClient(transport="rest", client_options=ClientOptions(api_endpoint=server.url),
                                 credentials=creds(server, user))


def no_delete_rule(**extra: Any) -> dict[str, Any]:
    return {"description": "nobody but alice deletes this project",
            "denyRule": {"deniedPrincipals": ["principalSet://goog/public:all"],
                         "exceptionPrincipals": [f"principal://goog/subject/{ALICE}"],
                         "deniedPermissions": [DELETE], **extra}}


def can(server: Server, user: str, permission: str = "resourcemanager.projects.delete") -> bool:
    r = http(server, user).post(f"/v3/projects/{PROJECT}:testIamPermissions", json={"permissions": [permission]})
    assert r.status_code == 200, r.text
    return permission in r.json().get("permissions", [])


@pytest.fixture(scope="module")
def project(server: Server) -> str:
    c = http(server)
    r = c.post("/v3/projects", json={"projectId": PROJECT, "parent": server.organization})
    assert r.status_code == 200, r.text
    number = r.json()["response"]["name"].split("/")[1]
    pol = c.post(f"/v3/projects/{PROJECT}:getIamPolicy", json={}).json()
    pol["bindings"].append({"role": "roles/owner", "members": [f"user:{BOB}"]})
    assert c.post(f"/v3/projects/{PROJECT}:setIamPolicy", json={"policy": pol}).status_code == 200
    return number


def test_deny_policy_lifecycle_with_the_discovery_client(server: Server, project: str) -> None:
    api = iam(server)
    assert can(server, BOB) and can(server, ALICE)
    op = api.policies().createPolicy(parent=PARENT, policyId="no-delete", body={
        "displayName": "Protect the project", "rules": [no_delete_rule()]}).execute()
    name = f"policies/cloudresourcemanager.googleapis.com%2Fprojects%2F{project}/denypolicies/no-delete"
    assert op["done"] is True and op["name"].startswith(name + "/operations/")
    assert op["metadata"]["@type"] == "type.googleapis.com/google.iam.v2.PolicyOperationMetadata"
    assert op["metadata"]["createTime"]
    policy = op["response"]
    assert policy["@type"] == "type.googleapis.com/google.iam.v2.Policy"
    assert policy["name"] == name and policy["kind"] == "DenyPolicy" and policy["uid"]
    assert policy["displayName"] == "Protect the project" and policy["createTime"] and policy["updateTime"]
    assert base64.b64encode(base64.b64decode(policy["etag"])).decode() == policy["etag"]
    assert policy["rules"][0]["denyRule"]["deniedPermissions"] == [DELETE]
    # the engine denies at once: bob (owner) cannot delete the project, alice (the exception) can
    assert not can(server, BOB) and can(server, ALICE)
    assert can(server, BOB, "resourcemanager.projects.get")
    # get and list, by project id or number, with %2F or literal slashes in the attachment
    got = api.policies().get(name=f"{PARENT}/no-delete").execute()
    assert got["etag"] == policy["etag"] and got["name"] == name and "attachmentPoint" not in got
    by_number = http(server).get(f"/v2/{name}").json()
    assert by_number["uid"] == policy["uid"]
    slashes = http(server).get(f"/v2/policies/cloudresourcemanager.googleapis.com/projects/{PROJECT}"
                                  "/denypolicies/no-delete")
    assert slashes.status_code == 200 and slashes.json()["uid"] == policy["uid"]
    listed = api.policies().listPolicies(parent=PARENT).execute()
    assert [p["name"] for p in listed["policies"]] == [name]
    # the stored operation can be read back
    assert http(server).get(f"/v2/{op['name']}").json()["response"]["name"] == name
    # update: a stale etag is refused, the current one works
    body = dict(got, rules=[no_delete_rule(exceptionPrincipals=[])])
    body["rules"][0]["denyRule"]["exceptionPrincipals"] = [f"principal://goog/subject/{BOB}"]
    stale = dict(body, etag=base64.b64encode(b"kc" + (1).to_bytes(8, "big")).decode())
    with pytest.raises(HttpError) as err:
        api.policies().update(name=f"{PARENT}/no-delete", body=stale).execute()
    assert err.value.status_code == 409 and "ABORTED" in err.value.content.decode()
    assert not can(server, BOB)
    op = api.policies().update(name=f"{PARENT}/no-delete", body=body).execute()
    updated = op["response"]
    assert op["done"] and updated["etag"] != got["etag"] and updated["createTime"] == got["createTime"]
    assert can(server, BOB) and not can(server, ALICE)
    # delete with a stale etag fails, with the current one works; the deny stops at once
    with pytest.raises(HttpError) as err:
        api.policies().delete(name=f"{PARENT}/no-delete", etag=got["etag"]).execute()
    assert err.value.status_code == 409
    op = api.policies().delete(name=f"{PARENT}/no-delete", etag=updated["etag"]).execute()
    assert op["done"] and op["response"]["deleteTime"]
    assert can(server, ALICE)
    with pytest.raises(HttpError) as err:
        api.policies().get(name=f"{PARENT}/no-delete").execute()
    assert err.value.status_code == 404
    assert api.policies().listPolicies(parent=PARENT).execute().get("policies", []) == []


def test_gapic_rest_client_and_the_deny_in_action(server: Server, project: str) -> None:
    client = gapic(server)
    rule = v2types.PolicyRule(description="only alice deletes", deny_rule=v2types.DenyRule(
        denied_principals=["principalSet://goog/public:all"],
        exception_principals=[f"principal://goog/subject/{ALICE}"],
        denied_permissions=[DELETE]))
    created = client.create_policy(parent=PARENT, policy=v2types.Policy(display_name="gapic", rules=[rule]),
                                   policy_id="gapic-deny").result()
    assert created.name == (f"policies/cloudresourcemanager.googleapis.com%2Fprojects%2F{project}"
                            "/denypolicies/gapic-deny")
    assert created.kind == "DenyPolicy" and created.uid and created.etag
    got = client.get_policy(name=created.name)
    assert got.etag == created.etag and list(got.rules[0].deny_rule.denied_permissions) == [DELETE]
    assert [p.name for p in client.list_policies(parent=PARENT)] == [created.name]
    # bob, an owner, cannot delete the project; the error names the permission
    bob = http(server, BOB)
    r = bob.delete(f"/v3/projects/{PROJECT}")
    assert r.status_code == 403 and "resourcemanager.projects.delete" in r.text
    # update through GAPIC (%252F on the wire), then a stale update is a Conflict
    got.display_name = "gapic, renamed"
    updated = client.update_policy(request={"policy": got}).result()
    assert updated.display_name == "gapic, renamed" and updated.etag != got.etag
    with pytest.raises(gexc.Conflict):
        client.update_policy(request={"policy": got}).result()
    # strangers get 403 whether or not the policy exists
    eve = gapic(server, "eve@example.com")
    for pid in ("gapic-deny", "no-such-policy"):
        with pytest.raises(gexc.Forbidden) as err:
            eve.get_policy(name=f"{PARENT}/{pid}")
        assert err.value.reason == "IAM_PERMISSION_DENIED"
    # alice, the exception, can delete the project
    assert not can(server, BOB) and can(server, ALICE)
    deleted = client.delete_policy(request={"name": created.name, "etag": updated.etag}).result()
    assert deleted.name == created.name
    assert can(server, BOB)
    client.create_policy(parent=PARENT, policy=v2types.Policy(rules=[rule]), policy_id="gapic-deny-2").result()
    assert not can(server, BOB)
    r = http(server).delete(f"/v3/projects/{PROJECT}")
    assert r.status_code == 200, r.text
    assert http(server).post(f"/v3/projects/{PROJECT}:undelete", json={}).status_code == 200
    assert http(server).delete(f"/v2/{PARENT}/gapic-deny-2").status_code == 200
    assert can(server, BOB)


@pytest.mark.parametrize(("query", "body", "field", "hint"), [
    ({"policyId": "v1-style"}, {"rules": [{"denyRule": {
        "deniedPrincipals": ["principalSet://goog/public:all", "user:x@example.com"],
        "deniedPermissions": [DELETE]}}]},
     "policy.rules[0].denyRule.deniedPrincipals[1]", "principal://goog/subject/x@example.com"),
    ({"policyId": "v1-perm"}, {"rules": [{"denyRule": {"deniedPrincipals": ["principalSet://goog/public:all"],
                                                       "deniedPermissions": ["resourcemanager.projects.delete"]}}]},
     "policy.rules[0].denyRule.deniedPermissions[0]", "SERVICE.googleapis.com/RESOURCE.VERB"),
    ({"policyId": "Bad_Id"}, {"rules": []}, "policyId", "lower-case"),
    ({"policyId": "too-many"}, {"rules": [no_delete_rule()] * 501}, "policy.rules", "500"),
    ({"policyId": "bad-cond"}, {"rules": [no_delete_rule(denialCondition={"expression": "((("})]},
     "policy.rules[0].denyRule.denialCondition.expression", ""),
])
def test_bad_input_is_400_naming_the_field(server: Server, project: str, query: dict[str, str],
                                           body: dict[str, Any], field: str, hint: str) -> None:
    r = http(server).post(f"/v2/{PARENT}", params=query, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["status"] == "INVALID_ARGUMENT" and field in err["message"] and hint in err["message"]
    assert err["details"][0]["metadata"]["field"] == field


def test_attachment_points_and_permissions(server: Server, project: str) -> None:
    c = http(server)
    org = server.organization.split("/")[1]
    org_parent = f"policies/cloudresourcemanager.googleapis.com%2Forganizations%2F{org}/denypolicies"
    r = c.post(f"/v2/{org_parent}", params={"policyId": "org-deny"}, json={"rules": [no_delete_rule()]})
    assert r.status_code == 200, r.text
    assert r.json()["response"]["name"] == f"{org_parent}/org-deny"
    assert not can(server, BOB)              # inherited from the organization
    r = c.delete(f"/v2/{org_parent}/org-deny")
    assert r.status_code == 200 and can(server, BOB)
    # a stranger gets 403, existing or not; bob, an owner, may read deny policies but not write them
    bob = http(server, BOB)
    eve = http(server, "eve@example.com")
    assert c.post(f"/v2/{PARENT}", params={"policyId": "keep"}, json={"rules": [no_delete_rule()]}).status_code == 200
    for path in (f"/v2/{PARENT}", f"/v2/{PARENT}/keep", f"/v2/{PARENT}/nope"):
        assert bob.get(path).status_code == (404 if path.endswith("nope") else 200)
        r = eve.get(path)
        assert r.status_code == 403 and "iam.denypolicies" in r.text, (path, r.text)
    assert bob.post(f"/v2/{PARENT}", params={"policyId": "bobs"}, json={"rules": []}).status_code == 403
    assert bob.delete(f"/v2/{PARENT}/keep").status_code == 403
    # unknown projects and nonsense attachments
    assert c.get("/v2/policies/cloudresourcemanager.googleapis.com%2Fprojects%2Fno-such-proj-9/denypolicies"
                 ).status_code == 403
    for bad in ("storage.googleapis.com%2Fb%2Fx", "cloudresourcemanager.googleapis.com%2Fprojects%2Fp%2Fx",
                "%ZZ", "cloudresourcemanager.googleapis.com%2Fprojects%2FUP"):
        r = c.get(f"/v2/policies/{bad}/denypolicies")
        assert r.status_code == 400, (bad, r.text)
    assert c.post(f"/v2/{PARENT}", params={"policyId": "keep"},
                  json={"rules": [no_delete_rule()]}).status_code == 409
    # paging
    for i in range(3):
        assert c.post(f"/v2/{PARENT}", params={"policyId": f"page-{i}"},
                      json={"rules": [no_delete_rule()]}).status_code == 200
    seen: list[str] = []
    token = ""
    while True:
        page = c.get(f"/v2/{PARENT}", params={"pageSize": 2, "pageToken": token}).json()
        seen += [p["name"].rsplit("/", 1)[1] for p in page.get("policies", [])]
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert seen == ["keep", "page-0", "page-1", "page-2"]
    assert c.get(f"/v2/{PARENT}", params={"pageToken": "!!"}).status_code == 400
