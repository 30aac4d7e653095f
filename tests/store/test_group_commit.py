"""Group commit (SqlStore.commit): concurrent commits of one process written in one transaction.

Each request keeps its own preconditions, revision, change-log rows and audit entries; a request whose
precondition fails is Aborted alone and writes nothing; the others commit exactly once. The groups here
are forced by holding the store's write lock while the requests queue up, so every run exercises a group
of many requests (with keys of several kinds), whatever the machine's timing."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from keycard.errors import Aborted
from keycard.store.base import Expect, Put
from keycard.store.sql import SqlStore

RES = "resource"
POL = "iam_policy"


def _entry(tag: str) -> dict[str, Any]:
    return {"logName": "organizations/1/logs/cloudaudit.googleapis.com%2Factivity", "insertId": tag,
            "protoPayload": {"methodName": "Test", "resourceName": tag}}


def _queued(store: SqlStore, n: int, timeout: float = 30.0) -> None:
    """Wait until ``n`` commit requests are queued behind the write lock."""
    deadline = time.monotonic() + timeout
    while True:
        with store._queue_lock:
            if len(store._queue) >= n:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(store._queue)} of {n} commits queued")
        time.sleep(0.005)


def _run_group(store: SqlStore, requests: list[dict[str, Any]]) -> list[int | BaseException]:
    """Commit every request from its own thread, all queued behind the write lock, then released at once."""
    results: list[int | BaseException] = [RuntimeError("not run")] * len(requests)

    def run(i: int) -> None:
        try:
            results[i] = store.commit(**requests[i])
        except BaseException as exc:   # recorded, asserted by the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    with store._write_lock:            # nobody can lead a group until every request is queued
        for t in threads:
            t.start()
        _queued(store, len(requests))
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    return results


def test_a_group_commits_each_good_request_once_and_aborts_each_stale_one_alone(store: SqlStore) -> None:
    # existing records: 10 resources and 10 policies, whose revisions the requests below expect
    base = {name: store.commit([Put(kind, name, {"v": 0})]) for kind in (RES, POL)
            for name in (f"{kind}-{i}" for i in range(10))}
    head0 = store.head()
    audit0 = len(store.audit(limit=10_000))
    requests: list[dict[str, Any]] = []
    good: set[int] = set()
    for i in range(10):
        for kind in (RES, POL):
            name = f"{kind}-{i}"
            fresh = i % 3 != 0                  # a third of them carry a stale revision
            requests.append({"puts": [Put(kind, name, {"v": 1, "by": len(requests)})],
                             "expect": [Expect(kind, name, base[name] if fresh else base[name] - 1)],
                             "audit": [_entry(f"req-{len(requests)}")]})
            if fresh:
                good.add(len(requests) - 1)
    for i in range(4):                          # new records: must not exist yet
        requests.append({"puts": [Put(RES, f"new-{i}", {"v": 1, "by": len(requests)})],
                         "expect": [Expect(RES, f"new-{i}", None)], "audit": [_entry(f"req-{len(requests)}")]})
        good.add(len(requests) - 1)
    requests.append({"puts": [Put(RES, "missing", {"v": 1})],                     # expects a record that is absent
                     "expect": [Expect(RES, "missing", 1)], "audit": [_entry(f"req-{len(requests)}")]})

    results = _run_group(store, requests)

    for i, r in enumerate(results):
        if i in good:
            assert isinstance(r, int), (i, r)
        else:
            assert isinstance(r, Aborted), (i, r)
    revisions = sorted(r for r in results if isinstance(r, int))
    assert revisions == list(range(head0 + 1, head0 + 1 + len(good)))     # contiguous, one per good request
    assert store.head() == head0 + len(good)
    # every good request's record is there, written by it, at its revision; a stale one changed nothing
    for i, req in enumerate(requests):
        p = req["puts"][0]
        rec = store.get(p.kind, p.name)
        if i in good:
            assert rec is not None and rec.data == p.data and rec.revision == results[i]
        elif p.name == "missing":
            assert rec is None
        else:
            assert rec is not None and rec.data == {"v": 0} and rec.revision == base[p.name]
    # the change feed: one change per good request, at its revision, in order
    changes = store.changes(head0)
    assert [(c.revision, c.kind, c.name) for c in changes] == sorted(
        (results[i], requests[i]["puts"][0].kind, requests[i]["puts"][0].name) for i in good)
    # the audit log: exactly the good requests' entries, each once, stamped with its revision; chain intact
    new = store.audit(since_seq=audit0, limit=10_000)
    assert sorted(e.entry["insertId"] for e in new) == sorted(f"req-{i}" for i in good)
    assert all(e.revision == results[int(e.entry["insertId"].split("-")[1])] for e in new)
    assert [e.seq for e in new] == list(range(audit0 + 1, audit0 + 1 + len(good)))
    ok, seq, message = store.verify_audit()
    assert ok, (seq, message)


def test_in_a_group_the_first_of_two_writes_on_one_revision_wins(store: SqlStore) -> None:
    rev = store.commit([Put(POL, "p", {"v": 0})])
    requests = [{"puts": [Put(POL, "p", {"v": i})], "expect": [Expect(POL, "p", rev)], "audit": [_entry(f"w{i}")]}
                for i in range(1, 6)]
    requests += [{"puts": [Put(RES, "born", {"v": i})], "expect": [Expect(RES, "born", None)],
                  "audit": [_entry(f"b{i}")]} for i in range(1, 4)]
    results = _run_group(store, requests)
    won = [i for i, r in enumerate(results) if isinstance(r, int)]
    assert len(won) == 2 and all(isinstance(r, Aborted) for i, r in enumerate(results) if i not in won)
    p, born = store.get(POL, "p"), store.get(RES, "born")
    assert p is not None and born is not None
    assert {p.revision, born.revision} == {results[i] for i in won}
    assert p.data == requests[won[0]]["puts"][0].data and born.data == requests[won[1]]["puts"][0].data
    assert store.head() == rev + 2
    assert len(store.changes(rev)) == 2
    assert len(store.audit(limit=100)) == 2 and store.verify_audit()[0]


def test_a_group_whose_requests_all_fail_writes_nothing(store: SqlStore) -> None:
    rev = store.commit([Put(RES, "a", {"v": 0})], audit=[_entry("first")])
    before = (store.head(), list(store.scan()), store.changes(0), store.audit(limit=100))
    results = _run_group(store, [{"puts": [Put(RES, "a", {"v": i})], "expect": [Expect(RES, "a", rev - 1)],
                                  "audit": [_entry(f"x{i}")]} for i in range(6)])
    assert all(isinstance(r, Aborted) for r in results)
    assert (store.head(), list(store.scan()), store.changes(0), store.audit(limit=100)) == before


@pytest.mark.parametrize("writers", [8])
def test_concurrent_writers_on_their_own_records_all_commit(store: SqlStore, writers: int) -> None:
    """Unforced groups: writers each run a read-modify-write loop on their own record, as setIamPolicy's
    clients do; every write lands once, revisions stay gap-free and the audit chain verifies."""
    per = 25
    failures: list[BaseException] = []
    start = threading.Barrier(writers)

    def worker(w: int) -> None:
        try:
            start.wait()
            for n in range(per):
                cur = store.get(POL, f"w{w}")
                store.commit([Put(POL, f"w{w}", {"n": n})],
                             expect=[Expect(POL, f"w{w}", cur.revision if cur else None)],
                             audit=[_entry(f"{w}-{n}")])
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == []
    assert store.head() == writers * per
    assert [c.revision for c in store.changes(0, limit=10_000)] == list(range(1, writers * per + 1))
    assert all((r := store.get(POL, f"w{w}")) is not None and r.data == {"n": per - 1} for w in range(writers))
    assert sorted(e.entry["insertId"] for e in store.audit(limit=10_000)) == sorted(
        f"{w}-{n}" for w in range(writers) for n in range(per))
    assert store.verify_audit()[0]
