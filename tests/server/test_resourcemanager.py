"""Resource Manager v3 against a live server, driven by Google's own client libraries."""

from __future__ import annotations

import base64

import google.oauth2.credentials
import pytest
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.cloud import resourcemanager_v3
from google.iam.v1 import iam_policy_pb2, policy_pb2
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from conftest import Server


def creds(server: Server, user: str = "alice@example.com") -> google.oauth2.credentials.Credentials:
    return google.oauth2.credentials.Credentials(token=server.token(user))


def crm(server: Server, user: str = "alice@example.com"):  # type: ignore[no-untyped-def]
    return build("cloudresourcemanager", "v3", credentials=creds(server, user), static_discovery=True,
                 client_options={"api_endpoint": server.url})


def test_hierarchy_and_conditional_policies_with_the_discovery_client(server: Server) -> None:
    api = crm(server)
    orgs = api.organizations().search().execute()["organizations"]
    assert [o["name"] for o in orgs] == [server.organization]
    op = api.folders().create(body={"parent": server.organization, "displayName": "ml-platform"}).execute()
    assert op["done"] and op["response"]["@type"].endswith("v3.Folder")
    folder = op["response"]["name"]
    op = api.projects().create(body={"projectId": "ml-prod-1", "parent": folder, "displayName": "ML prod",
                                     "labels": {"env": "prod"}}).execute()
    project = op["response"]
    assert project["projectId"] == "ml-prod-1" and project["name"].startswith("projects/")
    # ids and numbers name the same project
    assert api.projects().get(name="projects/ml-prod-1").execute()["name"] == project["name"]
    assert api.projects().get(name=project["name"]).execute()["projectId"] == "ml-prod-1"
    listed = api.projects().list(parent=folder).execute()["projects"]
    assert [p["projectId"] for p in listed] == ["ml-prod-1"]
    found = api.projects().search(query="labels.env:prod").execute()["projects"]
    assert [p["projectId"] for p in found] == ["ml-prod-1"]
    # the creator owns the new project
    pol = api.projects().getIamPolicy(resource="projects/ml-prod-1", body={}).execute()
    assert {"role": "roles/owner", "members": ["user:alice@example.com"]} in pol["bindings"]
    assert base64.b64decode(pol["etag"])          # canonical base64
    # conditional binding: needs version 3, and reading it back needs version 3
    pol["version"] = 3
    pol["bindings"].append({"role": "roles/ml.developer", "members": ["user:bob@example.com"],
                            "condition": {"title": "2027", "expression":
                                          'request.time < timestamp("2027-01-01T00:00:00Z")'}})
    new = api.projects().setIamPolicy(resource="projects/ml-prod-1", body={"policy": pol}).execute()
    assert new["version"] == 3 and new["etag"] != pol["etag"]
    with pytest.raises(HttpError) as err:
        api.projects().getIamPolicy(resource="projects/ml-prod-1", body={}).execute()
    assert err.value.status_code == 400
    got = api.projects().getIamPolicy(resource="projects/ml-prod-1",
                                      body={"options": {"requestedPolicyVersion": 3}}).execute()
    assert got["bindings"] == new["bindings"]
    # stale etag: 409 ABORTED, nothing written
    with pytest.raises(HttpError) as err:
        api.projects().setIamPolicy(resource="projects/ml-prod-1", body={"policy": pol}).execute()
    assert err.value.status_code == 409 and "concurrent policy changes" in str(err.value)
    # bob's conditional grant works at once
    bob = crm(server, "bob@example.com")
    perms = bob.projects().testIamPermissions(resource="projects/ml-prod-1", body={
        "permissions": ["ml.jobs.create", "ml.jobs.cancel", "resourcemanager.projects.get"]}).execute()
    assert perms["permissions"] == ["ml.jobs.create", "resourcemanager.projects.get"]


def test_permission_denied_names_permission_and_resource_and_hides_existence(server: Server) -> None:
    eve = crm(server, "eve@example.com")
    seen = []
    for name in ("projects/ml-prod-1", "projects/no-such-project-x"):
        with pytest.raises(HttpError) as err:
            eve.projects().get(name=name).execute()
        assert err.value.status_code == 403
        seen.append(err.value.error_details)
        assert "resourcemanager.projects.get" in str(err.value) and "(or it may not exist)" in str(err.value)
    assert seen[0][0]["reason"] == seen[1][0]["reason"] == "IAM_PERMISSION_DENIED"
    anon = server.client(None).get("/v3/projects/ml-prod-1")
    assert anon.status_code == 401 and anon.headers["www-authenticate"].startswith("Bearer")


