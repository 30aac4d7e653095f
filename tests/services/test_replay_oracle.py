"""The simulator's replay agrees with the engine's what-if check (Engine.check_with_policy) on every tuple.

A small organization with folders, projects, groups, a deny policy, a conditional binding and a custom
role; random access tuples; several proposed policies at different nodes. ``replay`` takes shortcuts
when the baseline decides the simulated answer — this holds it to the brute-force answer.
"""

from __future__ import annotations

import datetime as dt
import random

import pytest

from keycard.engine.engine import Engine
from keycard.engine.model import parse_allow_policy
from keycard.services.simulator import replay
from keycard.store.base import AccessRecord

CRM = "//cloudresourcemanager.googleapis.com"
ORG, FOLDER = f"{CRM}/organizations/1", f"{CRM}/folders/2"
P1, P2 = f"{CRM}/projects/proj-one", f"{CRM}/projects/proj-two"
MODELS = [f"//ml.googleapis.com/projects/{p}/models/m{i}" for p in ("proj-one", "proj-two") for i in range(3)]
USERS = [f"user:u{i}@example.com" for i in range(8)]
PERMS = ["ml.models.get", "ml.models.predict", "ml.models.delete", "ml.versions.list", "resourcemanager.projects.get",
         "ml.models.setIamPolicy"]
NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def engine() -> Engine:
    e = Engine(clock=lambda: NOW)
    e.add_resource(ORG)
    e.add_resource(FOLDER, ORG)
    e.add_resource(P1, FOLDER)
    e.add_resource(P2, ORG)
    e.set_group_members("group:team@example.com", [USERS[0], USERS[1]])
    e.put_role({"name": "projects/proj-one/roles/reader", "title": "r", "includedPermissions": ["ml.models.get"]})
    e.set_iam_policy(ORG, {"bindings": [{"role": "roles/ml.viewer", "members": [USERS[7]]}]})
    e.set_iam_policy(FOLDER, {"bindings": [{"role": "roles/ml.developer", "members": ["group:team@example.com"]}]})
    e.set_iam_policy(P1, {"version": 3, "bindings": [
        {"role": "roles/ml.admin", "members": [USERS[2], USERS[3]]},
        {"role": "roles/ml.modelUser", "members": [USERS[4], "group:team@example.com"]},
        {"role": "projects/proj-one/roles/reader", "members": [USERS[5]]},
        {"role": "roles/ml.modelOwner", "members": [USERS[6]],
         "condition": {"title": "t", "expression": 'request.time < timestamp("2027-01-01T00:00:00Z")'}}]})
    e.set_iam_policy(P2, {"bindings": [{"role": "roles/editor", "members": [USERS[3]]}]})
    e.set_deny_policy("cloudresourcemanager.googleapis.com/projects/proj-one", {"name": "d", "rules": [{"denyRule": {
        "deniedPrincipals": [f"principal://goog/subject/{USERS[3][5:]}"],
        "deniedPermissions": ["ml.googleapis.com/models.delete"]}}]})
    return e


PROPOSALS = [
    (P1, {"bindings": [{"role": "roles/ml.viewer", "members": [USERS[2]]}]}),               # most grants dropped
    (P1, {"version": 3, "bindings": [
        {"role": "roles/ml.admin", "members": [USERS[2], USERS[3], USERS[0]]},
        {"role": "projects/proj-one/roles/reader", "members": [USERS[5], USERS[6]]},
        {"role": "roles/ml.modelOwner", "members": [USERS[6]],
         "condition": {"title": "t", "expression": 'request.time < timestamp("2026-01-01T00:00:00Z")'}}]}),
    (FOLDER, {"bindings": []}),
    (ORG, {"bindings": [{"role": "roles/ml.admin", "members": ["allUsers"]}]}),
    (P2, {"bindings": [{"role": "roles/ml.modelUser", "members": ["group:team@example.com", USERS[3]]}]}),
]


@pytest.mark.parametrize("case", range(len(PROPOSALS)))
def test_replay_matches_check_with_policy(case: int) -> None:
    e = engine()
    target, raw = PROPOSALS[case]
    proposed = parse_allow_policy(raw)
    rnd = random.Random(case)
    resources = [ORG, FOLDER, P1, P2, *MODELS]
    rows = [AccessRecord(100 + i, rnd.choice([*USERS, "allUsers"]), rnd.choice(PERMS), rnd.choice(resources),
                         rnd.random() < 0.8) for i in range(600)]
    changed, summary = replay(e, target, proposed, rows, time=NOW)
    got = {(o.principal, o.permission, o.resource): (o.baseline, o.simulated) for o in changed}
    expected = {}
    seen = set()
    for r in rows:
        key = (r.principal, r.permission, r.resource)
        if key in seen or target not in e.ancestry(r.resource):
            continue
        seen.add(key)
        who = None if r.principal == "allUsers" else r.principal
        base = e.check(who, r.permission, r.resource, time=NOW).allowed
        sim = e.check_with_policy(who, r.permission, r.resource, at=target, policy=proposed, time=NOW)
        if base != sim:
            expected[key] = (base, sim)
    assert got == expected
    assert summary["logCount"] == len(seen) and summary["differenceCount"] == len(expected)
    assert summary["unchangedCount"] == len(seen) - len(expected)
    assert case == 2 or expected      # every proposal but the empty folder one changes something
