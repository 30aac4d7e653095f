"""The real `keycard` entry point: `keycard import --cai` into a running server's store, then `keycard asset …`
against the live server, --format=json parsed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import KEYCARD, Server

CRM = "//cloudresourcemanager.googleapis.com"
ORG, FOLDER, PROJECT_NUM, PROJECT = "777000000001", "777000000002", "777000000010", "imp-proj-1"
BUCKET = "//storage.googleapis.com/projects/_/buckets/imp-bucket-1"
ANALYSTS = "analysts@example.com"


def cai_export() -> list[dict[str, Any]]:
    anc = ["projects/" + PROJECT_NUM, f"folders/{FOLDER}", f"organizations/{ORG}"]
    return [
        {"name": f"{CRM}/organizations/{ORG}", "asset_type": "cloudresourcemanager.googleapis.com/Organization",
         "ancestors": [f"organizations/{ORG}"],
         "iam_policy": {"bindings": [{"role": "roles/iam.securityReviewer", "members": [f"group:{ANALYSTS}"]}]}},
        {"name": f"{CRM}/folders/{FOLDER}", "asset_type": "cloudresourcemanager.googleapis.com/Folder",
         "ancestors": [f"folders/{FOLDER}", f"organizations/{ORG}"],
         "resource": {"parent": f"{CRM}/organizations/{ORG}", "data": {"displayName": "ml"}}},
        {"name": f"{CRM}/projects/{PROJECT_NUM}", "asset_type": "cloudresourcemanager.googleapis.com/Project",
         "ancestors": anc, "resource": {"parent": f"{CRM}/folders/{FOLDER}",
                                        "data": {"projectId": PROJECT, "projectNumber": PROJECT_NUM}}},
        {"name": f"{CRM}/projects/{PROJECT_NUM}", "asset_type": "cloudresourcemanager.googleapis.com/Project",
         "ancestors": anc, "iam_policy": {"version": 3, "bindings": [
             {"role": "roles/storage.objectViewer", "members": [f"group:{ANALYSTS}"]},
             {"role": "roles/storage.admin", "members": ["user:ops@example.com"],
              "condition": {"title": "until 2030", "expression": 'request.time < timestamp("2030-01-01T00:00:00Z")'}},
             {"role": "roles/pubsub.editor", "members": ["user:ops@example.com"]}]}},
        {"name": BUCKET, "asset_type": "storage.googleapis.com/Bucket", "ancestors": anc,
         "iam_policy": {"bindings": [{"role": "roles/storage.objectAdmin", "members": ["user:writer@example.com"]}]}},
    ]


def kc(server: Server, *args: str, user: str = "alice@example.com", check: bool = True
       ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KEYCARD_CONFIG": "/nonexistent/keycard.yaml", "COLUMNS": "300"}
    out = subprocess.run([*KEYCARD, *args, "--endpoint", server.url, "--access-token", server.token(user)],
                         capture_output=True, text=True, env=env, timeout=120)
    if check:
        assert out.returncode == 0, out.stderr
    return out


@pytest.fixture(scope="module")
def imported(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("cai")
    (d / "export.ndjson").write_text("\n".join(json.dumps(r) for r in cai_export()) + "\n")
    (d / "groups.json").write_text(json.dumps({ANALYSTS: ["user:ann@example.com", "user:al@example.com"]}))
    out = subprocess.run([*KEYCARD, "import", "--cai", str(d / "export.ndjson"), "--groups", str(d / "groups.json"),
                          "--grant", "user:alice@example.com", "--database", server.database, "--format", "json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout)) | {"dir": str(d)}


def test_import_reports_what_it_wrote(imported: dict[str, Any]) -> None:
    assert imported["organizationsImported"] == [f"organizations/{ORG}"]
    assert imported["projects"] == 1 and imported["groups"] == 1
    assert imported["bindings"] == 1 + 3 + 1 + 1          # the org's, the project's, the bucket's, the grant


def test_who_can_read_objects_in_the_imported_bucket(server: Server, imported: dict[str, Any]) -> None:
    out = kc(server, "asset", "analyze-iam-policy", "--organization", ORG, "--full-resource-name", BUCKET,
             "--permissions", "storage.objects.get", "--expand-groups", "--format", "json")
    data = json.loads(out.stdout)
    results = data["mainAnalysis"]["analysisResults"]
    who = {i["name"] for r in results for i in r["identityList"]["identities"]}
    assert {f"group:{ANALYSTS}", "user:ann@example.com", "user:al@example.com", "user:writer@example.com",
            "user:ops@example.com"} <= who
    ops = next(r for r in results if r["iamBinding"]["role"] == "roles/storage.admin")
    assert ops["accessControlLists"][0]["conditionEvaluation"]["evaluationValue"] == "CONDITIONAL"
    table = kc(server, "asset", "analyze-iam-policy", "--organization", ORG, "--full-resource-name", BUCKET,
               "--permissions", "storage.objects.get")
    assert "roles/storage.objectViewer" in table.stdout


def test_search_all_iam_policies_by_member_and_role(server: Server, imported: dict[str, Any]) -> None:
    out = kc(server, "asset", "search-all-iam-policies", "--organization", ORG, "--query",
             "policy:ops@example.com", "--format", "json")
    found = json.loads(out.stdout)
    assert [r["resource"] for r in found] == [f"{CRM}/projects/{PROJECT_NUM}"]
    out = kc(server, "asset", "search-all-resources", "--organization", ORG, "--query", f"project:{PROJECT}",
             "--format", "json")
    assert {r["name"] for r in json.loads(out.stdout)} == {f"{CRM}/projects/{PROJECT_NUM}", BUCKET}


def test_export_to_the_object_store(server: Server, imported: dict[str, Any]) -> None:
    c = server.client()
    assert c.post("/v3/projects", json={"projectId": "cli-exp-proj", "parent": server.organization}).status_code == 200
    assert c.post("/storage/v1/b", params={"project": "cli-exp-proj"}, json={"name": "cli-exports"}).status_code == 200
    out = kc(server, "asset", "export", "--organization", ORG, "--content-type", "iam-policy",
             "--output-path", "gs://cli-exports/org.json", "--format", "json")
    op = json.loads(out.stdout)
    assert op["done"] and op["response"]["keycardAssetCount"] == 3
    body = c.get("/download/storage/v1/b/cli-exports/o/org.json", params={"alt": "media"}).text
    assert {json.loads(x)["name"] for x in body.splitlines()} == {
        f"{CRM}/organizations/{ORG}", f"{CRM}/projects/{PROJECT_NUM}", BUCKET}


def test_denied_caller_gets_exit_code_1_naming_the_permission(server: Server, imported: dict[str, Any]) -> None:
    out = kc(server, "asset", "analyze-iam-policy", "--organization", ORG, "--full-resource-name", BUCKET,
             user="ann@example.com", check=False)
    assert out.returncode == 1, out.stderr
    assert "cloudasset.assets.analyzeIamPolicy" in out.stderr


def test_a_bad_export_file_writes_nothing(server: Server, imported: dict[str, Any]) -> None:
    bad = Path(imported["dir"]) / "bad.ndjson"
    records = cai_export()
    records[0] = {**records[0], "name": "//cloudresourcemanager.googleapis.com/organizations/777000000099"}
    records.append({"name": f"{CRM}/projects/{PROJECT_NUM}", "iam_policy": {"bindings": [
        {"role": "roles/viewer", "members": ["nobody"]}]}})
    bad.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    out = subprocess.run([*KEYCARD, "import", "--cai", str(bad), "--database", server.database],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "members" in out.stderr, out.stderr
    found = kc(server, "asset", "search-all-resources", "--organization", ORG, "--query", "777000000099",
               "--format", "json")
    assert json.loads(found.stdout) == []
