"""Oracle: analyzeIamPolicy agrees with Engine.check on every (principal, permission, resource) of a
generated organization — folders, projects, buckets, models, service accounts, nested groups, domains,
public members, conditional bindings (time and resource), custom roles and deny policies."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from keycard.analysis.iam_analysis import Query, analyze
from keycard.engine.engine import Engine

CRM = "//cloudresourcemanager.googleapis.com"
ORG = f"{CRM}/organizations/1"
T = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
ROLES = ["roles/viewer", "roles/editor", "roles/browser", "roles/storage.objectViewer", "roles/storage.admin",
         "roles/ml.developer", "roles/ml.viewer", "roles/iam.serviceAccountUser",
         "roles/iam.serviceAccountTokenCreator", "roles/resourcemanager.folderViewer",
         "organizations/1/roles/custom"]
PERMISSIONS = ["resourcemanager.projects.get", "resourcemanager.folders.get", "storage.buckets.get",
               "storage.buckets.delete", "storage.objects.get", "ml.models.get", "ml.models.predict",
               "ml.models.delete", "iam.serviceAccounts.actAs", "iam.serviceAccounts.getAccessToken",
               "resourcemanager.projects.delete"]
CONDITIONS = ['request.time < timestamp("2026-03-01T00:00:00Z")', 'request.time > timestamp("2026-01-01T00:00:00Z")',
              'resource.name.startsWith("projects/_/buckets/bkt0")', 'resource.type == "ml.googleapis.com/Model"']


def org(seed: int) -> tuple[Engine, list[str], list[str]]:
    rng = random.Random(seed)
    eng = Engine(clock=lambda: T)
    eng.put_role({"name": "organizations/1/roles/custom", "title": "c",
                  "includedPermissions": ["ml.models.get", "storage.buckets.get"]})
    eng.add_resource(ORG)
    folders = [f"{CRM}/folders/{100 + i}" for i in range(3)]
    for i, f in enumerate(folders):
        eng.add_resource(f, ORG if i == 0 else rng.choice([ORG, *folders[:i]]))
    projects = [f"{CRM}/projects/{200 + i}" for i in range(4)]
    for p in projects:
        eng.add_resource(p, rng.choice([*folders, ORG]))
    leaves = []
    for i in range(3):
        b = f"//storage.googleapis.com/projects/_/buckets/bkt{i}"
        eng.add_resource(b, rng.choice(projects))
        leaves.append(b)
    for i in range(3):
        p = rng.choice(projects).rsplit("/", 1)[1]
        leaves.append(f"//ml.googleapis.com/projects/{p}/models/m{i}")
        eng.add_resource(leaves[-1])
    sas = [f"serviceAccount:sa{i}@p{i}.iam.gserviceaccount.com" for i in range(2)]
    for i, sa in enumerate(sas):
        leaves.append(f"//iam.googleapis.com/projects/p{i}/serviceAccounts/{sa.split(':')[1]}")
        eng.add_resource(leaves[-1], rng.choice(projects))
    users = [f"user:u{i}@example.com" for i in range(6)] + ["user:x@partner.example"]
    groups = [f"group:g{i}@example.com" for i in range(4)]
    eng.set_group_members("g3@example.com", rng.sample(users, 2))
    eng.set_group_members("g2@example.com", [*rng.sample(users, 2), "group:g3@example.com"])
    eng.set_group_members("g1@example.com", [rng.choice(users), "group:g2@example.com", sas[0]])
    eng.set_group_members("g0@example.com", rng.sample(users, 3))
    members = users + groups + sas + ["domain:example.com", "allAuthenticatedUsers", "allUsers"]
    for node in [ORG, *folders, *projects, *leaves]:
        if rng.random() < 0.25:
            continue
        bindings = []
        for _ in range(rng.randint(1, 4)):
            role = rng.choice(ROLES)
            if role.startswith("organizations/") and not node.startswith(CRM):
                role = "roles/viewer"
            b = {"role": role, "members": sorted(set(rng.sample(members, rng.randint(1, 3))))}
            if rng.random() < 0.3:
                b["condition"] = {"title": "c", "expression": rng.choice(CONDITIONS)}
            bindings.append(b)
        eng.set_iam_policy(node, {"version": 3, "bindings": bindings})
    eng.set_deny_policy(f"{CRM}/projects/{projects[0].rsplit('/', 1)[1]}", {"name": "d", "rules": [{"denyRule": {
        "deniedPrincipals": [f"principal://goog/subject/{users[0].split(':')[1]}"],
        "deniedPermissions": ["ml.googleapis.com/models.*", "storage.googleapis.com/buckets.get"]}}]})
    resources = [ORG, *folders, *projects, *leaves]
    return eng, users + sas, resources


def _grants(results: list[dict[str, object]], principal: str) -> bool:
    for r in results:
        denied = {d["identity"] for d in r.get("keycardDeniedIdentities", [])}  # type: ignore[attr-defined]
        if principal in denied:
            continue
        for acl in r["accessControlLists"]:  # type: ignore[attr-defined]
            if acl.get("conditionEvaluation", {}).get("evaluationValue", "TRUE") == "TRUE":
                return True
    return False


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_analyze_agrees_with_check_on_every_triple(seed: int) -> None:
    eng, principals, resources = org(seed)
    checked = granted = 0
    for r in resources:
        for perm in PERMISSIONS:
            who = analyze(eng, Query(resource=r, permissions=(perm,), expand_groups=True, access_time=T), None)
            for p in principals:
                decision = eng.check(p, perm, r, time=T).allowed
                mine = analyze(eng, Query(resource=r, identity=p, permissions=(perm,), access_time=T), None)
                assert _grants(mine, p) == decision, (p, perm, r)
                # the who-has answer (groups expanded) names the principal or a set it belongs to
                keys = set(eng.identity_keys(p))
                named = [x for x in who if keys & {i["name"] for i in x["identityList"]["identities"]}]
                if decision:
                    assert _grants(named, p), (p, perm, r)
                direct = [x for x in who if p in {i["name"] for i in x["identityList"]["identities"]}]
                if _grants(direct, p):
                    assert decision, (p, perm, r)
                checked += 1
                granted += decision
    assert checked > 1000 and 0 < granted < checked


def test_conditions_without_access_time_are_conditional() -> None:
    eng = Engine(clock=lambda: T)
    eng.set_iam_policy(f"{CRM}/projects/9", {"version": 3, "bindings": [
        {"role": "roles/viewer", "members": ["user:a@example.com"],
         "condition": {"title": "t", "expression": CONDITIONS[0]}}]})
    out = analyze(eng, Query(resource=f"{CRM}/projects/9", permissions=("resourcemanager.projects.get",)), None)
    assert out[0]["accessControlLists"][0]["conditionEvaluation"] == {"evaluationValue": "CONDITIONAL"}
    assert analyze(eng, Query(resource=f"{CRM}/projects/9", permissions=("resourcemanager.projects.get",),
                              access_time=T), None) == []


def test_impersonation_paths_are_followed() -> None:
    eng = Engine(clock=lambda: T)
    sa = "runner@proj-one.iam.gserviceaccount.com"
    eng.set_iam_policy(f"{CRM}/projects/proj-one", {"bindings": [
        {"role": "roles/ml.developer", "members": [f"serviceAccount:{sa}"]}]})
    eng.set_iam_policy(f"//iam.googleapis.com/projects/proj-one/serviceAccounts/{sa}", {"bindings": [
        {"role": "roles/iam.serviceAccountTokenCreator", "members": ["user:eve@example.com"]}]})
    q = Query(resource=f"{CRM}/projects/proj-one", permissions=("ml.models.predict",), impersonation=True)
    out = analyze(eng, q, None)
    idents = [i["name"] for r in out for i in r["identityList"]["identities"]]
    assert f"serviceAccount:{sa}" in idents and "user:eve@example.com" in idents
    assert any(r.get("keycardImpersonates") == f"serviceAccount:{sa}" for r in out)


def test_expand_resources_and_resource_edges() -> None:
    eng = Engine(clock=lambda: T)
    eng.add_resource(ORG)
    eng.add_resource(f"{CRM}/folders/2", ORG)
    eng.add_resource(f"{CRM}/projects/3", f"{CRM}/folders/2")
    bucket = "//storage.googleapis.com/projects/_/buckets/bkt-one"
    eng.add_resource(bucket, f"{CRM}/projects/3")
    eng.set_iam_policy(f"{CRM}/folders/2", {"bindings": [{"role": "roles/viewer", "members": ["user:a@example.com"]}]})
    out = analyze(eng, Query(identity="user:a@example.com", expand_resources=True), None)
    assert [r["fullResourceName"] for r in out[0]["accessControlLists"][0]["resources"]] == [
        f"{CRM}/folders/2", f"{CRM}/projects/3", bucket]
    edges = analyze(eng, Query(resource=bucket, identity="user:a@example.com", output_resource_edges=True), None)
    assert edges[0]["accessControlLists"][0]["resourceEdges"] == [
        {"sourceNode": f"{CRM}/projects/3", "targetNode": bucket},
        {"sourceNode": f"{CRM}/folders/2", "targetNode": f"{CRM}/projects/3"}]
    # scoped to the project: the folder's policy is outside it
    assert analyze(eng, Query(resource=bucket, identity="user:a@example.com"), f"{CRM}/projects/3") == []
