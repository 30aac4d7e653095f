"""keycard plan/apply/export against live servers, through the real `keycard` entry point."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.conftest import KEYCARD, Server, start_server, stop_server

DOC = """
organization:
  iam: additive
  bindings:
    - role: organizations/ORG/roles/modelReader
      members: [group:ml-readers@example.com]
  roles:
    - roleId: modelReader
      title: Model reader
      stage: GA
      permissions: [ml.models.get, ml.models.list]
folders:
  - path: eng
  - path: eng/ml
    iam: authoritative
    bindings:
      - role: roles/viewer
        members: [user:vera@example.com]
projects:
  - projectId: pac-ml-prod
    displayName: ML prod
    parent: eng/ml
    labels: {env: prod}
    iam: authoritative
    bindings:
      - role: roles/owner
        members: [user:alice@example.com]
      - role: roles/ml.developer
        members: [group:ml-team@example.com, user:dave@example.com]
      - role: projects/pac-ml-prod/roles/jobRunner
        members: [serviceAccount:runner@pac-ml-prod.iam.gserviceaccount.com]
    denyPolicies:
      - id: no-model-delete
        displayName: Nobody deletes models
        rules:
          - denyRule:
              deniedPrincipals: ["principalSet://goog/group/ml-team@example.com"]
              exceptionPrincipals: ["principal://goog/subject/dave@example.com"]
              deniedPermissions: [ml.googleapis.com/models.delete]
    roles:
      - roleId: jobRunner
        title: Job runner
        stage: GA
        permissions: [ml.jobs.create, ml.jobs.get]
serviceAccounts:
  - email: runner@pac-ml-prod.iam.gserviceaccount.com
    displayName: Runner
    description: runs training jobs
    iam: authoritative
    bindings:
      - role: roles/iam.serviceAccountUser
        members: [user:dave@example.com]
groups:
  - email: ml-team@example.com
    displayName: ML team
    members: [user:bob@example.com, user:carol@example.com, group:ml-interns@example.com]
  - email: ml-interns@example.com
    members: [user:ian@example.com]
  - email: ml-readers@example.com
    members: [user:rita@example.com]
"""


def kc(server: Server, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KEYCARD_ENDPOINT": server.url, "KEYCARD_ACCESS_TOKEN": server.token(),
           "COLUMNS": "200"}
    out = subprocess.run([*KEYCARD, *args], capture_output=True, text=True, env=env, timeout=300)
    if check:
        assert out.returncode == 0, f"{args}: {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def plan_json(server: Server, path: Path) -> dict[str, Any]:
    return json.loads(kc(server, "plan", "-f", str(path), "--format", "json").stdout)


def export(server: Server, tmp: Path, name: str) -> dict[str, Any]:
    out = tmp / name
    kc(server, "export", "-f", str(out))
    return yaml.safe_load(out.read_text())


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    a, b = tmp_path_factory.mktemp("pac-a"), tmp_path_factory.mktemp("pac-b")
    sa = start_server(f"sqlite:///{a / 'keycard.db'}", a / "server.log")
    try:
        sb = start_server(f"sqlite:///{b / 'keycard.db'}", b / "server.log")
    except BaseException:
        stop_server(sa)
        raise
    yield sa, sb
    stop_server(sa)
    stop_server(sb)


def test_round_trip_idempotency_and_removal(servers: tuple[Server, Server], tmp_path: Path) -> None:
    a, b = servers
    doc = tmp_path / "org.yaml"
    doc.write_text(DOC)
    out = kc(a, "apply", "-f", str(doc))
    assert "Applied" in out.stdout, out.stdout
    # idempotent: a second apply changes nothing
    again = kc(a, "apply", "-f", str(doc), "--format", "json")
    assert json.loads(again.stdout)["changes"] == [] and json.loads(again.stdout)["summary"]["applied"] == 0
    # export -> apply to an empty server -> export gives the same document
    first = export(a, tmp_path, "a.yaml")
    assert any(p["projectId"] == "pac-ml-prod" for p in first["projects"])
    kc(b, "apply", "-f", str(tmp_path / "a.yaml"))
    second = export(b, tmp_path, "b.yaml")
    assert second == first
    assert plan_json(b, tmp_path / "a.yaml")["changes"] == []


USERS = ["alice", "bob", "carol", "dave", "ian", "rita", "vera", "mallory"]


def _doc2(tmp: Path) -> Path:
    """DOC with carol out of ml-team and dave's ml.developer binding removed."""
    d = yaml.safe_load(DOC)
    team = next(g for g in d["groups"] if g["email"] == "ml-team@example.com")
    team["members"].remove("user:carol@example.com")
    dev = next(b for b in d["projects"][0]["bindings"] if b["role"] == "roles/ml.developer")
    dev["members"].remove("user:dave@example.com")
    out = tmp / "org2.yaml"
    out.write_text(yaml.safe_dump(d, sort_keys=False))
    return out


