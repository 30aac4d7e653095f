"""The access delta of a plan against brute force: Engine.check on every (principal, permission, resource)."""

from __future__ import annotations

import copy
import random

import pytest

from keycard.pac.access import _full, access_delta, build_engine, lockouts, relative_names, touched_nodes
from keycard.pac.document import parse_text
from keycard.pac.model import ORG, GroupSpec, Node, RoleSpec, State, flat

ROLES = ["roles/browser", "roles/ml.modelUser", "roles/ml.jobOwner", "roles/iam.serviceAccountUser",
         "roles/resourcemanager.projectIamAdmin", "roles/resourcemanager.folderIamAdmin",
         "organizations/1/roles/custom"]
USERS = [f"user:u{i}@example.com" for i in range(6)] + ["serviceAccount:sa@p-one-123.iam.gserviceaccount.com"]
GROUPS = [f"g{i}@example.com" for i in range(3)]
DENY_PERMS = ["ml.googleapis.com/models.get", "cloudresourcemanager.googleapis.com/projects.setIamPolicy",
              "ml.googleapis.com/jobs.*"]


def _state(rng: random.Random) -> State:
    st = State(organization="organizations/1")
    st.nodes[ORG] = Node(ORG, "")
    st.nodes["folder:f"] = Node("folder", "f", ORG, {"displayName": "f"})
    st.nodes["folder:f/g"] = Node("folder", "f/g", "folder:f", {"displayName": "g"})
    st.nodes["project:p-one-123"] = Node("project", "p-one-123", "folder:f/g", {})
    st.nodes["project:p-two-456"] = Node("project", "p-two-456", ORG, {})
    st.nodes["serviceAccount:sa@p-one-123.iam.gserviceaccount.com"] = Node(
        "serviceAccount", "sa@p-one-123.iam.gserviceaccount.com", "project:p-one-123", {})
    st.roles["organizations/1/roles/custom"] = RoleSpec("organizations/1/roles/custom", stage="GA",
                                                        permissions=("ml.models.get", "ml.jobs.get"))
    for g in GROUPS:
        st.groups[g] = GroupSpec(g, members=frozenset(rng.sample(USERS, 2)))
    st.groups[GROUPS[0]] = GroupSpec(GROUPS[0], members=st.groups[GROUPS[0]].members | {f"group:{GROUPS[1]}"})
    for n in st.nodes.values():
        n.mode = "authoritative"
        n.bindings = {}
        for _ in range(rng.randint(0, 3)):
            members = frozenset(rng.sample(USERS + [f"group:{g}" for g in GROUPS], 2))
            key = (rng.choice(ROLES), None)
            n.bindings[key] = n.bindings.get(key, frozenset()) | members
        n.deny = {}
        if n.kind != "serviceAccount" and rng.random() < 0.3:
            n.deny["d"] = {"rules": [{"denyRule": {
                "deniedPrincipals": [rng.choice(["principalSet://goog/group/g1@example.com",
                                                 "principal://goog/subject/u1@example.com",
                                                 "principalSet://goog/public:all"])],
                "deniedPermissions": [rng.choice(DENY_PERMS)]}}]}
    return st


def _mutate(st: State, rng: random.Random) -> State:
    out = copy.deepcopy(st)
    for _ in range(rng.randint(1, 3)):
        what = rng.randrange(5)
        if what == 0:
            n = rng.choice(list(out.nodes.values()))
            if n.bindings:
                key = rng.choice(list(n.bindings))
                n.bindings = {k: v for k, v in n.bindings.items() if k != key}
        elif what == 1:
            n = rng.choice(list(out.nodes.values()))
            n.bindings = {**(n.bindings or {}), (rng.choice(ROLES), None): frozenset(rng.sample(USERS, 1))}
        elif what == 2:
            g = rng.choice(GROUPS)
            out.groups[g] = GroupSpec(g, members=frozenset(rng.sample(USERS, rng.randint(0, 3))))
        elif what == 4:
            n = rng.choice([n for n in out.nodes.values() if n.kind != "serviceAccount"])
            n.deny = {} if n.deny else {"d": {"rules": [{"denyRule": {
                "deniedPrincipals": [rng.choice(["principalSet://goog/group/g0@example.com",
                                                 "principal://goog/subject/u2@example.com"])],
                "deniedPermissions": [rng.choice(DENY_PERMS)]}}]}}
        else:
            r = out.roles["organizations/1/roles/custom"]
            out.roles[r.name] = RoleSpec(r.name, stage="GA", permissions=tuple(rng.sample(
                ["ml.models.get", "ml.jobs.get", "ml.models.list", "resourcemanager.projects.get"], 2)))
    return out


def _brute(before: State, after: State, rel: dict[str, str]) -> set[tuple[str, str, str, str]]:
    old, new = build_engine(before, rel, strict=False), build_engine(after, rel, strict=False)
    principals = set(USERS) | {f"group:{g}" for g in GROUPS}
    perms = {p for st in (before, after) for n in st.nodes.values() for role, _c, _m in flat(n.bindings)
             for p in (st.roles[role].permissions if role in st.roles else old.get_role(role).permissions)}
    out = set()
    for nid in set(before.nodes) & set(after.nodes):
        res = _full(rel[nid])
        for p in principals:
            for perm in perms:
                a, b = old.check(p, perm, res).allowed, new.check(p, perm, res).allowed
                if a != b:
                    out.add(("gained" if b else "lost", p, perm, rel[nid]))
    return out


