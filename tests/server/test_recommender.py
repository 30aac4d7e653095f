"""IAM recommendations (Recommender v1) against a live server, driven by Google's discovery client.

The usage comes from the access record: a synthetic log written into the server's store (exact minutes,
90-day window edges) and real requests the server records itself.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import google.oauth2.credentials
import pytest
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from conftest import Server
from keycard.engine.engine import Engine
from keycard.store.base import AccessRecord
from keycard.store.sql import open_store

ALICE = "alice@example.com"
PROJECT = "reco-proj-1"
NODE = f"//cloudresourcemanager.googleapis.com/projects/{PROJECT}"
MODEL = f"//ml.googleapis.com/projects/{PROJECT}/models/m1"
PARENT = f"projects/{PROJECT}/locations/global/recommenders/google.iam.policy.Recommender"
INSIGHTS = f"projects/{PROJECT}/locations/global/insightTypes/google.iam.policy.Insight"
BINDINGS = [
    {"role": "roles/ml.admin", "members": ["user:bob@example.com"]},          # used 2 model permissions
    {"role": "roles/ml.developer", "members": ["user:carol@example.com"]},    # used nothing
    {"role": "roles/ml.modelUser", "members": ["user:dave@example.com"]},     # used all 5
    {"role": "roles/ml.viewer", "members": ["user:erin@example.com"]},        # used only 100 days ago
    {"role": "roles/storage.admin", "members": ["user:frank@example.com"]},   # real requests (bucket get)
    {"role": "roles/ml.developer", "members": ["group:team@example.com"]},    # used by a member
]


def minute(days_ago: float) -> int:
    return int((dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)).timestamp()) // 60


def recommender(server: Server, user: str = ALICE) -> Any:
    creds = google.oauth2.credentials.Credentials(token=server.token(user))
    return build("recommender", "v1", credentials=creds, static_discovery=True,
                 client_options={"api_endpoint": server.url})


@pytest.fixture(scope="module")
def usage(server: Server) -> dict[str, Any]:
    c = server.client()
    r = c.post("/v3/projects", json={"projectId": PROJECT, "parent": server.organization})
    assert r.status_code == 200, r.text
    r = c.post("/v1/groups", params={"initialGroupConfig": "EMPTY"}, json={
        "groupKey": {"id": "team@example.com"}, "parent": "customers/" + _customer(server),
        "labels": {"cloudidentity.googleapis.com/groups.discussion_forum": ""}})
    assert r.status_code == 200, r.text
    group = r.json()["response"]["name"]
    r = c.post(f"/v1/{group}/memberships", json={"preferredMemberKey": {"id": "gina@example.com"},
                                                  "roles": [{"name": "MEMBER"}]})
    assert r.status_code == 200, r.text
    pol = c.post(f"/v3/projects/{PROJECT}:getIamPolicy", json={}).json()
    pol["bindings"] = pol.get("bindings", []) + BINDINGS
    assert c.post(f"/v3/projects/{PROJECT}:setIamPolicy", json={"policy": pol}).status_code == 200
    assert c.post("/storage/v1/b", params={"project": PROJECT}, json={"name": "reco-bucket-1"}).status_code == 200
    rows = [
        AccessRecord(minute(10), "user:bob@example.com", "ml.models.get", MODEL, True, 40),
        AccessRecord(minute(3), "user:bob@example.com", "ml.models.predict", MODEL, True, 7),
        AccessRecord(minute(3), "user:bob@example.com", "ml.models.delete", MODEL, False, 1),   # denied: no use
        AccessRecord(minute(100), "user:erin@example.com", "ml.models.get", MODEL, True, 1),   # outside window
        AccessRecord(minute(1), "user:gina@example.com", "ml.models.create", NODE, True, 2),   # via the group
        *[AccessRecord(minute(2), "user:dave@example.com", p, MODEL, True, 1)
          for p in ("ml.models.get", "ml.models.predict", "ml.versions.get", "ml.versions.list",
                    "ml.versions.predict")],
        AccessRecord(minute(5), "user:bob@example.com", "ml.models.get",
                     "//ml.googleapis.com/projects/other-proj/models/m1", True, 3),           # another project
    ]
    store = open_store(server.database)
    try:
        store.record_access(rows)
    finally:
        store.close()
    # real requests: frank reads the bucket twice (recorded by the server's own authorization)
    with server.client("frank@example.com") as frank:
        for _ in range(2):
            assert frank.get("/storage/v1/b/reco-bucket-1").status_code == 200
    return {"rows": rows}


def _customer(server: Server) -> str:
    store = open_store(server.database)
    try:
        inst = store.get("installation", "default")
        assert inst is not None
        return str(inst.data["customerId"])
    finally:
        store.close()


def _by_member(recos: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["content"]["overview"]["member"]: r for r in recos if r["stateInfo"]["state"] == "ACTIVE"}


def _list(server: Server, **kw: Any) -> list[dict[str, Any]]:
    api = recommender(server).projects().locations().recommenders().recommendations()
    return list(api.list(parent=PARENT, **kw).execute().get("recommendations", []))


def test_recommendations_from_the_access_record(server: Server, usage: dict[str, Any]) -> None:
    recos = _by_member(_list(server))
    bob = recos["user:bob@example.com"]
    assert bob["recommenderSubtype"] == "REPLACE_ROLE"
    assert bob["content"]["overview"]["addedRoles"] == ["roles/ml.modelUser"]
    assert bob["content"]["overview"]["usedPermissions"] == ["ml.models.get", "ml.models.predict"]
    # the smallest predefined role that covers the used permissions, by the engine's role finder
    engine = Engine()
    smallest = engine.find_roles(["ml.models.get", "ml.models.predict"], predefined_only=True)[0]
    assert smallest.name == "roles/ml.modelUser"
    assert len(smallest.permissions) < len(engine.get_role("roles/ml.admin").permissions)  # type: ignore[union-attr]
    ops = bob["content"]["operationGroups"][0]["operations"]
    assert ops == [
        {"action": "add", "resourceType": "cloudresourcemanager.googleapis.com/Project", "resource": ops[0]["resource"],
         "path": "/iamPolicy/bindings/*/members/-", "value": "user:bob@example.com",
         "pathFilters": {"/iamPolicy/bindings/*/condition/expression": "",
                         "/iamPolicy/bindings/*/role": "roles/ml.modelUser"}},
        {"action": "remove", "resourceType": "cloudresourcemanager.googleapis.com/Project",
         "resource": ops[0]["resource"], "path": "/iamPolicy/bindings/*/members/*",
         "pathFilters": {"/iamPolicy/bindings/*/condition/expression": "",
                         "/iamPolicy/bindings/*/role": "roles/ml.admin",
                         "/iamPolicy/bindings/*/members/*": "user:bob@example.com"}}]
    assert ops[0]["resource"].startswith("//cloudresourcemanager.googleapis.com/projects/")
    assert recos["user:carol@example.com"]["recommenderSubtype"] == "REMOVE_ROLE"
    assert recos["user:erin@example.com"]["recommenderSubtype"] == "REMOVE_ROLE"     # 100 days ago: unused
    assert "user:dave@example.com" not in recos                                      # uses all it has
    frank = recos["user:frank@example.com"]                                          # recorded by the server
    assert frank["recommenderSubtype"] == "REPLACE_ROLE"
    assert frank["content"]["overview"]["usedPermissions"] == ["storage.buckets.get"]
    assert frank["content"]["overview"]["addedRoles"] == ["roles/storage.bucketViewer"]
    team = recos["group:team@example.com"]                                           # gina used ml.models.create
    assert team["content"]["overview"]["usedPermissions"] == ["ml.models.create"]
    for r in recos.values():
        assert r["stateInfo"] == {"state": "ACTIVE"} and r["etag"].startswith('"')
        assert r["name"].startswith(PARENT + "/recommendations/")


def test_get_filter_and_pages(server: Server, usage: dict[str, Any]) -> None:
    api = recommender(server).projects().locations().recommenders().recommendations()
    every = _list(server)
    assert len(every) >= 5
    one = api.get(name=every[0]["name"]).execute()
    assert one.pop("lastRefreshTime") >= every[0].pop("lastRefreshTime")
    assert one == every[0]
    removes = _list(server, filter="recommenderSubtype = REMOVE_ROLE")
    assert removes and all(r["recommenderSubtype"] == "REMOVE_ROLE" for r in removes)
    both = _list(server, filter="stateInfo.state = ACTIVE AND (recommenderSubtype = REMOVE_ROLE OR "
                                "recommenderSubtype = REPLACE_ROLE)")
    assert [r["name"] for r in both] == [r["name"] for r in every]
    paged, token = [], None
    while True:
        page = api.list(parent=PARENT, pageSize=2, pageToken=token).execute()
        paged += page.get("recommendations", [])
        token = page.get("nextPageToken")
        if not token:
            break
    assert [r["name"] for r in paged] == [r["name"] for r in every]
    with pytest.raises(HttpError) as e:
        api.list(parent=PARENT, filter="cost > 3").execute()
    assert e.value.resp.status == 400
    with pytest.raises(HttpError) as e:
        api.get(name=PARENT + "/recommendations/0123456789abcdef0123456789abcdef").execute()
    assert e.value.resp.status == 404


def test_insights_report_used_vs_granted(server: Server, usage: dict[str, Any]) -> None:
    api = recommender(server).projects().locations().insightTypes().insights()
    insights = api.list(parent=INSIGHTS).execute()["insights"]
    by = {(i["content"]["member"], i["content"]["role"]): i for i in insights}
    dave = by[("user:dave@example.com", "roles/ml.modelUser")]
    assert len(dave["content"]["exercisedPermissions"]) == 5
    assert dave["content"]["currentTotalPermissionsCount"] == "5" and dave["insightSubtype"] == "PERMISSIONS_USAGE"
    got = api.get(name=dave["name"]).execute()
    assert got.pop("lastRefreshTime") >= dave.pop("lastRefreshTime")
    assert got == dave


def test_claim_apply_and_succeed(server: Server, usage: dict[str, Any]) -> None:
    api = recommender(server).projects().locations().recommenders().recommendations()
    carol = _by_member(_list(server))["user:carol@example.com"]
    with pytest.raises(HttpError) as e:
        api.markClaimed(name=carol["name"], body={"etag": '"stale"'}).execute()
    assert e.value.resp.status == 409
    claimed = api.markClaimed(name=carol["name"], body={"etag": carol["etag"],
                                                         "stateMetadata": {"ticket": "T-1"}}).execute()
    assert claimed["stateInfo"] == {"state": "CLAIMED", "stateMetadata": {"ticket": "T-1"}}
    assert claimed["etag"] != carol["etag"]
    # apply it: a normal, audited setIamPolicy (what `keycard iam recommend --apply` does)
    c = server.client()
    pol = c.post(f"/v3/projects/{PROJECT}:getIamPolicy", json={}).json()
    for b in pol["bindings"]:
        if b["role"] == "roles/ml.developer":
            b["members"] = [m for m in b["members"] if m != "user:carol@example.com"]
    pol["bindings"] = [b for b in pol["bindings"] if b["members"]]
    assert c.post(f"/v3/projects/{PROJECT}:setIamPolicy", json={"policy": pol}).status_code == 200
    done = api.markSucceeded(name=carol["name"], body={"etag": claimed["etag"]}).execute()
    assert done["stateInfo"]["state"] == "SUCCEEDED"
    # no longer computed (carol has no binding left) but still listed, with its final state
    listed = {r["name"]: r for r in _list(server)}
    assert listed[carol["name"]]["stateInfo"]["state"] == "SUCCEEDED"
    assert "user:carol@example.com" not in _by_member(list(listed.values()))
    with pytest.raises(HttpError) as e:
        api.markDismissed(name=carol["name"], body={"etag": done["etag"]}).execute()
    assert e.value.resp.status == 400          # FAILED_PRECONDITION: SUCCEEDED cannot be dismissed
    entries = [a.entry for a in _audit(server)]
    assert any(e["protoPayload"]["methodName"].endswith("MarkRecommendationSucceeded") for e in entries)


def _audit(server: Server) -> list[Any]:
    store = open_store(server.database)
    try:
        return store.audit(limit=10_000)
    finally:
        store.close()


def test_permissions_and_bad_names(server: Server, usage: dict[str, Any]) -> None:
    stranger = recommender(server, "mallory@example.com").projects().locations().recommenders().recommendations()
    with pytest.raises(HttpError) as e:
        stranger.list(parent=PARENT).execute()
    assert e.value.resp.status == 403 and b"recommender.iamPolicyRecommendations.list" in e.value.content
    api = recommender(server).projects().locations().recommenders().recommendations()
    with pytest.raises(HttpError) as e:
        api.list(parent=f"projects/{PROJECT}/locations/us-east1/recommenders/google.iam.policy.Recommender"
                 ).execute()
    assert e.value.resp.status == 400
    with pytest.raises(HttpError) as e:
        api.list(parent=f"projects/{PROJECT}/locations/global/recommenders/google.compute.instance.Idle"
                 ).execute()
    assert e.value.resp.status == 404


def test_recording_keeps_up(server: Server, usage: dict[str, Any]) -> None:
    """Checks made by the server land in the store within a few flush intervals."""
    with server.client("frank@example.com") as frank:
        assert frank.get("/storage/v1/b/reco-bucket-1").status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        store = open_store(server.database)
        try:
            hits = sum(r.hits for r in store.accesses(since_minute=minute(1))
                       if r.principal == "user:frank@example.com" and r.permission == "storage.buckets.get")
        finally:
            store.close()
        if hits >= 3:
            return
        time.sleep(0.2)
    pytest.fail(f"frank's 3 bucket reads were not recorded ({hits})")


def _error(call: Any) -> tuple[int, str]:
    with pytest.raises(HttpError) as e:
        call.execute()
    return e.value.resp.status, e.value.content.decode()


def test_recommendations_and_insights_check_alike(server: Server, usage: dict[str, Any]) -> None:
    """Both collections: the permission first, then the location, the recommender (insight type), the item."""
    for kind, item, collection, what, served, noun in (
            ("recommenders", "recommendations", "Recommendations", "Recommender", "google.iam.policy.Recommender",
             "Recommendation"),
            ("insightTypes", "insights", "Insights", "Insight type", "google.iam.policy.Insight", "Insight")):
        def api(user: str = ALICE, kind: str = kind, item: str = item) -> Any:
            return getattr(getattr(recommender(server, user).projects().locations(), kind)(), item)()
        parent = f"projects/{PROJECT}/locations/global/{kind}/{served}"
        missing = f"{parent}/{item}/0123456789abcdef0123456789abcdef"
        status, body = _error(api("mallory@example.com").list(parent=parent))
        assert status == 403 and f"recommender.iamPolicy{collection}.list" in body
        status, body = _error(api("mallory@example.com").get(name=missing))
        assert status == 403 and f"recommender.iamPolicy{collection}.get" in body
        status, body = _error(api().get(name=missing.replace("/global/", "/us-east1/")))
        assert status == 400 and "Invalid name: location 'us-east1' is not supported" in body
        status, body = _error(api().list(parent=f"projects/{PROJECT}/locations/global/{kind}/google.iam.Other"))
        assert status == 404 and f"{what} 'google.iam.Other' is not served here; keycard serves {served}." in body
        status, body = _error(api().get(name=missing))
        assert status == 404 and f"{noun} '{missing}' was not found." in body
        status, body = _error(api().list(parent=parent.replace(PROJECT, "reco-nowhere")))
        assert status == 403   # a project that does not exist: denied before it is looked up
