"""Cloud Asset API v1 against a live server, driven by google-api-python-client's cloudasset v1 client:
analyzeIamPolicy (who has P, what X can do, conditions, groups, impersonation), the two searches, and
exportAssets to the object store (read back and loaded by the engine)."""

from __future__ import annotations

import json
from typing import Any

import google.oauth2.credentials
import pytest
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from conftest import Server
from keycard.engine.engine import Engine

PROJECT, OTHER = "ca-proj-1", "ca-proj-2"
TEAM = "ca-team@example.com"
DAVE, BOB, EVE, CAROL = "dave@example.com", "bob@example.com", "eve@example.com", "carol@example.com"
BUCKET = "ca-bucket-1"
PRJ = f"//cloudresourcemanager.googleapis.com/projects/{PROJECT}"
UNTIL_2030 = 'request.time < timestamp("2030-01-01T00:00:00Z")'


def asset(server: Server, user: str = "alice@example.com") -> Any:
    creds = google.oauth2.credentials.Credentials(token=server.token(user))
    return build("cloudasset", "v1", credentials=creds, static_discovery=True,
                 client_options={"api_endpoint": server.url}).v1()


@pytest.fixture(scope="module")
def world(server: Server) -> dict[str, str]:
    c = server.client()

    def ok(r: Any) -> Any:
        assert r.status_code == 200, r.text
        return r.json()
    for p in (PROJECT, OTHER):
        ok(c.post("/v3/projects", json={"projectId": p, "parent": server.organization}))
    customer = server.organization.split("/")[1]
    from keycard.store.sql import open_store
    store = open_store(server.database)
    try:
        inst = store.get("installation", "default")
        assert inst is not None
        customer = str(inst.data["customerId"])
    finally:
        store.close()
    group = ok(c.post("/v1/groups", params={"initialGroupConfig": "EMPTY"}, json={
        "groupKey": {"id": TEAM}, "parent": f"customers/{customer}",
        "labels": {"cloudidentity.googleapis.com/groups.discussion_forum": ""}}))["response"]["name"]
    ok(c.post(f"/v1/{group}/memberships", json={"preferredMemberKey": {"id": DAVE}, "roles": [{"name": "MEMBER"}]}))
    sa = ok(c.post(f"/v1/projects/{PROJECT}/serviceAccounts", json={"accountId": "ca-runner"}))["email"]
    ok(c.post(f"/v1/projects/{PROJECT}/serviceAccounts/{sa}:setIamPolicy", json={"policy": {"bindings": [
        {"role": "roles/iam.serviceAccountTokenCreator", "members": [f"user:{EVE}"]}]}}))
    pol = ok(c.post(f"/v3/projects/{PROJECT}:getIamPolicy", json={"options": {"requestedPolicyVersion": 3}}))
    pol["version"] = 3
    pol["bindings"] += [
        {"role": "roles/ml.developer", "members": [f"group:{TEAM}", f"serviceAccount:{sa}"]},
        {"role": "roles/viewer", "members": [f"user:{BOB}"], "condition": {"title": "until 2030",
                                                                         "expression": UNTIL_2030}}]
    ok(c.post(f"/v3/projects/{PROJECT}:setIamPolicy", json={"policy": pol}))
    other = ok(c.post(f"/v3/projects/{OTHER}:getIamPolicy", json={}))
    other["bindings"].append({"role": "roles/cloudasset.viewer", "members": [f"user:{CAROL}"]})
    ok(c.post(f"/v3/projects/{OTHER}:setIamPolicy", json={"policy": other}))
    ok(c.post("/storage/v1/b", params={"project": PROJECT}, json={"name": BUCKET}))
    return {"sa": sa}


def _identities(analysis: dict[str, Any]) -> set[str]:
    return {i["name"] for r in analysis.get("analysisResults", []) for i in r["identityList"]["identities"]}


