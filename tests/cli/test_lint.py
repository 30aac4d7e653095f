"""`keycard iam lint | recommend | simulate` through the real entry point against a live server (--format=json).

Lint: nothing on a clean organization (no basic roles, nothing public, no keys); then one project seeded
with each problem, and each rule finds its problem there.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.conftest import ADMIN, KEYCARD, Server, start_server, stop_server

BAD = "lint-bad-1"
CLEAN = "lint-clean-1"
ATT = f"cloudresourcemanager.googleapis.com%2Fprojects%2F{BAD}"


def kc(server: Server, *args: str, user: str = ADMIN) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KEYCARD_ENDPOINT": server.url, "KEYCARD_ACCESS_TOKEN": server.token(user)}
    return subprocess.run([*KEYCARD, *args], capture_output=True, text=True, env=env, timeout=300)


def ok(r: httpx.Response) -> Any:
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("lint")
    srv = start_server(f"sqlite:///{d / 'keycard.db'}", d / "server.log")
    yield srv
    stop_server(srv)


def _set_policy(c: httpx.Client, path: str, change: Any) -> Any:
    pol = ok(c.post(f"{path}:getIamPolicy", json={"options": {"requestedPolicyVersion": 3}}))
    pol = change(pol)
    return ok(c.post(f"{path}:setIamPolicy", json={"policy": pol}))


@pytest.fixture(scope="module")
def clean(server: Server) -> Server:
    """The organization without basic roles: the admin keeps the non-basic admin roles (and key admin)."""
    c = server.client()
    org = f"/v3/{server.organization}"
    ok(c.post("/v3/projects", json={"projectId": CLEAN, "parent": server.organization}))
    ok(c.post("/v3/projects", json={"projectId": BAD, "parent": server.organization}))
    user = f"user:{ADMIN}"

    def no_owner(pol: dict[str, Any]) -> dict[str, Any]:
        kept = [b for b in pol["bindings"] if b["role"] != "roles/owner"]
        kept += [{"role": r, "members": [user]} for r in ("roles/iam.serviceAccountAdmin",
                                                          "roles/iam.serviceAccountKeyAdmin",
                                                          "roles/policysimulator.admin")]
        return {**pol, "bindings": kept}
    _set_policy(c, org, no_owner)
    for p in (CLEAN, BAD):
        _set_policy(c, f"/v3/projects/{p}",
                    lambda pol: {**pol, "bindings": [{"role": "roles/resourcemanager.projectIamAdmin",
                                                      "members": [user]}]})
    return server


def test_lint_finds_nothing_on_a_clean_organization(clean: Server) -> None:
    r = kc(clean, "iam", "lint", "--format=json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []
    r = kc(clean, "iam", "lint", f"projects/{CLEAN}")
    assert r.returncode == 0 and "No findings" in r.stdout, r.stdout + r.stderr


@pytest.fixture(scope="module")
def seeded(clean: Server) -> dict[str, Any]:
    c = clean.client()
    number = ok(c.get(f"/v3/projects/{BAD}"))["name"].split("/")[1]
    sa = ok(c.post(f"/v1/projects/{BAD}/serviceAccounts", json={"accountId": "lint-sa"}))
    gone = ok(c.post(f"/v1/projects/{BAD}/serviceAccounts", json={"accountId": "lint-gone"}))
    key = ok(c.post(f"/v1/{sa['name']}/keys", json={}))
    compute = f"serviceAccount:{number}-compute@developer.gserviceaccount.com"
    many = [f"user:u{i}@example.com" for i in range(1250)]
    ok(c.post(f"/v2/policies/{ATT}/denypolicies", params={"policyId": "no-models-for-carol"}, json={"rules": [
        {"denyRule": {"deniedPrincipals": ["principal://goog/subject/carol@example.com"],
                      "deniedPermissions": [f"ml.googleapis.com/{p}" for p in
                                            ("models.get", "models.predict", "versions.get", "versions.list",
                                             "versions.predict")]}}]}))

    def seed(pol: dict[str, Any]) -> dict[str, Any]:
        return {**pol, "version": 3, "bindings": pol["bindings"] + [
            {"role": "roles/editor", "members": ["user:bob@example.com"]},
            {"role": "roles/ml.viewer", "members": ["allUsers"]},
            {"role": "roles/owner", "members": [f"serviceAccount:{sa['email']}"]},
            {"role": "roles/editor", "members": [compute]},
            {"role": "roles/ml.modelUser", "members": ["user:carol@example.com"]},
            {"role": "roles/ml.viewer", "members": [f"serviceAccount:{gone['email']}"]},
            {"role": "roles/ml.developer", "members": ["user:dan@example.com"],
             "condition": {"title": "expired", "expression": 'request.time < timestamp("2020-01-01T00:00:00Z")'}},
            {"role": "roles/browser", "members": many},
        ]}
    _set_policy(c, f"/v3/projects/{BAD}", seed)
    r = c.delete(f"/v1/{gone['name']}")
    assert r.status_code == 200, r.text
    # an old key: its record backdated in the store (the server follows the change feed)
    from keycard.store.base import Put
    from keycard.store.sql import open_store
    store = open_store(clean.database)
    try:
        key_id = key["name"].rsplit("/", 1)[1]
        rec = store.get("sa_key", key_id)
        assert rec is not None
        old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=120)).strftime("%Y-%m-%dT%H:%M:%SZ")
        store.commit([Put("sa_key", key_id, {**rec.data, "validAfterTime": old}, parent=rec.parent)])
    finally:
        store.close()
    return {"sa": sa, "gone": gone, "key": key, "compute": compute}


def _lint(server: Server, *args: str) -> tuple[int, list[dict[str, Any]]]:
    r = kc(server, "iam", "lint", *args, "--format=json")
    return r.returncode, json.loads(r.stdout)


def test_lint_finds_each_seeded_problem(clean: Server, seeded: dict[str, Any]) -> None:
    deadline = time.monotonic() + 30
    while True:
        code, findings = _lint(clean, f"projects/{BAD}")
        if any(f["rule"] == "key-too-old" for f in findings) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert code == 6
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for f in findings:
        by_rule.setdefault(f["rule"], []).append(f)
    assert set(by_rule) == {"basic-role", "public-access", "service-account-basic-role", "default-compute-editor",
                            "dead-binding", "deleted-principal", "condition-never-true", "policy-limits",
                            "key-too-old", "key-no-expiry", "key-never-used"}, sorted(by_rule)
    members = {r: {f.get("details", {}).get("member") for f in fs} for r, fs in by_rule.items()}
    assert members["basic-role"] == {"user:bob@example.com", f"serviceAccount:{seeded['sa']['email']}",
                                     seeded["compute"]}
    assert members["public-access"] == {"allUsers"} and by_rule["public-access"][0]["severity"] == "CRITICAL"
    assert members["service-account-basic-role"] == {f"serviceAccount:{seeded['sa']['email']}"}
    assert members["default-compute-editor"] == {seeded["compute"]}
    assert members["dead-binding"] == {"user:carol@example.com"}
    # deleting the account rewrote its member as Google does (deleted:serviceAccount:EMAIL?uid=N)
    assert members["deleted-principal"] == {f"deleted:serviceAccount:{seeded['gone']['email']}?uid="
                                            f"{seeded['gone']['uniqueId']}"}
    assert by_rule["policy-limits"][0]["details"]["used"] >= 1250
    assert {f["resource"] for f in by_rule["key-never-used"]} == {seeded["key"]["name"]}
    assert findings[0]["severity"] == "CRITICAL"                          # most severe first
    # --severity filters and decides the exit code
    code, high = _lint(clean, f"projects/{BAD}", "--severity", "HIGH")
    assert code == 6 and {f["severity"] for f in high} <= {"HIGH", "CRITICAL"} and high
    assert {f["rule"] for f in high} == {"basic-role", "public-access", "service-account-basic-role",
                                         "default-compute-editor"}
    code, clean_project = _lint(clean, f"projects/{CLEAN}")
    assert (code, clean_project) == (0, [])
    r = kc(clean, "iam", "lint", f"projects/{BAD}", "--severity", "BOGUS", "--format=json")
    assert r.returncode == 2, r.stdout + r.stderr


def test_lint_needs_get_iam_policy(clean: Server) -> None:
    r = kc(clean, "iam", "lint", f"projects/{BAD}", "--format=json", user="mallory@example.com")
    assert r.returncode == 1 and "resourcemanager.projects.getIamPolicy" in r.stderr, r.stderr


# ------------------------------------------------------------------------------ recommend and simulate
def test_recommend_and_apply(clean: Server, seeded: dict[str, Any], tmp_path: Path) -> None:
    r = kc(clean, "iam", "recommend", f"projects/{BAD}", "--format=json")
    assert r.returncode == 0, r.stderr
    recos = json.loads(r.stdout)
    bob = [x for x in recos if x["content"]["overview"]["member"] == "user:bob@example.com"]
    assert bob and bob[0]["recommenderSubtype"] == "REMOVE_ROLE"            # bob never used roles/editor
    rid = bob[0]["name"].rsplit("/", 1)[1]
    r = kc(clean, "iam", "recommend", f"projects/{BAD}", "--apply", rid, "--format=json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stateInfo"]["state"] == "SUCCEEDED"
    pol = ok(clean.client().post(f"/v3/projects/{BAD}:getIamPolicy", json={"options": {"requestedPolicyVersion": 3}}))
    assert not any("user:bob@example.com" in b["members"] and b["role"] == "roles/editor" for b in pol["bindings"])
    table = kc(clean, "iam", "recommend", f"projects/{BAD}")
    assert table.returncode == 0 and "SUCCEEDED" in table.stdout, table.stdout


def test_recommend_apply_replaces_a_role(clean: Server, seeded: dict[str, Any]) -> None:
    """gail holds roles/ml.admin but only read and predicted models: --apply swaps in roles/ml.modelUser."""
    from keycard.store.base import AccessRecord
    from keycard.store.sql import open_store
    c = clean.client()
    _set_policy(c, f"/v3/projects/{BAD}", lambda pol: {**pol, "bindings": [
        *pol["bindings"], {"role": "roles/ml.admin", "members": ["user:gail@example.com"]}]})
    minute = int(time.time()) // 60 - 60
    model = f"//ml.googleapis.com/projects/{BAD}/models/m1"
    store = open_store(clean.database)
    try:
        store.record_access([AccessRecord(minute, "user:gail@example.com", p, model, True, 2)
                             for p in ("ml.models.get", "ml.models.predict")])
    finally:
        store.close()
    recos = json.loads(kc(clean, "iam", "recommend", f"projects/{BAD}", "--format=json").stdout)
    gail = next(x for x in recos if x["content"]["overview"]["member"] == "user:gail@example.com")
    assert gail["recommenderSubtype"] == "REPLACE_ROLE"
    assert gail["content"]["overview"]["addedRoles"] == ["roles/ml.modelUser"]
    r = kc(clean, "iam", "recommend", f"projects/{BAD}", "--apply", gail["name"])
    assert r.returncode == 0 and "Applied" in r.stdout, r.stdout + r.stderr
    pol = ok(c.post(f"/v3/projects/{BAD}:getIamPolicy", json={"options": {"requestedPolicyVersion": 3}}))
    holders = {b["role"]: set(b["members"]) for b in pol["bindings"] if not b.get("condition")}
    assert "user:gail@example.com" in holders["roles/ml.modelUser"]
    assert "user:gail@example.com" not in holders.get("roles/ml.admin", set())


def test_simulate(clean: Server, seeded: dict[str, Any], tmp_path: Path) -> None:
    c = clean.client()
    pol = ok(c.post(f"/v3/projects/{BAD}:getIamPolicy", json={"options": {"requestedPolicyVersion": 3}}))
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"policy": pol}))                     # get-iam-policy output works as is
    r = kc(clean, "iam", "simulate", "--policy", str(path), f"//cloudresourcemanager.googleapis.com/projects/{BAD}",
           "--format=json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["replay"]["state"] == "SUCCEEDED" and out["results"] == []          # the same policy: no change
    assert out["replay"]["resultsSummary"]["logCount"] >= 1
    # frank lists the project's service accounts through a project-level grant; the proposal drops it
    ok(c.post(f"/v3/projects/{BAD}:setIamPolicy", json={"policy": {**pol, "bindings": pol["bindings"] + [
        {"role": "roles/iam.serviceAccountViewer", "members": ["user:frank@example.com"]}]}}))
    with httpx.Client(base_url=clean.url, headers={"Authorization": f"Bearer {clean.token('frank@example.com')}"}) \
            as f:
        assert f.get(f"/v1/projects/{BAD}/serviceAccounts").status_code == 200
    path.write_text(json.dumps(pol))
    r = kc(clean, "iam", "simulate", "--policy", str(path), f"projects/{BAD}", "--format=json")
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)["results"]
    assert [(x["accessTuple"]["principal"], x["accessTuple"]["permission"], x["diff"]["accessDiff"]["accessChange"])
            for x in results] == [("frank@example.com", "iam.serviceAccounts.list", "ACCESS_REVOKED")]
    table = kc(clean, "iam", "simulate", "--policy", str(path), f"projects/{BAD}")
    assert table.returncode == 0 and "ACCESS_REVOKED" in table.stdout, table.stdout
