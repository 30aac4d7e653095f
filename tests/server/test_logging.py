"""Logging v2 entries.list over the audit log, read with google-api-python-client's logging v2 client."""

from __future__ import annotations

from typing import Any

import google.oauth2.credentials
import pytest
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from conftest import Server

ALICE = "alice@example.com"
BOB = "bob@example.com"          # roles/logging.viewer on the project
CAROL = "carol@example.com"      # roles/logging.privateLogViewer on the project
PROJECT = "lg-proj-1"
OTHER = "lg-proj-2"


def logging_client(server: Server, user: str = ALICE) -> Any:
    creds = google.oauth2.credentials.Credentials(token=server.token(user))
    return build("logging", "v2", credentials=creds, static_discovery=True,
                 client_options={"api_endpoint": server.url})


def entries(server: Server, body: dict[str, Any], user: str = ALICE) -> dict[str, Any]:
    out: dict[str, Any] = logging_client(server, user).entries().list(body=body).execute()
    return out


@pytest.fixture(scope="module")
def world(server: Server) -> dict[str, str]:
    c = server.client()
    for p in (PROJECT, OTHER):
        assert c.post("/v3/projects", json={"projectId": p, "parent": server.organization}).status_code == 200
    pol = c.post(f"/v3/projects/{PROJECT}:getIamPolicy", json={}).json()
    pol["bindings"] += [{"role": "roles/logging.viewer", "members": [f"user:{BOB}"]},
                        {"role": "roles/logging.privateLogViewer", "members": [f"user:{CAROL}"]}]
    pol["auditConfigs"] = [{"service": "allServices", "auditLogConfigs": [{"logType": "ADMIN_READ"}]}]
    r = c.post(f"/v3/projects/{PROJECT}:setIamPolicy", json={"policy": pol, "updateMask": "bindings,auditConfigs"})
    assert r.status_code == 200, r.text
    assert c.post(f"/v3/projects/{PROJECT}:getIamPolicy", json={}).status_code == 200   # a Data Access entry
    assert c.get(f"/v3/projects/{OTHER}").status_code == 200
    return {"org": server.organization}


def test_google_client_reads_the_organizations_audit_log_with_a_filter(server: Server, world: dict[str, str]
                                                                      ) -> None:
    out = entries(server, {"resourceNames": [world["org"]], "orderBy": "timestamp desc",
                           "filter": f'protoPayload.methodName:"SetIamPolicy" AND '
                                     f'protoPayload.authenticationInfo.principalEmail="{ALICE}"'})
    found = out["entries"]
    assert found and all("SetIamPolicy" in e["protoPayload"]["methodName"] for e in found)
    assert all(e["logName"] == f"{world['org']}/logs/cloudaudit.googleapis.com%2Factivity" for e in found)
    stamps = [e["timestamp"] for e in found]
    assert stamps == sorted(stamps, reverse=True)
    # create entries of both projects: a resource filter keeps one
    out = entries(server, {"resourceNames": [world["org"]],
                           "filter": 'resource.type="project" AND protoPayload.methodName:"CreateProject"'})
    assert len(out["entries"]) == 2


def test_a_project_reads_its_own_entries_under_its_log_name(server: Server, world: dict[str, str]) -> None:
    out = entries(server, {"resourceNames": [f"projects/{PROJECT}"],
                           "filter": f'logName="projects/{PROJECT}/logs/cloudaudit.googleapis.com%2Factivity"'})
    assert out["entries"]
    for e in out["entries"]:
        assert e["logName"].startswith(f"projects/{PROJECT}/logs/")
        assert e["resource"]["type"] == "project"
    shown = {e["protoPayload"]["resourceName"] for e in out["entries"]}
    other = entries(server, {"resourceNames": [f"projects/{OTHER}"]})["entries"]
    assert other and shown.isdisjoint({e["protoPayload"]["resourceName"] for e in other})