def test_who_has_a_permission_groups_expanded_and_impersonation_followed(server: Server, world: dict[str, str]
                                                                        ) -> None:
    out = asset(server).analyzeIamPolicy(
        scope=f"projects/{PROJECT}", analysisQuery_resourceSelector_fullResourceName=PRJ,
        analysisQuery_accessSelector_permissions=["ml.models.predict"], analysisQuery_options_expandGroups=True,
        analysisQuery_options_outputGroupEdges=True,
        analysisQuery_options_analyzeServiceAccountImpersonation=True).execute()
    main = out["mainAnalysis"]
    who = _identities(main)
    assert {f"group:{TEAM}", f"user:{DAVE}", f"serviceAccount:{world['sa']}", "user:alice@example.com"} <= who
    assert f"user:{EVE}" not in who
    bobs = [r for r in main["analysisResults"] if f"user:{BOB}" in r["iamBinding"]["members"]]
    assert bobs and all(r["accessControlLists"][0]["conditionEvaluation"] == {"evaluationValue": "CONDITIONAL"}
                        for r in bobs)       # roles/viewer holds ml.models.predict, granted until 2030
    edges = [e for r in main["analysisResults"] for e in r["identityList"].get("groupEdges", [])]
    assert {"sourceNode": f"group:{TEAM}", "targetNode": f"user:{DAVE}"} in edges
    dev = next(r for r in main["analysisResults"] if r["iamBinding"]["role"] == "roles/ml.developer")
    assert dev["accessControlLists"][0]["accesses"] == [{"permission": "ml.models.predict"}]
    assert dev["attachedResourceFullName"].startswith("//cloudresourcemanager.googleapis.com/projects/")
    imp = out["serviceAccountImpersonationAnalysis"]
    assert any(a["analysisQuery"]["keycardServiceAccount"] == f"serviceAccount:{world['sa']}"
               and f"user:{EVE}" in _identities(a) for a in imp)


def test_conditional_grants_are_flagged_and_evaluated_at_access_time(server: Server, world: dict[str, str]) -> None:
    v1 = asset(server)
    common = {"scope": f"projects/{PROJECT}", "analysisQuery_resourceSelector_fullResourceName": PRJ,
              "analysisQuery_identitySelector_identity": f"user:{BOB}",
              "analysisQuery_accessSelector_permissions": ["resourcemanager.projects.get"]}
    flagged = v1.analyzeIamPolicy(**common).execute()["mainAnalysis"]["analysisResults"]
    assert [r["accessControlLists"][0]["conditionEvaluation"]["evaluationValue"] for r in flagged] == ["CONDITIONAL"]
    assert flagged[0]["iamBinding"]["condition"]["expression"] == UNTIL_2030
    now = v1.analyzeIamPolicy(**common, analysisQuery_conditionContext_accessTime="2029-06-01T00:00:00Z").execute()
    assert [r["accessControlLists"][0]["conditionEvaluation"]["evaluationValue"]
            for r in now["mainAnalysis"]["analysisResults"]] == ["TRUE"]
    later = v1.analyzeIamPolicy(**common, analysisQuery_conditionContext_accessTime="2031-01-01T00:00:00Z").execute()
    assert later["mainAnalysis"].get("analysisResults", []) == []


def test_everything_a_principal_can_do(server: Server, world: dict[str, str]) -> None:
    out = asset(server).analyzeIamPolicy(
        scope=server.organization, analysisQuery_identitySelector_identity=f"user:{DAVE}",
        analysisQuery_options_expandRoles=True).execute()
    results = out["mainAnalysis"]["analysisResults"]
    perms = {a["permission"] for r in results for acl in r["accessControlLists"] for a in acl["accesses"]}
    assert {"ml.models.predict", "ml.models.create"} <= perms and "resourcemanager.projects.delete" not in perms
    assert {r["iamBinding"]["role"] for r in results} == {"roles/ml.developer"}


def test_search_all_iam_policies(server: Server, world: dict[str, str]) -> None:
    v1 = asset(server)
    found = v1.searchAllIamPolicies(scope=server.organization, query=f"policy:{TEAM}").execute()["results"]
    assert len(found) == 1 and found[0]["resource"].startswith("//cloudresourcemanager.googleapis.com/projects/")
    assert found[0]["assetType"] == "cloudresourcemanager.googleapis.com/Project"
    assert found[0]["project"].startswith("projects/") and found[0]["organization"] == server.organization
    by_perm = v1.searchAllIamPolicies(scope=server.organization,
                                      query="policy.role.permissions:iam.serviceAccounts.getAccessToken").execute()
    hit = [r for r in by_perm["results"] if world["sa"] in r["resource"]]
    assert hit and hit[0]["assetType"] == "iam.googleapis.com/ServiceAccount"
    assert "iam.serviceAccounts.getAccessToken" in hit[0]["explanation"]["matchedPermissions"][
        "roles/iam.serviceAccountTokenCreator"]["permissions"]
    sas = v1.searchAllIamPolicies(scope=f"projects/{PROJECT}", query="memberTypes:serviceAccount").execute()
    assert sas["results"] and all("serviceAccount:" in json.dumps(r["policy"]) for r in sas["results"])
    none = v1.searchAllIamPolicies(scope=f"projects/{OTHER}", query=f"policy:{TEAM}").execute()
    assert none.get("results", []) == []