def _held(server: Server, perms: list[str]) -> set[tuple[str, str]]:
    """(user:…, permission) the server (its engine) grants on the project, asked as each user."""
    out = set()
    for u in USERS:
        with server.client(f"{u}@example.com") as c:
            r = c.post("/v3/projects/pac-ml-prod:testIamPermissions", json={"permissions": perms})
            assert r.status_code == 200, r.text
            out |= {(f"user:{u}@example.com", p) for p in r.json().get("permissions", [])}
    return out


def test_plan_lists_exactly_the_lost_access(servers: tuple[Server, Server], tmp_path: Path) -> None:
    a, _b = servers
    doc2 = _doc2(tmp_path)
    plan = plan_json(a, doc2)
    kinds = {(c["action"], c["kind"], c["target"], c["detail"]) for c in plan["changes"]}
    assert ("remove", "membership", "ml-team@example.com", "user:carol@example.com") in kinds
    assert plan["lockouts"] == []
    lost = {(t["principal"], t["permission"]) for t in plan["access"]
            if t["change"] == "lost" and t["resource"] == "projects/pac-ml-prod"}
    assert not [t for t in plan["access"] if t["change"] == "gained"]
    with a.client() as c:
        dev = c.get("/v1/roles/ml.developer").json()["includedPermissions"]
    perms = sorted(set(dev) | {"ml.jobs.create", "ml.jobs.get", "ml.models.get"})
    before = _held(a, perms)
    kc(a, "apply", "-f", str(doc2))
    after = _held(a, perms)
    # the server's engine agrees: exactly the planned triples (of these users and permissions) went away
    assert before - after == {t for t in lost if t[0].split(":", 1)[1].split("@")[0] in USERS and t[1] in perms}
    assert after - before == set()
    assert {("user:carol@example.com", "ml.models.list"), ("user:dave@example.com", "ml.models.list")} <= lost
    assert ("user:bob@example.com", "ml.models.list") not in lost
    if "ml.models.delete" in dev:     # dave was excepted from the deny rule, carol was denied it all along
        assert ("user:dave@example.com", "ml.models.delete") in lost
        assert ("user:carol@example.com", "ml.models.delete") not in lost
    assert plan_json(a, doc2)["changes"] == []


def test_drift_shows_in_plan(servers: tuple[Server, Server], tmp_path: Path) -> None:
    a, _b = servers
    doc2 = _doc2(tmp_path)
    with a.client() as c:
        pol = c.post("/v3/projects/pac-ml-prod:getIamPolicy", json={"options": {"requestedPolicyVersion": 3}}).json()
        pol["bindings"].append({"role": "roles/viewer", "members": ["user:mallory@example.com"]})
        assert c.post("/v3/projects/pac-ml-prod:setIamPolicy", json={"policy": pol}).status_code == 200
    plan = plan_json(a, doc2)
    assert [(c["action"], c["kind"], c["target"]) for c in plan["changes"]] == [("set", "allowPolicy",
                                                                                "project:pac-ml-prod")]
    mallory = {t["permission"] for t in plan["access"] if t["principal"] == "user:mallory@example.com"
               and t["change"] == "lost" and t["resource"] == "projects/pac-ml-prod"}
    with a.client("mallory@example.com") as c:
        held = set(c.post("/v3/projects/pac-ml-prod:testIamPermissions",
                          json={"permissions": sorted(mallory)[:100]}).json().get("permissions", []))
    assert mallory and held == set(sorted(mallory)[:100])
    table = kc(a, "plan", "-f", str(doc2)).stdout
    assert "user:mallory@example.com" in table and "lost" in table
    kc(a, "apply", "-f", str(doc2))
    assert plan_json(a, doc2)["changes"] == []