def test_timestamp_ranges_severity_and_or_not(server: Server, world: dict[str, str]) -> None:
    every = entries(server, {"resourceNames": [world["org"]], "pageSize": 1000})["entries"]
    middle = every[len(every) // 2]["timestamp"]
    later = entries(server, {"resourceNames": [world["org"]], "pageSize": 1000,
                             "filter": f'timestamp>="{middle}"'})["entries"]
    assert later and all(e["timestamp"] >= middle for e in later) and len(later) < len(every)
    notice = entries(server, {"resourceNames": [world["org"]], "pageSize": 1000,
                              "filter": "severity>=NOTICE AND NOT severity>NOTICE"})["entries"]
    assert notice and all(e["severity"] == "NOTICE" for e in notice)
    either = entries(server, {"resourceNames": [world["org"]], "pageSize": 1000,
                              "filter": 'protoPayload.methodName:"CreateProject" OR '
                                        'protoPayload.methodName:"SetIamPolicy"'})["entries"]
    assert {"CreateProject", "SetIamPolicy"} <= {e["protoPayload"]["methodName"].rsplit(".", 1)[-1]
                                                 for e in either}


def test_pages_follow_next_page_token_in_both_orders(server: Server, world: dict[str, str]) -> None:
    every = entries(server, {"resourceNames": [world["org"]], "pageSize": 1000})["entries"]
    for order, want in (("timestamp asc", every), ("timestamp desc", every[::-1])):
        got: list[str] = []
        token = None
        while True:
            body: dict[str, Any] = {"resourceNames": [world["org"]], "pageSize": 3, "orderBy": order}
            if token:
                body["pageToken"] = token
            page = entries(server, body)
            got += [e["insertId"] for e in page.get("entries", [])]
            token = page.get("nextPageToken")
            if not token:
                break
        assert got[:len(want)] == [e["insertId"] for e in want]


def test_data_access_logs_need_private_log_entries_list(server: Server, world: dict[str, str]) -> None:
    project = [f"projects/{PROJECT}"]
    private = 'logName:"data_access"'
    mine = entries(server, {"resourceNames": project, "filter": private}, CAROL)["entries"]
    assert mine and all(e["logName"] == f"projects/{PROJECT}/logs/cloudaudit.googleapis.com%2Fdata_access"
                        for e in mine)
    # bob may list entries, but not private ones: left out, and a filter naming them is refused
    bobs = entries(server, {"resourceNames": project, "pageSize": 1000}, BOB)["entries"]
    assert bobs and not any("data_access" in e["logName"] for e in bobs)
    with pytest.raises(HttpError) as e:
        entries(server, {"resourceNames": project, "filter": private}, BOB)
    assert e.value.resp.status == 403 and "logging.privateLogEntries.list" in str(e.value)
    # and nothing of the other project or the organization
    for names in ([f"projects/{OTHER}"], [world["org"]]):
        with pytest.raises(HttpError) as e:
            entries(server, {"resourceNames": names}, BOB)
        assert e.value.resp.status == 403 and "logging.logEntries.list" in str(e.value)


@pytest.mark.parametrize(("body", "field"), [
    ({}, "resourceNames"), ({"resourceNames": ["billingAccounts/1"]}, "resourceNames[0]"),
    ({"resourceNames": ["organizations/1"], "filter": "a=("}, "filter"),
    ({"resourceNames": ["organizations/1"], "orderBy": "severity"}, "orderBy"),
    ({"resourceNames": ["organizations/1"], "pageSize": -1}, "pageSize"),
    ({"resourceNames": ["organizations/1"], "pageToken": "nope"}, "pageToken"),
])
def test_bad_requests_are_400_naming_the_field(server: Server, world: dict[str, str], body: dict[str, Any],
                                               field: str) -> None:
    body = {**body, "resourceNames": [world["org"] if r == "organizations/1" else r
                                      for r in body.get("resourceNames", [])]} if body else body
    r = server.client().post("/v2/entries:list", json=body)
    assert r.status_code == 400, r.text
    assert field in r.json()["error"]["message"]