def test_search_all_resources(server: Server, world: dict[str, str]) -> None:
    v1 = asset(server)
    out = v1.searchAllResources(scope=server.organization, query=f"displayName:{PROJECT}",
                                assetTypes=["cloudresourcemanager.googleapis.com/Project"]).execute()["results"]
    assert len(out) == 1 and out[0]["displayName"] == PROJECT and out[0]["state"] == "ACTIVE"
    inside = v1.searchAllResources(scope=f"projects/{PROJECT}", query=f"project:{PROJECT}").execute()["results"]
    types = {r["assetType"] for r in inside}
    assert {"storage.googleapis.com/Bucket", "iam.googleapis.com/ServiceAccount"} <= types
    pages: list[str] = []
    token = None
    while True:
        page = v1.searchAllResources(scope=server.organization, pageSize=2, pageToken=token).execute()
        pages += [r["name"] for r in page.get("results", [])]
        token = page.get("nextPageToken")
        if not token:
            break
    assert len(pages) == len(set(pages)) >= len(inside) + 2


def test_export_assets_to_the_object_store_round_trips_through_the_engine(server: Server, world: dict[str, str]
                                                                          ) -> None:
    v1 = asset(server)
    uri = f"gs://{BUCKET}/cai/policies.json"
    op = v1.exportAssets(parent=server.organization, body={
        "contentType": "IAM_POLICY", "outputConfig": {"gcsDestination": {"uri": uri}}}).execute()
    assert op["done"] is True and op["response"]["outputResult"]["gcsResult"]["uris"] == [uri]
    c = server.client()
    got = c.get(f"/v1/{op['name']}")
    assert got.status_code == 200 and got.json() == op
    res = v1.exportAssets(parent=server.organization, body={
        "contentType": "RESOURCE", "outputConfig": {"gcsDestination": {"uri": f"gs://{BUCKET}/cai/res.json"}}}
    ).execute()
    assert res["done"]
    lines: list[dict[str, Any]] = []
    for name in ("cai/res.json", "cai/policies.json"):
        r = c.get(f"/download/storage/v1/b/{BUCKET}/o/{name.replace('/', '%2F')}", params={"alt": "media"})
        assert r.status_code == 200, r.text
        lines += [json.loads(x) for x in r.text.splitlines() if x]
    assert {"name", "asset_type", "ancestors"} <= set(lines[0])
    eng = Engine.load(lines, groups={TEAM: [f"user:{DAVE}"]}, unknown_roles="ignore")
    assert eng.check(f"user:{DAVE}", "ml.models.predict", f"//ml.googleapis.com/projects/{PROJECT}/models/m").allowed
    assert not eng.check(f"user:{CAROL}", "ml.models.predict", PRJ).allowed


def test_callers_see_only_their_scope(server: Server, world: dict[str, str]) -> None:
    v1 = asset(server, CAROL)
    with pytest.raises(HttpError) as e:
        v1.analyzeIamPolicy(scope=f"projects/{PROJECT}", analysisQuery_resourceSelector_fullResourceName=PRJ).execute()
    assert e.value.resp.status == 403 and "cloudasset.assets.analyzeIamPolicy" in str(e.value)
    # her own project: answers, and nothing about the other project leaks through a resource selector
    out = v1.analyzeIamPolicy(scope=f"projects/{OTHER}", analysisQuery_resourceSelector_fullResourceName=PRJ,
                              analysisQuery_options_expandGroups=True).execute()
    assert out["mainAnalysis"].get("analysisResults", []) == [] or all(
        r["attachedResourceFullName"] not in (PRJ,) and PROJECT not in r["attachedResourceFullName"]
        for r in out["mainAnalysis"]["analysisResults"])
    assert DAVE not in json.dumps(out)
    with pytest.raises(HttpError) as e:
        v1.exportAssets(parent=f"projects/{OTHER}", body={
            "contentType": "RESOURCE", "outputConfig": {"gcsDestination": {"uri": f"gs://{BUCKET}/x.json"}}}).execute()
    # her own project's export is hers to run, but the bucket is not hers to write
    assert e.value.resp.status == 403 and "storage.objects.create" in str(e.value)
    with pytest.raises(HttpError) as e:
        v1.exportAssets(parent=f"projects/{PROJECT}", body={
            "contentType": "RESOURCE", "outputConfig": {"gcsDestination": {"uri": f"gs://{BUCKET}/x.json"}}}).execute()
    assert e.value.resp.status == 403 and "cloudasset.assets.exportResource" in str(e.value)


