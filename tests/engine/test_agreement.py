"""The engine agrees with the brute-force reference evaluator on random worlds.

Hypothesis draws hierarchies, groups (nested, sometimes cyclic via the back door),
predefined and custom roles (some DISABLED or deleted, some scoped elsewhere),
allow policies with conditions, deny policies with exceptions, wildcards and
conditions — then random queries; every decision must match, and incremental
writes must match a fresh load.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from reference import Reference

from keycard import Engine

CRM = "//cloudresourcemanager.googleapis.com/"
T = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
USERS = ["user:ann@a.com", "user:bo@a.com", "user:cy@b.com", "user:Di@B.com",
         "serviceAccount:sa@p-one.iam.gserviceaccount.com"]
PRINCIPALS = [*USERS, None]


def low(member: str) -> str:
    kind, _, email = member.partition(":")
    return f"{kind}:{email.lower()}"


GROUPS = ["g1@a.com", "g2@a.com", "g3@b.com"]
PERMS = ["ml.models.get", "ml.models.delete", "ml.jobs.cancel", "storage.objects.get",
         "resourcemanager.projects.get", "iam.roles.list", "ml.versions.predict"]
PREDEFINED = {
    "roles/r.viewer": ["ml.models.get", "resourcemanager.projects.get", "ml.versions.predict"],
    "roles/r.dev": ["ml.models.get", "ml.models.delete", "ml.versions.predict"],
    "roles/r.admin": PERMS,
    "roles/r.storage": ["storage.objects.get"],
}
CONDITIONS = [
    'request.time < timestamp("2030-01-01T00:00:00Z")',     # true at T
    'request.time > timestamp("2030-01-01T00:00:00Z")',     # false
    'resource.name.startsWith("projects/_/buckets/b0")',
    'resource.name.endsWith("/models/m1")',
    'request.time.getHours("UTC") >= 9 && request.time.getHours("UTC") < 17',
    'request.path.startsWith("/x")',                        # errors: attribute absent
]
MEMBERS = [*(low(u) for u in USERS), *(f"group:{g}" for g in GROUPS), "domain:a.com", "domain:b.com",
           "allUsers", "allAuthenticatedUsers"]
V2 = {"user:ann@a.com": "principal://goog/subject/ann@a.com", "user:cy@b.com": "principal://goog/subject/cy@b.com",
      "group:g1@a.com": "principalSet://goog/group/g1@a.com", "group:g3@b.com": "principalSet://goog/group/g3@b.com",
      "sa": "principal://iam.googleapis.com/projects/-/serviceAccounts/sa@p-one.iam.gserviceaccount.com",
      "all": "principalSet://goog/public:all"}
V2_PERMS = ["ml.googleapis.com/models.delete", "ml.googleapis.com/models.*", "ml.googleapis.com/*.get",
            "storage.googleapis.com/*", "cloudresourcemanager.googleapis.com/projects.get",
            "iam.googleapis.com/roles.list"]


@st.composite
def worlds(draw: st.DrawFn) -> dict[str, Any]:
    org = f"{CRM}organizations/1"
    containers = [org]
    parents: dict[str, str | None] = {org: None}
    for i in range(draw(st.integers(0, 3))):
        f = f"{CRM}folders/{10 + i}"
        parents[f] = draw(st.sampled_from(containers))
        containers.append(f)
    projects = []
    for i in range(draw(st.integers(1, 3))):
        p = f"{CRM}projects/{100 + i}"
        parents[p] = draw(st.sampled_from(containers))
        projects.append(p)
    leaves = []
    for i in range(draw(st.integers(1, 4))):
        proj = draw(st.sampled_from(projects))
        num = proj.rsplit("/", 1)[1]
        if draw(st.booleans()):
            r = f"//ml.googleapis.com/projects/{num}/models/m{i}"
        else:
            r = f"//storage.googleapis.com/projects/_/buckets/b{i}x"
        parents[r] = proj
        leaves.append(r)
    roles: dict[str, dict[str, Any]] = {n: {"name": n, "includedPermissions": p} for n, p in PREDEFINED.items()}
    custom = []
    for i in range(draw(st.integers(0, 3))):
        scope_node = draw(st.sampled_from([org, *projects]))
        name = scope_node[len(CRM):] + f"/roles/c{i}"
        role = {"name": name, "includedPermissions": draw(st.lists(st.sampled_from(PERMS), max_size=4, unique=True)),
                "stage": draw(st.sampled_from(["GA", "GA", "BETA", "DISABLED"])), "deleted": draw(st.booleans()) and
                draw(st.booleans())}
        custom.append(role)
        roles[name] = {**role, "scope": scope_node}
    role_names = list(roles)
    nodes = list(parents)
    assets = []
    for n in nodes:
        bindings = []
        for _ in range(draw(st.integers(0, 3))):
            b: dict[str, Any] = {"role": draw(st.sampled_from(role_names)),
                                 "members": draw(st.lists(st.sampled_from(MEMBERS), min_size=1, max_size=3,
                                                          unique=True))}
            if draw(st.integers(0, 4)) == 0:
                b["condition"] = {"title": "c", "expression": draw(st.sampled_from(CONDITIONS))}
            bindings.append(b)
        rec: dict[str, Any] = {"name": n, "resource": {"parent": parents[n]} if parents[n] else {}}
        if bindings:
            rec["iamPolicy"] = {"version": 3, "bindings": bindings}
        assets.append(rec)
    groups: dict[str, list[str]] = {}
    for i, g in enumerate(GROUPS):
        ms = draw(st.lists(st.sampled_from([*(low(u) for u in USERS), "domain:b.com"]), max_size=2, unique=True))
        if i + 1 < len(GROUPS) and draw(st.booleans()):
            ms.append(f"group:{GROUPS[i + 1]}")         # nesting g1 ⊃ g2 ⊃ g3 (no cycles on the front door)
        groups[g] = ms
    deny = []
    for _ in range(draw(st.integers(0, 2))):
        node = draw(st.sampled_from([org, *containers[1:], *projects]))
        rule: dict[str, Any] = {
            "deniedPrincipals": draw(st.lists(st.sampled_from(list(V2.values())), min_size=1, max_size=2, unique=True)),
            "deniedPermissions": draw(st.lists(st.sampled_from(V2_PERMS), min_size=1, max_size=2, unique=True)),
        }
        if draw(st.booleans()):
            rule["exceptionPrincipals"] = draw(st.lists(st.sampled_from(list(V2.values())), max_size=1))
        if draw(st.booleans()):
            rule["exceptionPermissions"] = draw(st.lists(st.sampled_from(V2_PERMS), max_size=1))
        if draw(st.booleans()):
            rule["denialCondition"] = {"expression": draw(st.sampled_from(CONDITIONS))}
        deny.append({"attachmentPoint": node[2:], "policy": {"name": f"d{len(deny)}", "rules": [{"denyRule": rule}]}})
    child = f"{leaves[0]}/versions/v9" if "/models/" in leaves[0] else f"{leaves[0]}/objects/o.txt"
    queries = draw(st.lists(st.tuples(st.sampled_from(PRINCIPALS), st.sampled_from(PERMS),
                                      st.sampled_from([*nodes, child])),
                            min_size=1, max_size=25))
    return {"assets": assets, "groups": groups, "roles": roles, "custom": custom, "deny": deny, "queries": queries,
            "parents": parents}


def _engine(w: dict[str, Any]) -> Engine:
    catalog = [{"name": n, "includedPermissions": p} for n, p in PREDEFINED.items()]
    return Engine.load(w["assets"], groups=w["groups"], roles=w["custom"], deny_policies=w["deny"],
                       catalog=catalog, unknown_roles="ignore")


def _reference(w: dict[str, Any]) -> Reference:
    parents = w["parents"]
    assets = [{**a, "resource": {"parent": parents[a["name"]]}} for a in w["assets"]]
    for q in w["queries"]:
        r = q[2]
        if r not in parents:
            assets.append({"name": r, "resource": {"parent": r.rsplit("/", 2)[0]}})
    return Reference(assets, w["groups"], w["roles"], w["deny"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_engine_agrees_with_reference(w: dict[str, Any]) -> None:
    eng = _engine(w)
    ref = _reference(w)
    for principal, perm, res in w["queries"]:
        got = eng.check(principal, perm, res, time=T)
        want = ref.check(low(principal) if principal else None, perm, res, T)
        assert got.allowed == want, f"{principal} {perm} {res}\n{got}"
        assert got.allowed == eng.explain(principal, perm, res, time=T).allowed, str(got)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(), worlds())
def test_incremental_writes_match_a_fresh_load(w1: dict[str, Any], w2: dict[str, Any]) -> None:
    """Start from world 1's engine, write world 2's policies and groups into it: same answers as loading world 2."""
    eng = _engine(w1)
    for role in w2["custom"]:
        eng.put_role(role)
    for a in w2["assets"]:
        eng.add_resource(a["name"], w2["parents"][a["name"]])
    for a in w1["assets"]:
        if a["name"] not in w2["parents"] and "iamPolicy" in a:
            eng.set_iam_policy(a["name"], {"version": 3, "bindings": []})
    for a in w2["assets"]:
        eng.set_iam_policy(a["name"], a.get("iamPolicy", {"version": 3, "bindings": []}), unknown_roles="ignore")
    for g in GROUPS:
        eng.set_group_members(g, [])
    for g, ms in w2["groups"].items():
        eng.set_group_members(g, ms)
    for d in w1["deny"]:
        for p in eng.deny_policies(d["attachmentPoint"]):
            eng.delete_deny_policy(d["attachmentPoint"], p.name)
    for d in w2["deny"]:
        eng.set_deny_policy(d["attachmentPoint"], d["policy"])
    fresh = _engine(w2)
    for role in w1["custom"]:          # roles of world 1 stay defined in the incremental engine
        if role["name"] not in {r["name"] for r in w2["custom"]}:
            fresh.put_role(role)
    for principal, perm, res in w2["queries"]:
        if res in w1["parents"] and res not in w2["parents"]:
            continue
        assert eng.check(principal, perm, res, time=T).allowed == fresh.check(principal, perm, res, time=T).allowed