def test_gapic_rest_clients_round_trip(server: Server) -> None:
    opts = ClientOptions(api_endpoint=server.url)
    projects = resourcemanager_v3.ProjectsClient(transport="rest", client_options=opts, credentials=creds(server))
    folders = resourcemanager_v3.FoldersClient(transport="rest", client_options=opts, credentials=creds(server))
    folder = folders.create_folder(folder=resourcemanager_v3.Folder(parent=server.organization,
                                                                   display_name="gapic")).result()
    assert folder.display_name == "gapic" and folder.state == resourcemanager_v3.Folder.State.ACTIVE
    project = projects.create_project(project=resourcemanager_v3.Project(
        project_id="gapic-proj-1", parent=folder.name, display_name="gapic")).result()
    assert project.project_id == "gapic-proj-1"
    policy = projects.get_iam_policy(request=iam_policy_pb2.GetIamPolicyRequest(
        resource="projects/gapic-proj-1", options={"requested_policy_version": 3}))
    policy.bindings.append(policy_pb2.Binding(role="roles/viewer", members=["group:readers@example.com"]))
    updated = projects.set_iam_policy(request=iam_policy_pb2.SetIamPolicyRequest(
        resource="projects/gapic-proj-1", policy=policy))
    assert any(b.role == "roles/viewer" for b in updated.bindings)
    with pytest.raises(gexc.Conflict):      # the old etag is stale now
        projects.set_iam_policy(request=iam_policy_pb2.SetIamPolicyRequest(resource="projects/gapic-proj-1",
                                                                           policy=policy))
    moved = projects.move_project(name=project.name, destination_parent=server.organization).result()
    assert moved.parent == server.organization
    deleted = projects.delete_project(name=project.name).result()
    assert deleted.state == resourcemanager_v3.Project.State.DELETE_REQUESTED
    restored = projects.undelete_project(name=project.name).result()
    assert restored.state == resourcemanager_v3.Project.State.ACTIVE
    with pytest.raises(gexc.Forbidden):
        resourcemanager_v3.ProjectsClient(transport="rest", client_options=opts,
                                          credentials=creds(server, "mallory@evil.test")).get_project(
            name="projects/gapic-proj-1")


def test_self_lockout_is_refused_unless_asked_for(server: Server) -> None:
    c = server.client()
    c.post("/v3/projects", json={"projectId": "lockout-test", "parent": server.organization})
    pol = c.post("/v3/projects/lockout-test:getIamPolicy", json={}).json()
    # alice also holds owner on the org, so removing the project binding does not lock her out
    pol["bindings"] = [{"role": "roles/viewer", "members": ["user:bob@example.com"]}]
    r = c.post("/v3/projects/lockout-test:setIamPolicy", json={"policy": pol})
    assert r.status_code == 200, r.text
    # bob, an owner of one project only, would lock himself out
    pol = r.json()
    pol["bindings"] = [{"role": "roles/owner", "members": ["user:bob@example.com"]}]
    pol = c.post("/v3/projects/lockout-test:setIamPolicy", json={"policy": pol}).json()
    bob = server.client("bob@example.com")
    pol["bindings"] = [{"role": "roles/viewer", "members": ["user:bob@example.com"]}]
    r = bob.post("/v3/projects/lockout-test:setIamPolicy", json={"policy": pol})
    assert r.status_code == 400 and r.json()["error"]["status"] == "FAILED_PRECONDITION"
    assert "X-Keycard-Allow-Lockout" in r.json()["error"]["message"]
    r = bob.post("/v3/projects/lockout-test:setIamPolicy", json={"policy": pol},
                 headers={"X-Keycard-Allow-Lockout": "true"})
    assert r.status_code == 200


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v3/projects", {"projectId": "UPPER", "parent": "ORG"}, "projectId"),
    ("/v3/folders", {"parent": "projects/x-123456", "displayName": "f"}, "parent"),
    ("/v3/projects/lockout-test:setIamPolicy", {"policy": {"bindings": [{"role": "roles/viewer",
                                                                        "members": ["bogus"]}]}},
     "policy.bindings[0].members[0]"),
    ("/v3/projects/lockout-test:setIamPolicy", {"policy": {"version": 1, "bindings": [
        {"role": "roles/viewer", "members": ["user:a@example.com"], "condition": {"expression": "true"}}]}},
     "policy.version"),
    ("/v3/projects/lockout-test:testIamPermissions", {"permissions": ["not a permission"]}, "permissions[0]"),
])
def test_bad_input_is_400_naming_the_field(server: Server, path: str, body: dict[str, object], field: str) -> None:
    body = {k: (server.organization if v == "ORG" else v) for k, v in body.items()}
    r = server.client().post(path, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["status"] == "INVALID_ARGUMENT" and field in err["message"]
    assert err["details"][0]["metadata"]["field"] == field


def test_garbage_never_yields_500(server: Server) -> None:
    c = server.client()
    for path, content in [("/v3/folders", b"{not json"), ("/v3/projects", b"[1,2]"), ("/v3/projects", b"\xff\xfe"),
                          ("/v3/projects/x:setIamPolicy", b'{"policy": 7}'), ("/v3/folders", b'"str"')]:
        r = c.post(path, content=content, headers={"content-type": "application/json"})
        assert r.status_code < 500, (path, content, r.text)
    for path in ("/v3/projects/%00", "/v3/folders/abc", "/v3/organizations/%2F..%2F", "/nope",
                 "/v3/projects/" + "a" * 5000):
        assert server.client().get(path).status_code < 500, path