@pytest.mark.parametrize(("path", "field"), [
    ("/v1/projects/ca-proj-1:analyzeIamPolicy", "analysisQuery.resourceSelector"),
    ("/v1/projects/ca-proj-1:analyzeIamPolicy?analysisQuery.identitySelector.identity=nobody", "identity"),
    ("/v1/projects/ca-proj-1:analyzeIamPolicy?analysisQuery.resourceSelector.fullResourceName=projects/ca-proj-1&"
     "analysisQuery.conditionContext.accessTime=soon", "accessTime"),
    ("/v1/projects/ca-proj-1:searchAllIamPolicies?query=policy%3A(", "filter"),
    ("/v1/projects/ca-proj-1:searchAllResources?orderBy=color", "orderBy"),
    ("/v1/projects/ca-proj-1:searchAllResources?pageToken=zz", "pageToken"),
])
def test_bad_requests_are_400_naming_the_field(server: Server, world: dict[str, str], path: str, field: str) -> None:
    r = server.client().get(path)
    assert r.status_code == 400, r.text
    assert field in r.json()["error"]["message"]


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1/organizations/abc:analyzeIamPolicy?analysisQuery.identitySelector.identity=user:a@example.com", None),
    ("GET", "/v1/projects/ca-proj-1:analyzeIamPolicy?analysisQuery.options.expandGroups=maybe&"
            "analysisQuery.identitySelector.identity=user:a@example.com", None),
    ("GET", "/v1/projects/ca-proj-1:analyzeIamPolicy?analysisQuery.accessSelector.permissions=not%20a%20perm&"
            "analysisQuery.identitySelector.identity=user:a@example.com", None),
    ("GET", "/v1/projects/ca-proj-1:analyzeIamPolicy?savedAnalysisQuery=x", None),
    ("GET", "/v1/projects/ca-proj-1:searchAllResources?query=name:(", None),
    ("GET", "/v1/projects/ca-proj-1:searchAllResources?pageSize=-3", None),
    ("GET", "/v1/projects/ca-proj-1:searchAllIamPolicies?assetTypes=((&query=policy:x", None),
    ("GET", "/v1/billingAccounts/1:searchAllResources", None),
    ("POST", "/v1/projects/ca-proj-1:exportAssets", {"outputConfig": "gs://x"}),
    ("POST", "/v1/projects/ca-proj-1:exportAssets", {"outputConfig": {"gcsDestination": {"uri": "s3://b/o"}}}),
    ("POST", "/v1/projects/ca-proj-1:exportAssets", {"contentType": "ORG_POLICY",
                                                     "outputConfig": {"gcsDestination": {"uri": "gs://b/o"}}}),
    ("POST", "/v1/projects/ca-proj-1:exportAssets", {"assetTypes": "x",
                                                     "outputConfig": {"gcsDestination": {"uri": "gs://b/o"}}}),
    ("POST", "/v1/projects/ca-proj-1:exportAssets", ["not", "an", "object"]),
    ("GET", "/v1/projects/ca-proj-1/operations/ExportAssets/nope", None),
    ("POST", "/v2/entries:list", {"resourceNames": "projects/ca-proj-1"}),
    ("POST", "/v2/entries:list", {"resourceNames": ["projects/ca-proj-1"], "pageSize": "many"}),
    ("POST", "/v2/entries:list", {"resourceNames": ["projects/ca-proj-1"], "filter": 7}),
    ("POST", "/v2/entries:list", {"projectIds": [1, 2]}),
    ("POST", "/v2/entries:list", []),
])
def test_odd_input_is_a_4xx_never_a_500(server: Server, world: dict[str, str], method: str, path: str,
                                        body: Any) -> None:
    r = server.client().request(method, path, json=body) if body is not None else server.client().request(method, path)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.json()["error"]["message"]