@pytest.mark.parametrize("seed", range(60))
def test_delta_agrees_with_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    before = _state(rng)
    after = _mutate(before, rng)
    rel = relative_names(after, {"folder:f": "folders/11", "folder:f/g": "folders/12"})
    old, new = build_engine(before, rel, strict=False), build_engine(after, rel, strict=False)
    got = {(t.change, t.principal, t.permission, t.resource) for t in access_delta(before, after, rel, old=old,
                                                                                     new=new)}
    assert got == _brute(before, after, rel)


def test_examines_only_what_changes() -> None:
    rng = random.Random(7)
    before = _state(rng)
    after = copy.deepcopy(before)
    after.nodes["project:p-two-456"].bindings = {("roles/browser", None): frozenset({"user:new@example.com"})}
    assert touched_nodes(before, after) == {"project:p-two-456"}
    after2 = copy.deepcopy(before)
    after2.nodes["folder:f"].bindings = {("roles/ml.modelUser", None): frozenset({"user:new@example.com"})}
    assert touched_nodes(before, after2) == {"folder:f", "folder:f/g", "project:p-one-123",
                                             "serviceAccount:sa@p-one-123.iam.gserviceaccount.com"}


def test_lockout_names_the_node() -> None:
    before = parse_text("organization:\n  iam: authoritative\n  bindings:\n"
                        "    - role: roles/resourcemanager.folderIamAdmin\n      members: [user:a@example.com]\n"
                        "folders:\n  - path: f\n", "d.yaml")
    before.organization = "organizations/1"
    after = copy.deepcopy(before)
    after.nodes[ORG].bindings = {("roles/browser", None): frozenset({"user:a@example.com"})}
    rel = relative_names(after, {"folder:f": "folders/11"})
    old, new = build_engine(before, rel, strict=False), build_engine(after, rel, strict=False)
    assert lockouts(before, after, rel, old=old, new=new, nodes={"folder:f", ORG}) == [
        "folders/11 (folder:f): no principal would hold resourcemanager.folders.setIamPolicy on it"]


def test_the_documented_example_is_valid() -> None:
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[2] / "docs" / "policy-as-code.md").read_text()
    st = parse_text(re.findall(r"```yaml\n(.*?)```", text, re.S)[0], "docs/policy-as-code.md")
    assert {"organization", "folder:eng/ml", "project:ml-prod"} <= set(st.nodes)
    assert st.nodes["project:ml-prod"].mode == "authoritative"


@pytest.mark.parametrize(("text", "message"), [
    ("projects:\n  - projectId: ok-project\n    iam: sometimes\n", "d.yaml:3: projects[0].iam: invalid value"),
    ("groups:\n  - email: g@example.com\n    members: [bob@example.com]\n", "d.yaml:3: groups[0].members[0]"),
    ("folders:\n  - path: eng\n  - path: eng\n", "folder:eng is already declared at d.yaml:2"),
    ("projects:\n  - projectId: ok-project\n    bindings:\n      - role: roles/viewer\n"
     "        members: [user:a@example.com]\n        condition: {expression: 'request.time <'}\n",
     "d.yaml:6: projects[0].bindings[0].condition.expression: projects[0].bindings[0].condition.expression is not"),
    ("organization:\n  roles:\n    - roleId: r1x\n      permissions: [not a permission]\n",
     "d.yaml:4: organization.roles[0].permissions[0]"),
])
def test_document_errors_name_file_line_field(text: str, message: str) -> None:
    from keycard.pac.document import DocumentError
    with pytest.raises(DocumentError) as e:
        parse_text(text, "d.yaml")
    assert message in e.value.message


def test_self_lockout_names_the_caller() -> None:
    before = parse_text("organization:\n  iam: authoritative\n  bindings:\n"
                        "    - role: roles/resourcemanager.folderIamAdmin\n      members: [user:root@example.com]\n"
                        "folders:\n  - path: f\n    iam: authoritative\n    bindings:\n"
                        "      - role: roles/resourcemanager.folderIamAdmin\n        members: [user:a@example.com]\n",
                        "d.yaml")
    before.organization = "organizations/1"
    after = copy.deepcopy(before)
    after.nodes["folder:f"].bindings = {("roles/browser", None): frozenset({"user:a@example.com"})}
    rel = relative_names(after, {"folder:f": "folders/11"})
    old, new = build_engine(before, rel, strict=False), build_engine(after, rel, strict=False)
    assert lockouts(before, after, rel, old=old, new=new, nodes={"folder:f"}) == []   # root still holds it
    assert lockouts(before, after, rel, old=old, new=new, nodes={"folder:f"}, caller="user:a@example.com",
                    written={"folder:f"}) == [
        "folders/11 (folder:f): you (user:a@example.com) would lose resourcemanager.folders.setIamPolicy on it"]
