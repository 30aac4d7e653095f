"""Cloud Storage JSON API against a live server, driven by google-cloud-storage (and httpx for bad input)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import google.oauth2.credentials
import httpx
import pytest
from google.api_core import exceptions as gexc
from google.cloud import storage

from conftest import Server

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"
PROJECT = "storage-proj-1"
BUCKET = "kc-models-1"


def client(server: Server, user: str = ALICE) -> storage.Client:
    creds = google.oauth2.credentials.Credentials(token=server.token(user))
    return storage.Client(project=PROJECT, credentials=creds, client_options={"api_endpoint": server.url})


def objects_dir(server: Server) -> Path:
    return Path(server.database[len("sqlite:///"):]).parent / "objects"


@pytest.fixture(scope="module")
def bucket(server: Server) -> Iterator[storage.Bucket]:
    with server.client() as c:
        assert c.post("/v3/projects", json={"projectId": PROJECT, "parent": server.organization}).status_code == 200
    yield client(server).create_bucket(BUCKET)


def _grant(server: Server, resource_path: str, role: str, member: str) -> None:
    """Add a binding with a read-modify-write on a CRM node (POST) or a bucket (GET/PUT …/iam)."""
    with server.client() as c:
        if resource_path.startswith("/storage/"):
            policy = c.get(resource_path).json()
            policy.setdefault("bindings", []).append({"role": role, "members": [member]})
            assert c.put(resource_path, json=policy).status_code == 200
        else:
            policy = c.post(f"{resource_path}:getIamPolicy", json={}).json()
            policy.setdefault("bindings", []).append({"role": role, "members": [member]})
            assert c.post(f"{resource_path}:setIamPolicy", json={"policy": policy}).status_code == 200


def test_upload_download_list_delete(server: Server, bucket: storage.Bucket) -> None:
    b = client(server).bucket(BUCKET)
    blob = b.blob("models/v1/model.bin")
    blob.upload_from_string(b"\x00\x01binary model\xff", content_type="application/octet-stream")
    b.blob("models/v1/README").upload_from_string("hello")
    b.blob("data/in.json").upload_from_string('{"instances": [[1, 2]]}', content_type="application/json")
    assert b.blob("models/v1/model.bin").download_as_bytes() == b"\x00\x01binary model\xff"
    got = b.get_blob("models/v1/model.bin")
    assert got is not None and got.size == 15 and got.md5_hash and got.content_type == "application/octet-stream"
    names = [x.name for x in client(server).list_blobs(BUCKET, prefix="models/")]
    assert names == ["models/v1/README", "models/v1/model.bin"]
    it = client(server).list_blobs(BUCKET, delimiter="/")
    assert [x.name for x in it] == [] and set(it.prefixes) == {"models/", "data/"}
    b.blob("models/v1/README").delete()
    assert b.get_blob("models/v1/README") is None


def test_overwrite_replaces_the_file_on_disk(server: Server, bucket: storage.Bucket) -> None:
    b = client(server).bucket(BUCKET)
    blob = b.blob("overwrite.txt")
    blob.upload_from_string("one")
    first = b.get_blob("overwrite.txt")
    blob.upload_from_string("two")
    second = b.get_blob("overwrite.txt")
    assert first is not None and second is not None and first.generation != second.generation
    assert b.blob("overwrite.txt").download_as_text() == "two"
    files = os.listdir(objects_dir(server) / BUCKET)
    assert str(second.generation) in files and str(first.generation) not in files


def test_object_names_never_reach_the_file_system(server: Server, bucket: storage.Bucket) -> None:
    b = client(server).bucket(BUCKET)
    for name in ("../../../etc/passwd", "a/../../b", "with space/and%percent", "ünïcødé/ok"):
        b.blob(name).upload_from_string(name)
        assert b.blob(name).download_as_text() == name
    for f in objects_dir(server).rglob("*"):
        assert f.is_dir() or f.name.isdigit(), f


def test_iam_members_and_convenience_values(server: Server, bucket: storage.Bucket) -> None:
    client(server).bucket(BUCKET).blob("shared/x.txt").upload_from_string("x")
    with pytest.raises(gexc.Forbidden) as e:
        client(server, BOB).bucket(BUCKET).blob("shared/x.txt").download_as_bytes()
    assert "storage.objects.get" in str(e.value)
    b = client(server).bucket(BUCKET)
    policy = b.get_iam_policy(requested_policy_version=3)
    policy.bindings.append({"role": "roles/storage.objectViewer", "members": {f"user:{BOB}"}})
    b.set_iam_policy(policy)
    assert client(server, BOB).bucket(BUCKET).blob("shared/x.txt").download_as_bytes() == b"x"
    with pytest.raises(gexc.Forbidden):
        client(server, BOB).bucket(BUCKET).blob("shared/y.txt").upload_from_string("y")
    # Viewers of the project read objects through the bucket's default projectViewer binding.
    with pytest.raises(gexc.Forbidden):
        client(server, CAROL).bucket(BUCKET).blob("shared/x.txt").download_as_bytes()
    _grant(server, f"/v3/projects/{PROJECT}", "roles/viewer", f"user:{CAROL}")
    assert client(server, CAROL).bucket(BUCKET).blob("shared/x.txt").download_as_bytes() == b"x"
    perms = client(server, CAROL).bucket(BUCKET).test_iam_permissions(["storage.objects.get",
                                                                        "storage.objects.delete"])
    assert perms == ["storage.objects.get"]


def test_bucket_lifecycle_and_errors(server: Server, bucket: storage.Bucket) -> None:
    c = client(server)
    tmp = c.create_bucket("kc-tmp-bucket-1")
    assert "kc-tmp-bucket-1" in [x.name for x in c.list_buckets()]
    tmp.blob("f").upload_from_string("f")
    with pytest.raises(gexc.Conflict):
        tmp.delete()
    tmp.blob("f").delete()
    tmp.delete()
    assert not (objects_dir(server) / "kc-tmp-bucket-1").exists()
    with pytest.raises(gexc.NotFound):
        c.get_bucket("kc-tmp-bucket-1")
    with pytest.raises(gexc.Conflict):
        c.create_bucket(BUCKET)


@pytest.mark.parametrize("name", ["ab", "UPPER", "-lead", "has..dots.x", "192.168.0.1", "goog-x", "my-google-b"])
def test_bad_bucket_names(server: Server, bucket: storage.Bucket, name: str) -> None:
    with server.client() as c:
        r = c.post("/storage/v1/b", params={"project": PROJECT}, json={"name": name})
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize(("params", "headers", "body"), [
    ({"uploadType": "media"}, {}, b"no name"),
    ({"uploadType": "media", "name": "bad\nname"}, {}, b"x"),
    ({"uploadType": "resumableish", "name": "x"}, {}, b"x"),
    ({"uploadType": "multipart"}, {"Content-Type": "multipart/related; boundary=B"}, b"--B\r\n\r\nnot json\r\n--B--"),
    ({"uploadType": "multipart"}, {"Content-Type": "text/plain"}, b"x"),
])
def test_bad_uploads_are_400_and_leave_nothing(server: Server, bucket: storage.Bucket, params: dict[str, str],
                                               headers: dict[str, str], body: bytes) -> None:
    before = sorted(os.listdir(objects_dir(server) / BUCKET))
    with server.client() as c:
        r = c.post(f"/upload/storage/v1/b/{BUCKET}/o", params=params, headers=headers, content=body)
    assert r.status_code == 400, r.text
    assert sorted(os.listdir(objects_dir(server) / BUCKET)) == before


def test_missing_object_and_unauthenticated(server: Server, bucket: storage.Bucket) -> None:
    with server.client() as c:
        assert c.get(f"/storage/v1/b/{BUCKET}/o/nope").status_code == 404
        assert c.get(f"/download/storage/v1/b/{BUCKET}/o/nope", params={"alt": "media"}).status_code == 404
    assert httpx.get(f"{server.url}/storage/v1/b/{BUCKET}/o").status_code == 401
