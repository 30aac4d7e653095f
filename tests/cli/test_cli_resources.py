"""The `keycard` CLI over HTTP against a live server: config, organizations, folders, projects, policies,
exit codes, roles and the role finder, troubleshoot (--format=json parsed and asserted)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cli.kc import KEYCARD_BIN, kc, kcj
from server.conftest import ADMIN, Server, start_server, stop_server

PROJECT = "cli-proj-1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("cli")
    srv = start_server(f"sqlite:///{d / 'keycard.db'}", d / "server.log")
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def project(server: Server) -> str:
    out = kcj(server, "projects", "create", PROJECT, "--organization", server.organization.split("/")[1],
              "--name", "CLI project")
    assert out["projectId"] == PROJECT and out["parent"] == server.organization
    return PROJECT


def _members(policy: dict[str, Any], role: str) -> set[str]:
    return {m for b in policy.get("bindings", []) if b["role"] == role and not b.get("condition")
            for m in b["members"]}


def test_config_file_gives_the_endpoint_and_the_user(server: Server, tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    env_no_endpoint = {"KEYCARD_ENDPOINT": ""}
    assert kc(None, "config", "set", "endpoint", server.url, config=cfg).returncode == 0
    assert kc(None, "config", "set", "user", ADMIN, config=cfg).returncode == 0
    assert kc(None, "config", "set", "database", server.database, config=cfg).returncode == 0
    r = kc(None, "config", "get", "endpoint", config=cfg)
    assert r.returncode == 0 and r.stdout.strip() == server.url
    assert kc(None, "config", "get", "project", config=cfg).returncode == 3            # not set
    assert kc(None, "config", "set", "nonsense", "x", config=cfg).returncode == 2
    listed = kcj(None, "config", "list", config=cfg)
    assert listed["endpoint"] == server.url and listed["user"] == ADMIN
    # no --endpoint, no token: the config's endpoint and the local user token (the server's host)
    orgs = kcj(None, "organizations", "list", config=cfg, env=env_no_endpoint)
    assert [o["name"] for o in orgs] == [server.organization]


def test_organizations(server: Server) -> None:
    org_id = server.organization.split("/")[1]
    orgs = kcj(server, "organizations", "list")
    assert orgs[0]["name"] == server.organization and orgs[0]["displayName"] == "example.com"
    assert kcj(server, "organizations", "describe", org_id)["name"] == server.organization
    policy = kcj(server, "organizations", "get-iam-policy", org_id)
    assert f"user:{ADMIN}" in _members(policy, "roles/owner")


def test_folders(server: Server) -> None:
    org_id = server.organization.split("/")[1]
    a = kcj(server, "resource-manager", "folders", "create", "--display-name", "team-a", "--organization", org_id)
    b = kcj(server, "resource-manager", "folders", "create", "--display-name", "team-b", "--organization", org_id)
    a_id, b_id = a["name"].split("/")[1], b["name"].split("/")[1]
    listed = kcj(server, "resource-manager", "folders", "list", "--organization", org_id,
                 "--filter", "displayName=team-a")
    assert [f["name"] for f in listed] == [a["name"]]
    moved = kcj(server, "resource-manager", "folders", "move", b_id, "--folder", a_id)
    assert moved["parent"] == a["name"]
    assert kcj(server, "resource-manager", "folders", "describe", b_id)["parent"] == a["name"]
    kcj(server, "resource-manager", "folders", "add-iam-policy-binding", a_id, "--member", "group:eng@example.com",
        "--role", "roles/resourcemanager.folderViewer")
    pol = kcj(server, "resource-manager", "folders", "get-iam-policy", a_id)
    assert "group:eng@example.com" in _members(pol, "roles/resourcemanager.folderViewer")
    assert kcj(server, "resource-manager", "folders", "delete", b_id)["state"] == "DELETE_REQUESTED"


def test_projects_list_filter_describe(server: Server, project: str) -> None:
    listed = kcj(server, "projects", "list", "--filter", f"projectId={project}")
    assert [p["projectId"] for p in listed] == [project]
    assert kcj(server, "projects", "list", "--filter", "projectId:cli-proj AND displayName:CLI")[0]["projectId"] \
        == project
    assert kcj(server, "projects", "list", "--filter", "projectId=nope") == []
    assert kcj(server, "projects", "describe", project)["displayName"] == "CLI project"
    table = kc(server, "projects", "list")
    assert table.returncode == 0 and project in table.stdout and "PROJECT_ID" in table.stdout


def test_binding_add_remove_with_condition(server: Server, project: str) -> None:
    pol = kcj(server, "projects", "add-iam-policy-binding", project, "--member", "user:bob@example.com",
              "--role", "roles/viewer")
    assert "user:bob@example.com" in _members(pol, "roles/viewer")
    cond = "expression=request.time < timestamp('2030-01-01T00:00:00Z'),title=until 2030,description=temp"
    pol = kcj(server, "projects", "add-iam-policy-binding", project, "--member", "user:tmp@example.com",
              "--role", "roles/browser", "--condition", cond)
    assert pol["version"] == 3
    (b,) = [b for b in pol["bindings"] if b["role"] == "roles/browser"]
    assert b["condition"] == {"expression": "request.time < timestamp('2030-01-01T00:00:00Z')",
                              "title": "until 2030", "description": "temp"}
    # removing without the condition names the binding that is not there: exit 3
    r = kc(server, "projects", "remove-iam-policy-binding", project, "--member", "user:tmp@example.com",
           "--role", "roles/browser")
    assert r.returncode == 3 and "BINDING_NOT_FOUND" in r.stderr
    pol = kcj(server, "projects", "remove-iam-policy-binding", project, "--member", "user:tmp@example.com",
              "--role", "roles/browser", "--all")
    assert not any(b["role"] == "roles/browser" for b in pol.get("bindings", []))
    pol = kcj(server, "projects", "remove-iam-policy-binding", project, "--member", "user:bob@example.com",
              "--role", "roles/viewer")
    assert "user:bob@example.com" not in _members(pol, "roles/viewer")


def test_parallel_cli_adds_all_land(server: Server, project: str) -> None:
    users = [f"user:cli{i}@example.com" for i in range(8)]

    def add(member: str) -> int:
        return kc(server, "projects", "add-iam-policy-binding", project, "--member", member, "--role",
                  "roles/viewer", "--format", "json").returncode

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(add, users)) == [0] * len(users)
    assert set(users) <= _members(kcj(server, "projects", "get-iam-policy", project), "roles/viewer")


def test_set_iam_policy_with_a_stale_etag_is_exit_4(server: Server, project: str, tmp_path: Path) -> None:
    pol = kcj(server, "projects", "get-iam-policy", project)
    f = tmp_path / "policy.json"
    f.write_text(json.dumps(pol))
    kcj(server, "projects", "add-iam-policy-binding", project, "--member", "user:race@example.com", "--role",
        "roles/viewer")
    r = kc(server, "projects", "set-iam-policy", project, str(f))
    assert r.returncode == 4 and "ABORTED" in r.stderr
    fresh = kcj(server, "projects", "get-iam-policy", project)
    fresh["bindings"].append({"role": "roles/browser", "members": ["user:file@example.com"]})
    f.write_text(json.dumps(fresh))
    out = kcj(server, "projects", "set-iam-policy", project, str(f))
    assert "user:file@example.com" in _members(out, "roles/browser")


def test_exit_codes_and_what_to_do(server: Server, project: str) -> None:
    denied = kc(server, "projects", "delete", project, user="mallory@example.com")
    assert denied.returncode == 1
    assert "resourcemanager.projects.delete" in denied.stderr and "keycard iam roles find" in denied.stderr
    missing = kc(server, "resource-manager", "folders", "describe", "999999999", user=ADMIN)
    assert missing.returncode in (1, 3)                      # 403 before 404 unless the caller may see it
    bad = kc(server, "projects", "add-iam-policy-binding", project, "--member", "user:x@example.com", "--role",
             "roles/does.not.exist")
    assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr
    down = kc(None, "projects", "list", env={"KEYCARD_ENDPOINT": "http://127.0.0.1:9", "KEYCARD_ACCESS_TOKEN": "t"})
    assert down.returncode == 5 and "Cannot reach" in down.stderr
    nowhere = kc(None, "projects", "list", env={"KEYCARD_ACCESS_TOKEN": "t"})
    assert nowhere.returncode == 2 and "--endpoint" in nowhere.stderr
    anon = kc(server, "projects", "list", env={"KEYCARD_ACCESS_TOKEN": "not-a-token"})
    assert anon.returncode == 1 and "401" in anon.stderr


def test_projects_delete_undelete(server: Server) -> None:
    org_id = server.organization.split("/")[1]
    kcj(server, "projects", "create", "cli-doomed-1", "--organization", org_id)
    assert kcj(server, "projects", "delete", "cli-doomed-1")["state"] == "DELETE_REQUESTED"
    assert kcj(server, "projects", "undelete", "cli-doomed-1")["state"] == "ACTIVE"


def test_roles_find_and_custom_role_lifecycle(server: Server, project: str, tmp_path: Path) -> None:
    found = kcj(server, "iam", "roles", "find", "ml.models.get", "ml.models.predict")
    assert found and found[0]["name"] == "roles/ml.modelUser"
    sizes = [r["permissions"] for r in found]
    assert sizes == sorted(sizes)
    assert all(r["extraPermissions"] == r["permissions"] - 2 for r in found)
    assert kcj(server, "find-roles", "ml.models.get", "ml.models.predict")[0]["name"] == "roles/ml.modelUser"
    role_file = tmp_path / "role.yaml"
    r = kc(server, "iam", "roles", "find", "ml.models.get", "ml.models.predict", "--custom", "--format", "yaml")
    assert r.returncode == 0
    role_file.write_text(r.stdout)
    created = kcj(server, "iam", "roles", "create", "modelCaller", "--project", project, "--file", str(role_file))
    assert created["name"] == f"projects/{project}/roles/modelCaller"
    assert sorted(created["includedPermissions"]) == ["ml.models.get", "ml.models.predict"]
    updated = kcj(server, "iam", "roles", "update", "modelCaller", "--project", project,
                  "--add-permissions", "ml.versions.get", "--remove-permissions", "ml.models.predict")
    assert sorted(updated["includedPermissions"]) == ["ml.models.get", "ml.versions.get"]
    listed = kcj(server, "iam", "roles", "list", "--project", project)
    assert [x["name"] for x in listed] == [created["name"]]
    assert kcj(server, "iam", "roles", "describe", "roles/ml.modelUser")["name"] == "roles/ml.modelUser"
    assert kcj(server, "iam", "roles", "list", "--filter", "name=roles/viewer")[0]["title"] == "Viewer"
    assert kcj(server, "iam", "roles", "delete", "modelCaller", "--project", project)["deleted"] is True
    assert not kcj(server, "iam", "roles", "undelete", "modelCaller", "--project", project).get("deleted")


def test_troubleshoot_denied_then_the_remedy_command_grants(server: Server, project: str) -> None:
    who, perm = "dora@example.com", "resourcemanager.projects.get"
    r = kc(server, "iam", "troubleshoot", who, perm, f"projects/{project}", "--format", "json")
    assert r.returncode == 1, r.stderr
    answer = json.loads(r.stdout)
    assert answer["overallAccessState"] == "CANNOT_ACCESS"
    fix = answer["keycardRemedy"]
    assert fix["role"] == kcj(server, "iam", "roles", "find", perm)[0]["name"]     # the smallest role with it
    assert fix["fullResourceName"].startswith("//cloudresourcemanager.googleapis.com/projects/")
    cmd = shlex.split(fix["command"])
    assert cmd[:3] == ["keycard", "projects", "add-iam-policy-binding"]
    ran = kc(server, *cmd[1:])
    assert ran.returncode == 0, ran.stderr
    r = kc(server, "iam", "troubleshoot", who, perm, f"projects/{project}", "--format", "json")
    assert r.returncode == 0
    assert json.loads(r.stdout)["overallAccessState"] == "CAN_ACCESS"
    tree = kc(server, "iam", "troubleshoot", who, perm, f"projects/{project}")
    assert tree.returncode == 0 and "CAN_ACCESS" in tree.stdout and fix["role"] in tree.stdout


def test_shell_completion_script() -> None:
    import subprocess
    # Typer detects the shell from the process tree; its test switch takes the shell as the option's value
    r = subprocess.run([KEYCARD_BIN, "--show-completion", "bash"], capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert r.returncode == 0 and "complete" in r.stdout and "keycard" in r.stdout


def test_logs_read_over_http(server: Server, project: str) -> None:
    kcj(server, "projects", "add-iam-policy-binding", project, "--member", "user:logged@example.com", "--role",
        "roles/viewer")
    entries = kcj(server, "logs", "read", 'protoPayload.methodName="SetIamPolicy"', "--limit", "3",
                  "--project", project)
    assert 1 <= len(entries) <= 3
    assert all(e["protoPayload"]["methodName"] == "SetIamPolicy" for e in entries)
    newest = entries[0]["protoPayload"]
    assert newest["authenticationInfo"]["principalEmail"] == ADMIN
    deltas = newest["serviceData"]["policyDelta"]["bindingDeltas"]
    assert {"action": "ADD", "role": "roles/viewer", "member": "user:logged@example.com"} in deltas


def test_troubleshoot_draws_the_nested_group_chain(server: Server, project: str) -> None:
    customer = kcj(server, "organizations", "list")[0]["directoryCustomerId"]
    with server.client() as c:
        made = {}
        for g in ("tsinner@example.com", "tsouter@example.com"):
            r = c.post("/v1/groups", params={"initialGroupConfig": "EMPTY"},
                       json={"groupKey": {"id": g}, "parent": f"customers/{customer}",
                             "labels": {"cloudidentity.googleapis.com/groups.discussion_forum": ""}})
            assert r.status_code == 200, r.text
            made[g] = r.json()["response"]["name"]
        for group, member in (("tsinner@example.com", "nell@example.com"), ("tsouter@example.com",
                                                                             "tsinner@example.com")):
            r = c.post(f"/v1/{made[group]}/memberships",
                       json={"preferredMemberKey": {"id": member}, "roles": [{"name": "MEMBER"}]})
            assert r.status_code == 200, r.text
    kcj(server, "projects", "add-iam-policy-binding", project, "--member", "group:tsouter@example.com", "--role",
        "roles/browser")
    r = kc(server, "iam", "troubleshoot", "nell@example.com", "resourcemanager.projects.get", f"projects/{project}",
           "--format", "json")
    assert r.returncode == 0, r.stderr
    chains = json.loads(r.stdout)["keycardMembershipChains"]
    assert chains["group:tsouter@example.com"] == ["user:nell@example.com", "group:tsinner@example.com",
                                                   "group:tsouter@example.com"]
    tree = kc(server, "iam", "troubleshoot", "nell@example.com", "resourcemanager.projects.get", f"projects/{project}")
    assert "via user:nell@example.com → group:tsinner@example.com → group:tsouter@example.com" in tree.stdout
