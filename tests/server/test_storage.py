"""Cloud Storage JSON API against a live server, driven by google-cloud-storage (and httpx for bad input)."""

from __future__ import annotations

import io
import json
import os
import re
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
    for f in objects_dir(server).rglob("*"):     # resumable sessions: files named by keycard's upload ids
        assert f.is_dir() or f.name.isdigit() or re.match(r"^[A-Za-z0-9_-]{43}\.(json|part)$", f.name), f


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


# --------------------------------------------------------------------------------- resumable uploads

UPLOAD = f"/upload/storage/v1/b/{BUCKET}/o"


def _session(server: Server, name: str, user: str = ALICE, **headers: str) -> str:
    with server.client(user) as c:
        r = c.post(UPLOAD, params={"uploadType": "resumable"}, json={"name": name, "contentType": "text/plain"},
                   headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["location"].startswith(f"{server.url}/upload/storage/v1/b/{BUCKET}/o?uploadType=resumable")
    return str(r.headers["location"])


def _chunks_received(server: Server) -> float:
    """The server's count of PUTs to resumable sessions (its /metrics)."""
    text = httpx.get(f"{server.url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("keycard_requests_total{") and 'route="storage.objects.resumableUpload"' in line)


def _uploads(server: Server) -> list[str]:
    d = objects_dir(server) / ".uploads"
    return sorted(f.name for f in d.iterdir()) if d.exists() else []


def test_resumable_upload_of_a_large_file(server: Server, bucket: storage.Bucket, tmp_path: Path) -> None:
    """Over 8 MiB google-cloud-storage switches to the resumable protocol (one 100 MiB chunk by default)."""
    data = os.urandom(9 * 1024 * 1024 + 17)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    blob = client(server).bucket(BUCKET).blob("big/model.bin")
    before = _chunks_received(server)
    blob.upload_from_filename(str(src))
    assert _chunks_received(server) == before + 1
    assert blob.size == len(data) and blob.crc32c
    assert client(server).bucket(BUCKET).blob("big/model.bin").download_as_bytes() == data
    assert not [f for f in _uploads(server) if f.endswith(".part")]       # the part file became the object


def test_resumable_upload_in_chunks(server: Server, bucket: storage.Bucket) -> None:
    """A stream of unknown size with a chunk_size: 256 KiB chunks sent as ``bytes A-B/*`` until the last,
    which names the total. (google-cloud-storage 3.x uploads anything of known size up to 8 MiB in one
    multipart request, whatever the chunk_size.)"""
    data = os.urandom(3 * 256 * 1024 + 1000)                  # four chunks, the last one short
    blob = client(server).bucket(BUCKET).blob("chunked/data.bin")
    blob.chunk_size = 256 * 1024
    before = _chunks_received(server)
    blob.upload_from_file(io.BytesIO(data), content_type="application/x-test")
    assert _chunks_received(server) == before + 4
    got = client(server).bucket(BUCKET).get_blob("chunked/data.bin")
    assert got is not None and got.size == len(data) and got.content_type == "application/x-test"
    assert got.download_as_bytes() == data
    # overwriting through a session: the old generation's file goes, the new one is there
    blob2 = client(server).bucket(BUCKET).blob("chunked/data.bin")
    blob2.chunk_size = 256 * 1024
    blob2.upload_from_file(io.BytesIO(data[::-1]))
    assert client(server).bucket(BUCKET).blob("chunked/data.bin").download_as_bytes() == data[::-1]
    files = os.listdir(objects_dir(server) / BUCKET)
    assert str(got.generation) not in files and str(blob2.generation) in files


def test_resumable_session_protocol_by_hand(server: Server, bucket: storage.Bucket) -> None:
    uri = _session(server, "by-hand.txt")
    with server.client() as c:
        r = c.put(uri, content=b"0123456789", headers={"Content-Range": "bytes 0-9/20"})
        assert r.status_code == 308 and r.headers["range"] == "bytes=0-9" and "location" not in r.headers
        assert c.get(f"/storage/v1/b/{BUCKET}/o/by-hand.txt").status_code == 404      # not there until complete
        for query in ("bytes */*", "bytes */20"):
            r = c.put(uri, headers={"Content-Range": query})
            assert r.status_code == 308 and r.headers["range"] == "bytes=0-9", query
        r = c.put(uri, content=b"56789abcde", headers={"Content-Range": "bytes 5-14/20"})   # a retry overlapping
        assert r.status_code == 308 and r.headers["range"] == "bytes=0-14"
        for bad in ("bytes=0-4/20", "bytes 15-19/x", "bytes 15-10/20", "bytes 15-19/20 junk", "lots", "bytes 15-25/20"):
            r = c.put(uri, content=b"fghij", headers={"Content-Range": bad})
            assert r.status_code == 400 and "Content-Range" in r.text, (bad, r.text)
        r = c.put(uri, content=b"x", headers={"Content-Range": "bytes 17-17/20"})      # a gap
        assert r.status_code == 400 and "resume from byte 15" in r.text
        r = c.put(uri, content=b"fghij", headers={"Content-Range": "bytes 15-19/21"})  # another total
        assert r.status_code == 400
        r = c.put(uri, content=b"fghij", headers={"Content-Range": "bytes 15-19/20"})
        assert r.status_code == 200, r.text
        assert r.json()["name"] == "by-hand.txt" and r.json()["size"] == "20"
        assert r.json()["contentType"] == "text/plain"
        again = c.put(uri, headers={"Content-Range": "bytes */20"})                   # complete: the same answer
        assert again.status_code == 200 and again.json()["generation"] == r.json()["generation"]
        assert c.get(f"/storage/v1/b/{BUCKET}/o/by-hand.txt", params={"alt": "media"}).content == \
            b"0123456789abcdefghij"


def test_resumable_session_belongs_to_its_caller(server: Server, bucket: storage.Bucket) -> None:
    uri = _session(server, "private.txt")
    upload_id = uri.rsplit("upload_id=", 1)[1]
    with server.client(BOB) as c:
        theirs = c.put(uri, content=b"evil", headers={"Content-Range": "bytes 0-3/4"})
        unknown = c.put(uri.replace(upload_id, "A" * len(upload_id)), content=b"evil",
                        headers={"Content-Range": "bytes 0-3/4"})
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json()["error"]["message"].replace(upload_id[:64], "ID") == \
        unknown.json()["error"]["message"].replace("A" * len(upload_id), "ID")
    assert httpx.put(uri, content=b"evil", headers={"Content-Range": "bytes 0-3/4"}).status_code == 401
    with server.client() as c:     # the session is untouched
        r = c.put(uri, headers={"Content-Range": "bytes */*"})
        assert r.status_code == 308 and "range" not in r.headers
        other_bucket = uri.replace(f"/b/{BUCKET}/", "/b/kc-other-bucket-9/")
        assert c.put(other_bucket, content=b"x", headers={"Content-Range": "bytes 0-0/1"}).status_code == 404
        assert c.put(f"{server.url}{UPLOAD}", content=b"x").status_code == 400       # no session in the URI


def test_resumable_permissions_are_checked_when_the_session_starts(server: Server, bucket: storage.Bucket) -> None:
    with server.client("mallory@example.com") as c:
        r = c.post(UPLOAD, params={"uploadType": "resumable"}, json={"name": "m.txt"})
    assert r.status_code == 403 and "storage.objects.create" in r.text
    client(server).bucket(BUCKET).blob("taken.txt").upload_from_string("old")
    _grant(server, f"/storage/v1/b/{BUCKET}/iam", "roles/storage.objectCreator", "user:creator@example.com")
    _session(server, "fresh.txt", user="creator@example.com")           # create only: a new name is fine
    with server.client("creator@example.com") as c:
        r = c.post(UPLOAD, params={"uploadType": "resumable"}, json={"name": "taken.txt"})
    assert r.status_code == 403 and "storage.objects.delete" in r.text  # overwriting needs delete too


def test_resumable_checksum_mismatch_discards_the_upload(server: Server, bucket: storage.Bucket) -> None:
    uri = _session(server, "bad-hash.txt")
    before = sorted(os.listdir(objects_dir(server) / BUCKET))
    with server.client() as c:
        r = c.put(uri, content=b"hello", headers={"Content-Range": "bytes 0-4/5",
                                                  "X-Goog-Hash": "md5=AAAAAAAAAAAAAAAAAAAAAA=="})
        assert r.status_code == 400 and "X-Goog-Hash" in r.text
        assert c.get(f"/storage/v1/b/{BUCKET}/o/bad-hash.txt").status_code == 404
        assert c.put(uri, headers={"Content-Range": "bytes */*"}).status_code == 404
    assert sorted(os.listdir(objects_dir(server) / BUCKET)) == before
    upload_id = uri.rsplit("upload_id=", 1)[1]
    assert not [f for f in _uploads(server) if f.startswith(upload_id)]


def test_abandoned_resumable_sessions_expire(server: Server, bucket: storage.Bucket) -> None:
    uri = _session(server, "abandoned.txt")
    upload_id = uri.rsplit("upload_id=", 1)[1]
    with server.client() as c:
        assert c.put(uri, content=b"abc", headers={"Content-Range": "bytes 0-2/*"}).status_code == 308
    state = objects_dir(server) / ".uploads" / f"{upload_id}.json"
    session = json.loads(state.read_text())
    assert session["expires"] - session["created"] == 7 * 24 * 3600       # Google's session lifetime
    state.write_text(json.dumps({**session, "expires": session["created"] - 1}))   # a week later
    _session(server, "next.txt")            # starting a session removes expired ones
    assert not [f for f in _uploads(server) if f.startswith(upload_id)]
    with server.client() as c:
        assert c.put(uri, content=b"def", headers={"Content-Range": "bytes 3-5/6"}).status_code == 404
