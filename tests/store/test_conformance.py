"""The store conformance suite: every test runs on SQLite and on PostgreSQL (see conftest.py)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import Any

import pytest
from sqlalchemy import text

from keycard.errors import Aborted, InvalidArgument
from keycard.store.base import AccessRecord, Delete, Expect, Put, Record, Store
from keycard.store.sql import ABORTED_MESSAGE, SqlStore, open_store

RES = "resource"


def put(name: str, parent: str | None = None, kind: str = RES, deleted: bool = False, **data: Any) -> Put:
    return Put(kind=kind, name=name, data=data or {"n": name}, parent=parent, deleted=deleted)


def snapshot(store: SqlStore) -> tuple[Any, ...]:
    """Everything a commit could have written."""
    return (store.head(), list(store.scan()), store.changes(0), store.audit(limit=10_000))


def names(records: Any) -> list[str]:
    return [r.name for r in records]


# ------------------------------------------------------------------------------------------ basics

def test_implements_the_protocol(store: SqlStore) -> None:
    assert isinstance(store, Store)


def test_empty_store(store: SqlStore) -> None:
    assert store.head() == 0
    assert store.get(RES, "x") is None
    assert store.list(RES).records == []
    assert store.list(RES).next_token == ""
    assert list(store.scan()) == []
    assert store.changes(0) == []
    assert store.audit() == []
    assert store.verify_audit()[:2] == (True, None)


def test_put_get_and_update(store: SqlStore) -> None:
    rev = store.commit([put("folders/1", parent="organizations/1", n=1, nested={"b": [1, 2], "a": None})])
    assert rev == 1
    record = store.get(RES, "folders/1")
    assert record == Record(kind=RES, name="folders/1", data={"n": 1, "nested": {"b": [1, 2], "a": None}},
                            revision=1, created_revision=1, parent="organizations/1", deleted=False)
    assert store.get("role", "folders/1") is None  # kinds are separate namespaces
    rev2 = store.commit([put("folders/1", parent="organizations/2", n=2)])
    assert rev2 == 2
    updated = store.get(RES, "folders/1")
    assert updated is not None
    assert (updated.data, updated.revision, updated.created_revision) == ({"n": 2}, 2, 1)
    assert updated.parent == "organizations/2"


def test_unicode_and_special_characters_round_trip(store: SqlStore) -> None:
    data: dict[str, Any] = {"title": "Zürich ✓ 日本", "quote": "'\"\\", "empty": {}, "float": 1.5, "big": 2**62}
    store.commit([Put(kind=RES, name="projects/ü-1", data=data)])
    record = store.get(RES, "projects/ü-1")
    assert record is not None and record.data == data


def test_invalid_data_is_rejected_and_nothing_written(store: SqlStore) -> None:
    before = snapshot(store)
    with pytest.raises(InvalidArgument):
        store.commit([Put(kind=RES, name="x", data={"bad": object()})])
    with pytest.raises(InvalidArgument):
        store.commit([Put(kind=RES, name="x", data={"nan": float("nan")})])
    assert snapshot(store) == before


# ------------------------------------------------------------------------------------------ listing

def seed_tree(store: SqlStore) -> None:
    store.commit([
        put("folders/1", parent="organizations/1"),
        put("folders/2", parent="organizations/1"),
        put("folders/3", parent="folders/1"),
        put("projects/a", parent="folders/1"),
        put("projects/b", parent="organizations/1"),
        put("projects/c", parent="organizations/1", deleted=True),
        put("projects/a", kind="iam_policy"),
    ])


def test_list_orders_by_name_and_filters(store: SqlStore) -> None:
    seed_tree(store)
    assert names(store.list(RES).records) == ["folders/1", "folders/2", "folders/3", "projects/a", "projects/b"]
    assert names(store.list(RES, parent="organizations/1").records) == ["folders/1", "folders/2", "projects/b"]
    assert names(store.list(RES, prefix="projects/").records) == ["projects/a", "projects/b"]
    assert names(store.list(RES, parent="folders/1", prefix="projects/").records) == ["projects/a"]
    assert names(store.list(RES, parent="nobody").records) == []
    assert names(store.list("iam_policy").records) == ["projects/a"]
    assert names(store.list(RES, prefix="projects/", include_deleted=True).records) == [
        "projects/a", "projects/b", "projects/c"]


def test_list_prefix_is_literal_and_order_is_by_code_point(store: SqlStore) -> None:
    store.commit([put(n) for n in ["a_b", "axb", "a%c", "A", "b", "Z", "é", "a", "ab", "a\U0010ffff"]])
    assert names(store.list(RES).records) == ["A", "Z", "a", "a%c", "a_b", "ab", "axb", "a\U0010ffff", "b", "é"]
    assert names(store.list(RES, prefix="a_").records) == ["a_b"]
    assert names(store.list(RES, prefix="a%").records) == ["a%c"]
    assert names(store.list(RES, prefix="a").records) == ["a", "a%c", "a_b", "ab", "axb", "a\U0010ffff"]
    assert names(store.list(RES, prefix="A").records) == ["A"]


def test_paging_across_pages(store: SqlStore) -> None:
    store.commit([put(f"projects/p{i:02d}", parent="folders/1") for i in range(25)])
    store.commit([put(f"projects/q{i:02d}", parent="folders/2") for i in range(5)])
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = store.list(RES, parent="folders/1", page_size=10, page_token=token)
        pages += 1
        assert len(page.records) <= 10
        seen += names(page.records)
        token = page.next_token
        if not token:
            break
    assert pages == 3
    assert seen == [f"projects/p{i:02d}" for i in range(25)]
    exact = store.list(RES, parent="folders/2", page_size=5)  # exactly one full page: no next token
    assert len(exact.records) == 5 and exact.next_token == ""


def test_bad_page_token(store: SqlStore) -> None:
    for token in ["!!!not base64!!!", "_w==", "abc"]:
        with pytest.raises(InvalidArgument) as info:
            store.list(RES, page_token=token)
        assert info.value.field == "page_token"
        assert "page_token" in info.value.message


# ------------------------------------------------------------------------------------------ deletes

def test_soft_delete(store: SqlStore) -> None:
    store.commit([put("projects/a", n=1)])
    rev = store.commit([put("projects/a", deleted=True, n=1)])
    record = store.get(RES, "projects/a")
    assert record is not None and record.deleted and record.revision == rev and record.created_revision == 1
    assert store.list(RES).records == []
    assert names(store.list(RES, include_deleted=True).records) == ["projects/a"]
    last = store.changes(rev - 1)
    assert [(c.op, c.record.deleted if c.record else None) for c in last] == [("put", True)]
    store.commit([put("projects/a", n=2)])  # undelete keeps created_revision
    undeleted = store.get(RES, "projects/a")
    assert undeleted is not None and not undeleted.deleted and undeleted.created_revision == 1


def test_hard_delete(store: SqlStore) -> None:
    store.commit([put("projects/a"), put("projects/b")])
    rev = store.commit(deletes=[Delete(RES, "projects/a"), Delete(RES, "projects/never")])
    assert rev == 2
    assert store.get(RES, "projects/a") is None
    assert names(store.list(RES, include_deleted=True).records) == ["projects/b"]
    assert [(c.revision, c.name, c.op, c.record) for c in store.changes(1)] == [(2, "projects/a", "delete", None)]
    store.commit([put("projects/a")])  # recreated: a new record
    again = store.get(RES, "projects/a")
    assert again is not None and again.created_revision == 3


# ------------------------------------------------------------------------------------------ revisions

def test_revisions_increase_by_one_per_commit_and_stamp_records(store: SqlStore) -> None:
    revs = [store.commit([put(f"projects/{i}"), put("folders/shared", i=i)]) for i in range(1, 8)]
    assert revs == list(range(1, 8))
    assert store.commit() == 8  # an empty commit is still a commit
    store.append_audit([{"read": 1}])  # audit-only appends do not bump the revision
    assert store.head() == 8
    for i in range(1, 8):
        record = store.get(RES, f"projects/{i}")
        assert record is not None and record.revision == i == record.created_revision
    shared = store.get(RES, "folders/shared")
    assert shared is not None and (shared.revision, shared.created_revision) == (7, 1)


# ------------------------------------------------------------------------------------------ preconditions

def test_expect_match(store: SqlStore) -> None:
    rev = store.commit([put("p", v=1)], expect=[Expect(RES, "p", None)])
    rev2 = store.commit([put("p", v=2)], expect=[Expect(RES, "p", rev)])
    assert rev2 == rev + 1
    record = store.get(RES, "p")
    assert record is not None and record.data == {"v": 2}
    store.commit([put("q")], expect=[Expect(RES, "p", rev2), Expect("role", "p", None)])  # expect-only keys


@pytest.mark.parametrize("case", ["stale", "absent-but-expected", "present-but-expected-absent",
                                  "soft-deleted-counts-as-present"])
def test_expect_mismatch_aborts_and_writes_nothing(store: SqlStore, case: str) -> None:
    store.commit([put("p", v=1), put("d", v=1)], audit=[{"op": "seed"}])
    store.commit([put("p", v=2), put("gone", deleted=True)], audit=[{"op": "update"}])
    expect = {
        "stale": Expect(RES, "p", 1),
        "absent-but-expected": Expect(RES, "missing", 1),
        "present-but-expected-absent": Expect(RES, "p", None),
        "soft-deleted-counts-as-present": Expect(RES, "gone", None),
    }[case]
    before = snapshot(store)
    with pytest.raises(Aborted) as info:
        store.commit([put("p", v=3), put("new")], [Delete(RES, "d")],
                     expect=[Expect(RES, "d", 1), expect], audit=[{"op": "should not appear"}])
    assert info.value.message == ABORTED_MESSAGE
    assert info.value.status == "ABORTED"
    assert snapshot(store) == before
    assert store.verify_audit()[0]
    assert store.commit([put("new")]) == 3  # the failed commit used no revision


def test_aborted_message_can_be_customised(store: SqlStore) -> None:
    store.commit([put("p")])
    with pytest.raises(Aborted, match="etag mismatch"):
        store.commit([put("p")], expect=[Expect(RES, "p", 99)], abort_message="etag mismatch")


def test_duplicate_keys_in_one_commit(store: SqlStore) -> None:
    store.commit([put("p")])
    before = snapshot(store)
    with pytest.raises(InvalidArgument):
        store.commit([put("x", v=1), put("x", v=2)])
    with pytest.raises(InvalidArgument):
        store.commit([put("p")], [Delete(RES, "p")])
    with pytest.raises(InvalidArgument):
        store.commit(deletes=[Delete(RES, "p"), Delete(RES, "p")])
    assert snapshot(store) == before
    store.commit([put("x"), put("x", kind="role")])  # same name, other kind: fine


# ------------------------------------------------------------------------------------------ change feed

def test_changes_feed(store: SqlStore) -> None:
    store.commit([put("a", v=1, parent="f"), put("b", v=1)])
    store.commit([put("a", v=2, parent="f")])
    store.commit([put("c", v=1)], [Delete(RES, "b")])
    all_changes = store.changes(0)
    assert [(c.revision, c.name, c.op) for c in all_changes] == [
        (1, "a", "put"), (1, "b", "put"), (2, "a", "put"), (3, "b", "delete"), (3, "c", "put")]
    first = all_changes[0].record
    assert first == Record(kind=RES, name="a", data={"v": 1}, revision=1, created_revision=1, parent="f")
    second = all_changes[2].record
    assert second is not None and second.data == {"v": 2} and second.created_revision == 1
    assert all_changes[3].record is None
    assert [c.revision for c in store.changes(2)] == [3, 3]
    assert store.changes(3) == []
    assert [c.revision for c in store.changes(0, limit=2)] == [1, 1]
    # a limit never splits a revision: revision 1 has two changes, so both come back
    assert [c.revision for c in store.changes(0, limit=1)] == [1, 1]
    assert [c.revision for c in store.changes(0, limit=3)] == [1, 1, 2]
    assert [c.revision for c in store.changes(1, limit=2)] == [2, 3, 3]


def test_scan_streams_everything(store: SqlStore) -> None:
    store.commit([put(f"projects/{i:04d}") for i in range(1234)] + [put("r", kind="role", deleted=True)])
    everything = list(store.scan())
    assert len(everything) == 1235
    assert [(r.kind, r.name) for r in everything] == sorted((r.kind, r.name) for r in everything)
    assert names(store.scan(["role"])) == ["r"]
    assert len(list(store.scan([RES]))) == 1234
    assert list(store.scan(["nothing"])) == []


# ------------------------------------------------------------------------------------------ wait

def test_wait_returns_promptly_after_a_commit_from_another_thread(store: SqlStore) -> None:
    store.commit([put("a")])
    assert store.wait(0, 5) == 1  # already newer: immediately
    timer = threading.Timer(0.3, lambda: store.commit([put("b")]))
    started = time.monotonic()
    timer.start()
    try:
        assert store.wait(1, 10) == 2
    finally:
        timer.join()
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 1.5, elapsed


def test_wait_times_out(store: SqlStore) -> None:
    store.commit([put("a")])
    started = time.monotonic()
    assert store.wait(1, 0.4) == 1
    assert 0.35 <= time.monotonic() - started < 2.0


def test_wait_sees_commits_from_another_store_object(store: SqlStore) -> None:
    other = open_store(store.url)
    try:
        timer = threading.Timer(0.2, lambda: other.commit([put("x")]))
        timer.start()
        started = time.monotonic()
        assert store.wait(0, 10) == 1
        timer.join()
        assert time.monotonic() - started < 1.5
    finally:
        other.close()


# ------------------------------------------------------------------------------------------ audit

def seed_audit(store: SqlStore) -> None:
    store.commit([put("p")], audit=[{"methodName": "SetIamPolicy", "timestamp": "2024-01-02T03:04:05Z"},
                                    {"methodName": "second"}])
    store.append_audit([{"methodName": "GetIamPolicy"}])
    store.append_audit([])
    store.commit([put("q")], audit=[{"methodName": "CreateRole", "n": i} for i in range(3)])


def test_audit_chain(store: SqlStore) -> None:
    seed_audit(store)
    entries = store.audit()
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5, 6]
    assert [e.revision for e in entries] == [1, 1, None, 2, 2, 2]
    assert entries[0].time == "2024-01-02T03:04:05Z"
    assert entries[1].time.endswith("Z") and entries[1].time[:2] == "20"
    assert entries[2].entry == {"methodName": "GetIamPolicy"}
    prev = "0" * 64
    for e in entries:
        canonical = json.dumps(e.entry, sort_keys=True, separators=(",", ":"))
        assert e.prev_hash == prev
        assert e.hash == hashlib.sha256((prev + canonical).encode()).hexdigest()
        prev = e.hash
    assert [e.seq for e in store.audit(newest_first=True, limit=2)] == [6, 5]
    assert [e.seq for e in store.audit(since_seq=4)] == [5, 6]
    ok, seq, message = store.verify_audit()
    assert (ok, seq) == (True, None) and "6" in message


def tamper(store: SqlStore, sql: str) -> None:
    with store.engine.begin() as conn:
        for statement in sql.split(";"):
            conn.execute(text(statement))


@pytest.mark.parametrize(("sql", "broken"), [
    pytest.param("UPDATE audit SET entry = '{\"methodName\":\"forged\"}' WHERE seq = 3", 3, id="edited"),
    pytest.param("DELETE FROM audit WHERE seq = 2", 2, id="deleted"),
    pytest.param("UPDATE audit SET seq = -4 WHERE seq = 4; UPDATE audit SET seq = 4 WHERE seq = 5;"
                 "UPDATE audit SET seq = 5 WHERE seq = -4", 4, id="reordered"),
    pytest.param("DELETE FROM audit WHERE seq = 6", 6, id="tail-deleted"),
    pytest.param("UPDATE audit SET prev_hash = hash WHERE seq = 5", 5, id="relinked"),
])
def test_audit_tampering_is_detected(store: SqlStore, sql: str, broken: int) -> None:
    seed_audit(store)
    tamper(store, sql)
    ok, seq, message = store.verify_audit()
    assert (ok, seq) == (False, broken), message
    assert str(broken) in message and "\n" not in message


# ------------------------------------------------------------------------------------------ concurrency

def test_concurrent_read_modify_write(store: SqlStore) -> None:
    store.commit([put("counter", value=0)])
    failures: list[BaseException] = []
    retries = [0]
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        try:
            start.wait()
            for _ in range(25):
                while True:
                    current = store.get(RES, "counter")
                    assert current is not None
                    try:
                        store.commit([put("counter", value=current.data["value"] + 1)],
                                     expect=[Expect(RES, "counter", current.revision)])
                        break
                    except Aborted:
                        with lock:
                            retries[0] += 1
        except BaseException as exc:  # anything but Aborted fails the test
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    final = store.get(RES, "counter")
    assert final is not None and final.data == {"value": 200}
    assert store.head() == 201 == final.revision
    assert [c.revision for c in store.changes(0, limit=1000)] == list(range(1, 202))


# ------------------------------------------------------------------------------------------ lifecycle

def test_migrate_twice_is_a_no_op(store: SqlStore) -> None:
    seed_tree(store)
    seed_audit(store)
    before = snapshot(store)
    store.migrate()
    store.migrate()
    assert snapshot(store) == before


def test_concurrent_migrate_from_two_stores(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(2)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(s: SqlStore) -> None:
        try:
            barrier.wait()
            s.migrate()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        assert stores[0].commit([put("a")]) == 1
        assert stores[1].head() == 1
    finally:
        for s in stores:
            s.close()


def test_reopen_keeps_everything(store: SqlStore) -> None:
    seed_tree(store)
    seed_audit(store)
    before = snapshot(store)
    store.close()
    with open_store(store.url, migrate=True) as reopened:
        assert snapshot(reopened) == before
        assert reopened.verify_audit()[0]
        assert reopened.commit([put("after")]) == before[0] + 1


def test_bad_urls() -> None:
    for url in ["mysql://x/y", "sqlite://", "sqlite:///:memory:", "nonsense"]:
        with pytest.raises(InvalidArgument):
            open_store(url)


def test_unstorable_text_is_rejected_on_every_backend(store: SqlStore) -> None:
    for bad in ["nul\x00name", "lone\ud800surrogate"]:
        with pytest.raises(InvalidArgument):
            store.commit([put(bad)])
        with pytest.raises(InvalidArgument):
            store.commit([put("ok", parent=bad)])
        with pytest.raises(InvalidArgument):
            store.get(RES, bad)
        with pytest.raises(InvalidArgument):
            store.list(RES, prefix=bad)
    with pytest.raises(InvalidArgument):
        store.list(RES, page_token="AA==")  # base64 of a NUL byte
    assert store.head() == 0


# ------------------------------------------------------------------------------------------ access record

def access(minute: int, principal: str = "user:a@example.com", permission: str = "ml.models.get",
           resource: str = "//ml.googleapis.com/projects/p/models/m", granted: bool = True,
           hits: int = 1) -> AccessRecord:
    return AccessRecord(minute, principal, permission, resource, granted, hits)


def test_access_record_merges_hits_by_key(store: SqlStore) -> None:
    assert list(store.accesses()) == []
    store.record_access([access(10), access(10, hits=2), access(10, granted=False), access(11, principal="user:ü")])
    store.record_access([access(10, hits=4), access(9, permission="ml.models.predict")])
    got = list(store.accesses())
    assert got == [access(9, permission="ml.models.predict"), access(10, granted=False), access(10, hits=7),
                   access(11, principal="user:ü")]
    assert store.head() == 0 and store.audit() == []          # no revision, no audit entry
    assert snapshot(store)[:3] == (0, [], [])


def test_access_record_range_and_batches(store: SqlStore) -> None:
    rows = [access(m, principal=f"user:u{i}@example.com") for m in range(100, 110) for i in range(7)]
    store.record_access(rows)
    assert len(list(store.accesses(batch=3))) == 70               # keyset pagination across batches
    window = list(store.accesses(since_minute=103, until_minute=105, batch=4))
    assert len(window) == 14 and {r.minute for r in window} == {103, 104}
    assert list(store.accesses(batch=5)) == sorted(rows, key=lambda r: (r.minute, r.principal, r.permission,
                                                                        r.resource, r.granted))


def test_access_record_prune(store: SqlStore) -> None:
    store.record_access([access(m) for m in range(50, 60)])
    assert store.prune_access(55) == 5
    assert [r.minute for r in store.accesses()] == list(range(55, 60))
    assert store.prune_access(55) == 0


def test_access_record_concurrent_writers_add_up(store: SqlStore) -> None:
    other = open_store(store.url)
    try:
        errors: list[BaseException] = []

        def run(s: SqlStore, n: int) -> None:
            try:
                for _ in range(n):
                    s.record_access([access(1, permission=f"p.r.v{i}") for i in range(5)][::-1])
            except BaseException as exc:
                errors.append(exc)
        threads = [threading.Thread(target=run, args=(s, 20)) for s in (store, other, store)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert [r.hits for r in store.accesses()] == [60] * 5
    finally:
        other.close()


def test_access_record_rejects_unstorable_text(store: SqlStore) -> None:
    with pytest.raises(InvalidArgument):
        store.record_access([access(1), access(1, principal="nul\x00")])
    assert list(store.accesses()) == []
