"""Policy Troubleshooter v1 and v3 against a live server, driven by Google's discovery and GAPIC REST clients."""

from __future__ import annotations

from typing import Any

import google.oauth2.credentials
import pytest
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.cloud import policytroubleshooter_iam_v3 as pt_v3
from google.cloud import policytroubleshooter_v1 as pt_v1
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from conftest import Server

ALICE = "alice@example.com"
BOB = "bob@example.com"
CAROL = "carol@example.com"
PROJECT = "ts-proj-1"
RESOURCE = f"//cloudresourcemanager.googleapis.com/projects/{PROJECT}"
MODEL = f"//ml.googleapis.com/projects/{PROJECT}/models/m1"


def creds(server: Server, user: str) -> google.oauth2.credentials.Credentials:
    return google.oauth2.credentials.Credentials(token=server.token(user))


def discovery(server: Server, version: str, user: str = ALICE) -> Any:
    return build("policytroubleshooter", version, credentials=creds(server, user), static_discovery=True,
                 client_options={"api_endpoint": server.url})


def tuple_(principal: str, permission: str, resource: str = RESOURCE) -> dict[str, Any]:
    return {"accessTuple": {"principal": principal, "fullResourceName": resource, "permission": permission}}


@pytest.fixture(scope="module")
def project(server: Server) -> str:
    """Bob owns the project; a deny policy takes projects.delete away from him."""
    c = server.client()
    r = c.post("/v3/projects", json={"projectId": PROJECT, "parent": server.organization})
    assert r.status_code == 200, r.text
    pol = c.post(f"/v3/projects/{PROJECT}:getIamPolicy", json={}).json()
    pol["bindings"].append({"role": "roles/owner", "members": [f"user:{BOB}"]})
    assert c.post(f"/v3/projects/{PROJECT}:setIamPolicy", json={"policy": pol}).status_code == 200
    r = c.post(f"/v2/policies/cloudresourcemanager.googleapis.com%2Fprojects%2F{PROJECT}/denypolicies",
               params={"policyId": "no-delete-bob"},
               json={"rules": [{"denyRule": {"deniedPrincipals": [f"principal://goog/subject/{BOB}"],
                                             "deniedPermissions": ["cloudresourcemanager.googleapis.com/"
                                                                   "projects.delete"]}}]})
    assert r.status_code == 200, r.text
    return str(r.json()["response"]["name"])


def test_v1_granted_and_denied_with_the_discovery_client(server: Server, project: str) -> None:
    iam = discovery(server, "v1").iam()
    granted = iam.troubleshoot(body=tuple_(BOB, "ml.models.get")).execute()
    assert granted["access"] == "GRANTED"
    mine = next(p for p in granted["explainedPolicies"]
                if p["fullResourceName"].startswith("//cloudresourcemanager.googleapis.com/projects/"))
    owner = next(b for b in mine["bindingExplanations"]
                 if b["role"] == "roles/owner" and f"user:{BOB}" in b["memberships"])
    assert owner["access"] == "GRANTED" and owner["memberships"][f"user:{BOB}"]["membership"] == "MEMBERSHIP_INCLUDED"
    # allowed by roles/owner, taken away by the deny policy
    denied = iam.troubleshoot(body=tuple_(BOB, "resourcemanager.projects.delete")).execute()
    assert denied["access"] == "NOT_GRANTED"
    assert any(d["policy"] == project for d in denied["keycardDenyExplanation"])
    # never granted at all
    assert iam.troubleshoot(body=tuple_(CAROL, "ml.models.get")).execute()["access"] == "NOT_GRANTED"


def test_v3_allow_and_deny_explanations_with_the_discovery_client(server: Server, project: str) -> None:
    iam = discovery(server, "v3").iam()
    out = iam.troubleshoot(body=tuple_(BOB, "resourcemanager.projects.delete")).execute()
    assert out["overallAccessState"] == "CANNOT_ACCESS"
    assert out["allowPolicyExplanation"]["allowAccessState"] == "ALLOW_ACCESS_STATE_GRANTED"
    assert out["denyPolicyExplanation"]["denyAccessState"] == "DENY_ACCESS_STATE_DENIED"
    pol = out["denyPolicyExplanation"]["explainedResources"][0]["explainedPolicies"][0]["policy"]
    assert pol["name"] == project
    ok = iam.troubleshoot(body=tuple_(BOB, "cloudresourcemanager.googleapis.com/projects.get")).execute()
    assert ok["overallAccessState"] == "CAN_ACCESS"


