"""make_plan on a server state given in memory (the live tests run the same over HTTP)."""

from __future__ import annotations

import pytest

from keycard.pac.document import DocumentError, parse_text
from keycard.pac.live import Live
from keycard.pac.model import AUTHORITATIVE, ORG, GroupSpec, Node, State
from keycard.pac.plan import make_plan


def _live() -> Live:
    st = State(organization="organizations/1")
    st.nodes[ORG] = Node(ORG, "", mode=AUTHORITATIVE, bindings={
        ("roles/resourcemanager.projectIamAdmin", None): frozenset({"user:admin@example.com"})}, deny={})
    st.nodes["project:prod-project"] = Node("project", "prod-project", ORG, {"displayName": "prod", "labels": {}},
                                            AUTHORITATIVE, {("roles/viewer", None): frozenset(
                                                {"user:bob@example.com", "group:team@example.com"})}, {})
    st.groups["team@example.com"] = GroupSpec("team@example.com", members=frozenset({"user:carol@example.com"}))
    return Live(st, customer="C01", names={ORG: "organizations/1", "project:prod-project": "projects/42"})


def _project(mode: str, members: str) -> str:
    return (f"projects:\n  - projectId: prod-project\n    displayName: prod\n    iam: {mode}\n    bindings:\n"
            f"      - role: roles/viewer\n        members: [{members}]\n")


def test_additive_never_removes_and_authoritative_does() -> None:
    add = make_plan(_live(), parse_text(_project("additive", "user:dan@example.com"), "d.yaml"))
    assert [(s.action, s.kind) for s in add.steps] == [("set", "allowPolicy")]
    assert {t.change for t in add.access} == {"gained"}
    assert {t.principal for t in add.access} == {"user:dan@example.com"}
    auth = make_plan(_live(), parse_text(_project("authoritative", "user:dan@example.com"), "d.yaml"))
    lost = {t.principal for t in auth.access if t.change == "lost"}
    assert lost == {"user:bob@example.com", "group:team@example.com", "user:carol@example.com"}
    assert make_plan(_live(), parse_text(_project("authoritative", "user:bob@example.com, group:team@example.com"),
                                         "d.yaml")).steps == []


def test_unknown_and_org_roles() -> None:
    with pytest.raises(DocumentError, match=r"d.yaml:2: project:prod-project: bindings: role "
                                            r"organizations/ORG/roles/nope does not exist"):
        make_plan(_live(), parse_text(_project("additive", "user:dan@example.com").replace(
            "roles/viewer", "organizations/ORG/roles/nope"), "d.yaml"))
    doc = ("organization:\n  roles:\n    - roleId: reader\n      permissions: [ml.models.get]\n"
           + _project("additive", "user:dan@example.com").replace("roles/viewer", "organizations/ORG/roles/reader"))
    plan = make_plan(_live(), parse_text(doc, "d.yaml"))
    first = plan.steps[0]
    assert (first.action, first.kind, first.target) == ("create", "role", "organizations/1/roles/reader")
    assert {(t.principal, t.permission) for t in plan.access} == {("user:dan@example.com", "ml.models.get")}


def test_group_membership_removal_and_missing_parent() -> None:
    doc = "groups:\n  - email: team@example.com\n    members: []\n"
    plan = make_plan(_live(), parse_text(doc, "d.yaml"))
    assert [(s.action, s.kind, s.detail) for s in plan.steps] == [("remove", "membership", "user:carol@example.com")]
    assert {t.principal for t in plan.access} == {"user:carol@example.com"}
    with pytest.raises(DocumentError, match=r"d\.yaml:2: project:new-project: its parent folder:nowhere"):
        make_plan(_live(), parse_text("projects:\n  - projectId: new-project\n    parent: nowhere\n", "d.yaml"))


def test_lockout_in_plan() -> None:
    doc = "organization:\n  iam: authoritative\n  bindings: []\n"
    plan = make_plan(_live(), parse_text(doc, "d.yaml"))
    # (no one held organizations.setIamPolicy before: projectIamAdmin does not grant it; nothing to lose there)
    assert plan.lockouts == ["projects/prod-project (project:prod-project): no principal would hold "
                             "resourcemanager.projects.setIamPolicy on it"]
