"""Cloud Storage convenience values (projectOwner:P …) through the runtime: expanded into the project's
basic-role members, kept current when those change, independent of record order, and never growing the
caller's identity (an owner of many projects stays a handful of member keys)."""

from __future__ import annotations

from pathlib import Path

from keycard.runtime import Runtime
from keycard.store.base import Put
from keycard.store.sql import open_store

ORG = "//cloudresourcemanager.googleapis.com/organizations/1"


def _obj(i: int) -> str:
    return f"//storage.googleapis.com/projects/_/buckets/b-{i:04d}/objects/x"


def test_convenience_values_follow_the_project_policy(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'k.db'}")
    store.migrate()
    rt = Runtime(store)
    rt.bootstrap()
    puts = [Put("resource", ORG, {"name": "organizations/1"})]
    for i in range(50):        # policies before their resources: the order must not matter
        project = f"//cloudresourcemanager.googleapis.com/projects/{1000 + i}"
        bucket = f"//storage.googleapis.com/projects/_/buckets/b-{i:04d}"
        puts += [Put("iam_policy", project, {"bindings": [{"role": "roles/owner", "members": ["user:a@x.com"]},
                                                          {"role": "roles/viewer", "members": ["group:g@x.com"]}]}),
                 Put("resource", project, {"name": f"projects/{1000 + i}", "projectId": f"proj-{i:04d}"},
                     parent=ORG),
                 Put("iam_policy", bucket, {"bindings": [
                     {"role": "roles/storage.legacyObjectOwner", "members": [f"projectOwner:proj-{i:04d}"]},
                     {"role": "roles/storage.legacyObjectReader", "members": [f"projectViewer:proj-{i:04d}"]}]}),
                 Put("resource", bucket, {"name": f"b-{i:04d}"}, parent=project)]
    puts.append(Put("group", "groups/g", {"groupKey": {"id": "g@x.com"}, "keycardMembers": ["user:v@x.com"]}))
    store.commit(puts)
    rt.catch_up()
    e = rt.engine
    assert e.check("user:a@x.com", "storage.objects.update", _obj(5)).allowed
    assert e.check("user:v@x.com", "storage.objects.get", _obj(5)).allowed           # through the group
    assert not e.check("user:v@x.com", "storage.objects.update", _obj(5)).allowed
    assert not e.check("user:b@x.com", "storage.objects.get", _obj(5)).allowed
    assert len(e.identity_keys("user:a@x.com")) < 10
    store.commit([Put("iam_policy", "//cloudresourcemanager.googleapis.com/projects/1005",
                      {"bindings": [{"role": "roles/owner", "members": ["user:b@x.com"]}]})])
    rt.catch_up()
    assert not e.check("user:a@x.com", "storage.objects.update", _obj(5)).allowed
    assert e.check("user:b@x.com", "storage.objects.update", _obj(5)).allowed
    assert e.check("user:a@x.com", "storage.objects.update", _obj(6)).allowed
    fresh = Runtime(store)
    fresh.bootstrap()
    for principal in ("user:a@x.com", "user:b@x.com", "user:v@x.com"):
        for i in (5, 6):
            for perm in ("storage.objects.get", "storage.objects.update"):
                assert fresh.engine.check(principal, perm, _obj(i)).allowed == e.check(principal, perm, _obj(i)).allowed
    store.close()