def test_gapic_rest_clients(server: Server, project: str) -> None:
    opts = ClientOptions(api_endpoint=server.url)
    v1 = pt_v1.IamCheckerClient(transport="rest", client_options=opts, credentials=creds(server, ALICE))
    r1 = v1.troubleshoot_iam_policy(request={"access_tuple": {
        "principal": BOB, "full_resource_name": RESOURCE, "permission": "ml.models.get"}})
    assert r1.access == pt_v1.AccessState.GRANTED
    assert any(p.full_resource_name.startswith("//cloudresourcemanager.googleapis.com/projects/")
               for p in r1.explained_policies)
    v3 = pt_v3.PolicyTroubleshooterClient(transport="rest", client_options=opts, credentials=creds(server, ALICE))
    r3 = v3.troubleshoot_iam_policy(request={"access_tuple": {
        "principal": BOB, "full_resource_name": RESOURCE, "permission": "resourcemanager.projects.delete"}})
    assert r3.overall_access_state == pt_v3.TroubleshootIamPolicyResponse.OverallAccessState.CANNOT_ACCESS
    assert r3.deny_policy_explanation.deny_access_state == pt_v3.DenyAccessState.DENY_ACCESS_STATE_DENIED
    with pytest.raises(gexc.Forbidden) as err:
        pt_v3.PolicyTroubleshooterClient(transport="rest", client_options=opts,
                                         credentials=creds(server, CAROL)).troubleshoot_iam_policy(
            request={"access_tuple": {"principal": BOB, "full_resource_name": RESOURCE,
                                      "permission": "ml.models.get"}})
    assert err.value.reason == "IAM_PERMISSION_DENIED"


def test_anyone_may_troubleshoot_their_own_access(server: Server, project: str) -> None:
    for version in ("v1", "v3"):
        iam = discovery(server, version, CAROL).iam()
        out = iam.troubleshoot(body=tuple_(CAROL, "ml.models.get")).execute()
        assert out.get("access", out.get("overallAccessState")) in ("NOT_GRANTED", "CANNOT_ACCESS")
        out = iam.troubleshoot(body=tuple_(f"user:{CAROL}", "ml.models.get", MODEL)).execute()
        assert out.get("access", out.get("overallAccessState")) in ("NOT_GRANTED", "CANNOT_ACCESS")
    bob = discovery(server, "v1", BOB).iam()
    assert bob.troubleshoot(body=tuple_(BOB, "resourcemanager.projects.delete")).execute()["access"] == "NOT_GRANTED"


@pytest.mark.parametrize(("resource", "permission"), [
    (RESOURCE, "resourcemanager.projects.getIamPolicy"),
    (MODEL, "ml.models.getIamPolicy"),
    (MODEL + "/versions/v1", "ml.models.getIamPolicy"),
    ("//storage.googleapis.com/projects/_/buckets/ts-bucket-1/objects/a/b.txt", "storage.buckets.getIamPolicy"),
    (f"//iam.googleapis.com/projects/{PROJECT}/serviceAccounts/sa@{PROJECT}.iam.gserviceaccount.com",
     "iam.serviceAccounts.getIamPolicy"),
    (f"//ml.googleapis.com/projects/{PROJECT}/operations/op1", "resourcemanager.projects.getIamPolicy"),
])
def test_a_stranger_needs_get_iam_policy_on_the_resource(server: Server, project: str, resource: str,
                                                         permission: str) -> None:
    for version in ("v1", "v3"):
        with pytest.raises(HttpError) as err:
            discovery(server, version, CAROL).iam().troubleshoot(body=tuple_(BOB, "ml.models.get", resource)
                                                                 ).execute()
        assert err.value.status_code == 403
        assert err.value.error_details[0]["metadata"]["permission"] == permission
        assert permission in str(err.value)
    if resource.startswith("//storage."):
        return                  # a bucket keycard does not hold lies under no project
    # the owner of the project can troubleshoot anyone there
    out = discovery(server, "v1", BOB).iam().troubleshoot(body=tuple_(CAROL, "ml.models.get", resource)).execute()
    assert out["access"] == "NOT_GRANTED"


@pytest.mark.parametrize(("body", "field"), [
    ({}, "accessTuple"),
    ({"accessTuple": {"fullResourceName": RESOURCE, "permission": "ml.models.get"}}, "accessTuple.principal"),
    ({"accessTuple": {"principal": BOB, "fullResourceName": "not a name", "permission": "ml.models.get"}},
     "accessTuple.fullResourceName"),
    ({"accessTuple": {"principal": BOB, "fullResourceName": RESOURCE, "permission": "nope"}},
     "accessTuple.permission"),
])
def test_bad_requests_are_400_naming_the_field(server: Server, body: dict[str, Any], field: str) -> None:
    for version in ("v1", "v3"):
        r = server.client().post(f"/{version}/iam:troubleshoot", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["details"][0]["metadata"]["field"] == field