def test_lockout_guard_and_override(servers: tuple[Server, Server], tmp_path: Path) -> None:
    a, _b = servers
    d = yaml.safe_load(_doc2(tmp_path).read_text())
    d["projects"][0]["denyPolicies"].append({"id": "freeze", "rules": [{"denyRule": {
        "deniedPrincipals": ["principalSet://goog/public:all"],
        "deniedPermissions": ["cloudresourcemanager.googleapis.com/projects.setIamPolicy"]}}]})
    doc3 = tmp_path / "org3.yaml"
    doc3.write_text(yaml.safe_dump(d, sort_keys=False))
    before = export(a, tmp_path, "before.yaml")
    refused = kc(a, "apply", "-f", str(doc3), check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "projects/pac-ml-prod" in refused.stderr and "resourcemanager.projects.setIamPolicy" in refused.stderr
    assert "--allow-lockout" in refused.stderr
    assert export(a, tmp_path, "after-refusal.yaml") == before
    kc(a, "apply", "-f", str(doc3), "--allow-lockout")
    after = export(a, tmp_path, "after.yaml")
    prod = next(p for p in after["projects"] if p["projectId"] == "pac-ml-prod")
    assert "freeze" in [p["id"] for p in prod["denyPolicies"]]


BAD = [
    ("projects:\n  - projectId: pac-bad-one\n    bindngs: []\n", "bad.yaml:3", "projects[0].bindngs"),
    ("projects:\n  - projectId: pac-bad-two\n    iam: authoritative\n    bindings:\n      - role: roles/nope\n"
     "        members: [user:x@example.com]\n", "bad.yaml:2", "roles/nope"),
    ("folders:\n  - path: eng\n    bindings:\n      - role: roles/viewer\n        members: [bob@example.com]\n",
     "bad.yaml:5", "folders[0].bindings[0].members"),
    ("groups:\n  - email: x@example.com\n    members: [user:a@example.com\n", "bad.yaml:", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "where", "what"), BAD)
def test_bad_documents_apply_nothing(servers: tuple[Server, Server], tmp_path: Path, text: str, where: str,
                                     what: str) -> None:
    _a, b = servers
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    before = export(b, tmp_path, "before.yaml")
    out = kc(b, "apply", "-f", str(bad), check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert where in out.stderr and what in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "Nothing was applied" in out.stderr
    assert export(b, tmp_path, "after.yaml") == before


def test_concurrent_change_fails_cleanly(servers: tuple[Server, Server], tmp_path: Path) -> None:
    from keycard.client import Client, StaticToken
    from keycard.pac.document import parse_text
    from keycard.pac.live import caller_principal, read_live
    from keycard.pac.plan import make_plan
    from keycard.pac.steps import ConcurrentChange, Context
    _a, b = servers
    d = yaml.safe_load(DOC)
    d["projects"][0]["bindings"].append({"role": "roles/viewer", "members": ["user:paula@example.com"]})
    with Client(b.url, StaticToken(b.token())) as client:
        live = read_live(client)
        assert caller_principal(client) == "user:alice@example.com"
        plan = make_plan(live, parse_text(yaml.safe_dump(d), "doc.yaml"))
        step = next(s for s in plan.steps if s.kind == "allowPolicy")
        with b.client() as c:     # someone else writes the policy between plan and apply
            pol = c.post("/v3/projects/pac-ml-prod:getIamPolicy",
                         json={"options": {"requestedPolicyVersion": 3}}).json()
            pol["bindings"].append({"role": "roles/viewer", "members": ["user:quinn@example.com"]})
            assert c.post("/v3/projects/pac-ml-prod:setIamPolicy", json={"policy": pol}).status_code == 200
        with pytest.raises(ConcurrentChange, match="changed after it was read"):
            step.run(Context(client, live))
    after = export(b, tmp_path, "after.yaml")
    prod = next(p for p in after["projects"] if p["projectId"] == "pac-ml-prod")
    assert not any("user:paula@example.com" in x["members"] for x in prod["bindings"])


def test_project_export_in_a_directory_plans_no_change(servers: tuple[Server, Server], tmp_path: Path) -> None:
    a, _b = servers
    d = tmp_path / "policies"
    d.mkdir()
    kc(a, "export", "--project", "pac-ml-prod", "-f", str(d / "project.yaml"))
    whole = export(a, tmp_path, "whole.yaml")
    (d / "groups.json").write_text(json.dumps({"groups": whole["groups"]}))
    project = yaml.safe_load((d / "project.yaml").read_text())
    assert [p["projectId"] for p in project["projects"]] == ["pac-ml-prod"] and "folders" not in project
    assert plan_json(a, d)["changes"] == []
    # the same project declared in two files is refused, naming both places
    (d / "again.yaml").write_text(yaml.safe_dump({"projects": [{"projectId": "pac-ml-prod"}]}))
    out = kc(a, "plan", "-f", str(d), check=False)
    assert out.returncode == 2 and "project:pac-ml-prod is already declared at" in out.stderr, out.stderr
