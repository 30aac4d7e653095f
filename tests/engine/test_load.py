"""Engine.load: Cloud Asset Inventory exports, Google's full role catalog, purity of the engine."""

from __future__ import annotations

import ast
import datetime as dt
import json
from pathlib import Path

import pytest

from keycard import Engine, InvalidArgument

ROOT = Path(__file__).resolve().parents[2]
ROLES_JSON = ROOT.parent / "shared" / "data" / "gcp-iam" / "roles.json"
T = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

needs_shared = pytest.mark.skipif(not ROLES_JSON.exists(),
                                  reason=f"{ROLES_JSON} not found: ../shared/data/gcp-iam is needed for this test")


@needs_shared
def test_all_google_roles_load_and_grant() -> None:
    catalog = json.loads(ROLES_JSON.read_text())
    assert len(catalog) == 2387
    eng = Engine(catalog=str(ROLES_JSON))
    assert len({r.name for r in eng.roles()}) >= 2387
    eng.set_iam_policy("projects/p-12345", {"bindings": [
        {"role": "roles/aiplatform.user", "members": ["user:a@x.com"]},
        {"role": "roles/compute.viewer", "members": ["user:a@x.com"]}]})
    assert eng.check("user:a@x.com", "aiplatform.endpoints.predict", "projects/p-12345", time=T).allowed
    assert eng.check("user:a@x.com", "compute.instances.list", "projects/p-12345", time=T).allowed
    assert not eng.check("user:a@x.com", "compute.instances.delete", "projects/p-12345", time=T).allowed
    finder = [r.name for r in eng.find_roles(["compute.instances.delete"])]
    assert "roles/compute.instanceAdmin.v1" in finder and "roles/owner" in finder


def _cai(tmp_path: Path, records: list[dict[str, object]]) -> Path:
    path = tmp_path / "assets.json"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_load_reads_gcloud_asset_export_in_snake_case_and_merges_records(tmp_path: Path) -> None:
    path = _cai(tmp_path, [
        {"name": "//cloudresourcemanager.googleapis.com/organizations/9", "asset_type":
         "cloudresourcemanager.googleapis.com/Organization", "ancestors": ["organizations/9"]},
        {"name": "//cloudresourcemanager.googleapis.com/projects/77", "asset_type":
         "cloudresourcemanager.googleapis.com/Project", "ancestors": ["projects/77", "organizations/9"],
         "resource": {"data": {"projectId": "proj-seven", "projectNumber": "77"},
                      "parent": "//cloudresourcemanager.googleapis.com/organizations/9"}},
        {"name": "//cloudresourcemanager.googleapis.com/projects/77", "asset_type":
         "cloudresourcemanager.googleapis.com/Project", "ancestors": ["projects/77", "organizations/9"],
         "iam_policy": {"bindings": [{"role": "roles/ml.viewer", "members": ["user:v@x.com"]}]}},
        {"name": "//storage.googleapis.com/raw-data", "asset_type": "storage.googleapis.com/Bucket",
         "ancestors": ["projects/77", "organizations/9"],
         "iam_policy": {"version": 3, "bindings": [{"role": "roles/storage.objectViewer", "members": ["group:g@x.com"],
                                                     "condition": {"expression":
                                                                   'resource.name.endsWith(".csv")'}}]}},
    ])
    eng = Engine.load(path, groups={"g@x.com": ["user:v@x.com"]})
    assert eng.binding_count == 2
    assert eng.check("user:v@x.com", "ml.models.list", "projects/proj-seven", time=T).allowed
    obj = "//storage.googleapis.com/projects/_/buckets/raw-data/objects/a/b.csv"
    assert eng.check("user:v@x.com", "storage.objects.get", obj, time=T).allowed
    assert not eng.check("user:v@x.com", "storage.objects.get", obj[:-4] + ".txt", time=T).allowed
    assert eng.ancestry(obj) == [obj, "//storage.googleapis.com/projects/_/buckets/raw-data",
                                 "//cloudresourcemanager.googleapis.com/projects/77",
                                 "//cloudresourcemanager.googleapis.com/organizations/9"]


@pytest.mark.parametrize(("line", "field"), [
    ('{"name": "not a name"}', "assets[0].name"),
    ('{"name": "//ml.googleapis.com/projects/p-1234/models/m", "iamPolicy": {"bindings": [{"role": "roles/viewer",'
     ' "members": ["user:bad"]}]}}', "assets[0].iamPolicy.bindings[0].members[0]"),
    ('[1, 2]', "assets[0]"),
    ('{"name": "//cloudresourcemanager.googleapis.com/projects/p-1234", "ancestors": "projects/p"}',
     "assets[0].ancestors"),
])
def test_bad_asset_records_name_the_field(tmp_path: Path, line: str, field: str) -> None:
    path = tmp_path / "a.json"
    path.write_text(line + "\n")
    with pytest.raises(InvalidArgument) as err:
        Engine.load(path)
    assert err.value.field == field


def test_unknown_roles_are_an_error_unless_ignored() -> None:
    rec = {"name": "//cloudresourcemanager.googleapis.com/projects/p-1234",
           "iamPolicy": {"bindings": [{"role": "roles/compute.admin", "members": ["user:a@x.com"]}]}}
    with pytest.raises(InvalidArgument) as err:
        Engine.load([rec])
    assert err.value.reason == "UNKNOWN_ROLE"
    eng = Engine.load([rec], unknown_roles="ignore")
    d = eng.check("user:a@x.com", "compute.instances.get", "projects/p-1234", time=T)
    assert not d.allowed and "unknown" in str(d)


def test_the_engine_package_imports_no_io_layers() -> None:
    """House rule 2: keycard.engine never imports store, http, identity, sockets or databases."""
    banned = {"keycard.store", "keycard.http", "keycard.identity", "keycard.services", "socket", "sqlite3",
              "http", "urllib.request", "requests", "httpx", "subprocess", "asyncio"}
    for path in (ROOT / "src" / "keycard" / "engine").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            for m in mods:
                assert not any(m == b or m.startswith(b + ".") for b in banned), f"{path.name} imports {m}"
