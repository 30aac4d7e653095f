"""Policy Simulator v1 replays against a live server, driven by Google's discovery client.

Oracle: every access tuple of the replay window is troubleshot (the engine's own check, through the
Policy Troubleshooter API) before and after the proposed policy is really applied; the replay must list
exactly the tuples whose answer changes, with the right direction.
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
from keycard.store.base import AccessRecord
from keycard.store.sql import open_store

ALICE = "alice@example.com"
PROJECT = "sim-proj-1"
MODEL = f"//ml.googleapis.com/projects/{PROJECT}/models/m1"
PARENT = f"projects/{PROJECT}/locations/global"


def minute(days_ago: float) -> int:
    return int((dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)).timestamp()) // 60


def api(server: Server, name: str, version: str, user: str = ALICE) -> Any:
    creds = google.oauth2.credentials.Credentials(token=server.token(user))
    return build(name, version, credentials=creds, static_discovery=True, client_options={"api_endpoint": server.url})


@pytest.fixture(scope="module")
def project(server: Server) -> dict[str, Any]:
    c = server.client()
    r = c.post("/v3/projects", json={"projectId": PROJECT, "parent": server.organization})
    assert r.status_code == 200, r.text
    number = c.get(f"/v3/projects/{PROJECT}").json()["name"].split("/")[1]
    pol = c.post(f"/v3/projects/{PROJECT}:getIamPolicy", json={}).json()
    pol["bindings"] = [*pol.get("bindings", []),
                       {"role": "roles/ml.admin", "members": ["user:bob@example.com"]},
                       {"role": "roles/ml.modelUser", "members": ["user:carol@example.com"]}]
    r = c.post(f"/v3/projects/{PROJECT}:setIamPolicy", json={"policy": pol})
    assert r.status_code == 200, r.text
    rows = [
        AccessRecord(minute(5), "user:bob@example.com", "ml.models.get", MODEL, True, 3),
        AccessRecord(minute(5), "user:bob@example.com", "ml.models.delete", MODEL, True, 1),
        AccessRecord(minute(4), "user:carol@example.com", "ml.models.get", MODEL, True, 9),
        AccessRecord(minute(4), "user:carol@example.com", "ml.models.delete", MODEL, False, 2),
        AccessRecord(minute(3), "user:dave@example.com", "ml.models.get", MODEL, False, 1),
        AccessRecord(minute(2), "user:erin@example.com", "ml.models.delete",
                     "//ml.googleapis.com/projects/other-proj/models/m1", True, 1),           # not below the overlay
        AccessRecord(minute(120), "user:carol@example.com", "ml.models.update", MODEL, False, 1),  # too old
    ]
    store = open_store(server.database)
    try:
        store.record_access(rows)
    finally:
        store.close()
    proposed = {**r.json(), "bindings": [b for b in r.json()["bindings"] if b["role"] != "roles/ml.admin"]
                + [{"role": "roles/ml.modelOwner", "members": ["user:carol@example.com"]}]}
    return {"number": number, "proposed": proposed}


def _tuples(server: Server, number: str) -> set[tuple[str, str, str]]:
    store = open_store(server.database)
    try:
        rows = list(store.accesses(since_minute=minute(90)))
    finally:
        store.close()
    inside = (f"/projects/{PROJECT}", f"/projects/{number}")
    return {(r.principal, r.permission, r.resource) for r in rows
            if any(r.resource.endswith(s) or s + "/" in r.resource for s in inside)}


def _granted(server: Server, t: tuple[str, str, str]) -> bool:
    principal = t[0].split(":", 1)[1] if t[0].startswith(("user:", "serviceAccount:")) else t[0]
    out = api(server, "policytroubleshooter", "v1").iam().troubleshoot(body={"accessTuple": {
        "principal": principal, "permission": t[1], "fullResourceName": t[2]}}).execute()
    return bool(out["access"] == "GRANTED")


def _run(server: Server, policy: dict[str, Any], resource: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    replays = api(server, "policysimulator", "v1").projects().locations().replays()
    op = replays.create(parent=PARENT, body={"config": {"policyOverlay": {resource: policy},
                                                        "logSource": "RECENT_ACCESSES"}}).execute()
    assert op["name"].startswith(PARENT + "/replays/") and "/operations/" in op["name"]
    deadline = time.monotonic() + 60
    while not op.get("done"):
        assert time.monotonic() < deadline, op
        time.sleep(0.2)
        op = replays.operations().get(name=op["name"]).execute()
    replay = op["response"]
    assert replay["state"] == "SUCCEEDED"
    assert replays.get(name=replay["name"]).execute()["resultsSummary"] == replay["resultsSummary"]
    results: list[dict[str, Any]] = []
    token = None
    while True:
        page = replays.results().list(parent=replay["name"], pageSize=2, pageToken=token).execute()
        results += page.get("replayResults", [])
        token = page.get("nextPageToken")
        if not token:
            return replay, results


def test_replay_lists_exactly_the_accesses_that_change(server: Server, project: dict[str, Any]) -> None:
    resource = f"//cloudresourcemanager.googleapis.com/projects/{PROJECT}"
    replay, results = _run(server, project["proposed"], resource)
    tuples = _tuples(server, project["number"])
    before = {t: _granted(server, t) for t in sorted(tuples)}
    c = server.client()
    r = c.post(f"/v3/projects/{PROJECT}:setIamPolicy", json={"policy": project["proposed"]})
    assert r.status_code == 200, r.text
    after = {t: _granted(server, t) for t in sorted(tuples)}
    expected = {(t[0].split(":", 1)[-1], t[1], t[2]): ("ACCESS_REVOKED" if before[t] else "ACCESS_GAINED")
                for t in tuples if before[t] != after[t]}
    got = {(x["accessTuple"]["principal"], x["accessTuple"]["permission"], x["accessTuple"]["fullResourceName"]):
           x["diff"]["accessDiff"]["accessChange"] for x in results}
    assert got == expected
    assert got == {("bob@example.com", "ml.models.get", MODEL): "ACCESS_REVOKED",
                   ("bob@example.com", "ml.models.delete", MODEL): "ACCESS_REVOKED",
                   ("carol@example.com", "ml.models.delete", MODEL): "ACCESS_GAINED"}
    summary = replay["resultsSummary"]
    assert summary["differenceCount"] == 3 and summary["errorCount"] == 0
    assert summary["logCount"] == summary["unchangedCount"] + 3 and summary["unchangedCount"] >= 2
    one = next(x for x in results if x["accessTuple"]["principal"] == "carol@example.com")
    assert one["diff"]["accessDiff"]["baseline"] == {"accessState": "NOT_GRANTED"}
    assert one["diff"]["accessDiff"]["simulated"] == {"accessState": "GRANTED"}
    assert set(one["lastSeenDate"]) == {"year", "month", "day"} and one["parent"] == replay["name"]


def test_the_current_policy_changes_nothing(server: Server, project: dict[str, Any]) -> None:
    c = server.client()
    current = c.post(f"/v3/projects/{PROJECT}:getIamPolicy", json={}).json()
    replay, results = _run(server, current, f"//cloudresourcemanager.googleapis.com/projects/{PROJECT}")
    assert results == [] and replay["resultsSummary"]["differenceCount"] == 0


def test_bad_requests_and_permissions(server: Server, project: dict[str, Any]) -> None:
    replays = api(server, "policysimulator", "v1").projects().locations().replays()
    resource = f"//cloudresourcemanager.googleapis.com/projects/{PROJECT}"
    for body, field in (({}, "config"), ({"config": {"policyOverlay": {}}}, "config.policyOverlay"),
                        ({"config": {"policyOverlay": {resource: {"bindings": [{"role": "roles/nope",
                                                                                 "members": ["user:a@b.co"]}]}}}},
                         "role"),
                        ({"config": {"policyOverlay": {"//cloudresourcemanager.googleapis.com/projects/other-1":
                                                       {}}}}, "config.policyOverlay")):
        with pytest.raises(HttpError) as e:
            replays.create(parent=PARENT, body=body).execute()
        assert e.value.resp.status == 400, (body, e.value.content)
        assert field.encode() in e.value.content
    stranger = api(server, "policysimulator", "v1", "mallory@example.com").projects().locations().replays()
    with pytest.raises(HttpError) as e:
        stranger.create(parent=PARENT, body={"config": {"policyOverlay": {resource: {}}}}).execute()
    assert e.value.resp.status == 403 and b"policysimulator.replays.create" in e.value.content
    with pytest.raises(HttpError) as e:
        replays.get(name=PARENT + "/replays/0123456789abcdef").execute()
    assert e.value.resp.status == 404
