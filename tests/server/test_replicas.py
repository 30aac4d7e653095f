"""Scale-out: three `keycard serve` replicas on one PostgreSQL database.

Writes are spread across the replicas and checked on another one. With the consistency token (the
``X-Keycard-Revision`` a write returns, sent back on the check) no answer may be stale over 1,000
write-then-check trials; without it, every write must be visible on every other replica within 1 s.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Server, serve, start_server, stop_server
from pg import PgUnavailable, cluster_url, create_database, drop_database

TRIALS = 1000                 # write-then-check trials with the token (the figure: do not lower)
VISIBILITY_TRIALS = 300       # writes whose visibility on both other replicas is timed without the token
PROJECTS = [f"replica-p{i}" for i in range(5)]
PERMISSION = "resourcemanager.projects.get"
MAX_DELAY = 1.0


def start_replica(database: str, log: Path, organization: str) -> Server:
    """Another `keycard serve` on a free port against an already initialised database (no `keycard init`)."""
    return serve(database, log, organization)


def mint_tokens(database: str, users: list[str]) -> dict[str, str]:
    """User tokens minted in-process with the installation's key (one CLI run per user would take minutes)."""
    from keycard.server import KeyRing, utcnow
    from keycard.store.sql import open_store

    store = open_store(database)
    try:
        keys = KeyRing(store)()
        now = utcnow()
        return {u: keys.mint(f"user:{u}", now=now, lifetime=3600).token for u in users}
    finally:
        store.close()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    try:
        admin = cluster_url()
    except PgUnavailable as e:
        pytest.skip(f"PostgreSQL unavailable: {e}")
    url = create_database(admin)
    d = tmp_path_factory.mktemp("replicas")
    started: list[Server] = []
    try:
        first = start_server(url, d / "replica0.log")
        started.append(first)
        for n in (1, 2):
            started.append(start_replica(url, d / f"replica{n}.log", first.organization))
        with first.client() as c:
            for p in PROJECTS:
                r = c.post("/v3/projects", json={"projectId": p, "parent": first.organization})
                assert r.status_code == 200, r.text
        yield started
    finally:
        for s in started:
            stop_server(s)
        drop_database(admin, url)


def _grant(c: httpx.Client, project: str, member: str) -> str:
    """Read-modify-write the project's policy to add ``member`` as a viewer; return the consistency token."""
    for _attempt in range(20):
        pol = c.post(f"/v3/projects/{project}:getIamPolicy", json={})
        assert pol.status_code == 200, pol.text
        policy = pol.json()
        bindings = policy.setdefault("bindings", [])
        b = next((b for b in bindings if b["role"] == "roles/viewer"), None)
        if b is None:
            bindings.append({"role": "roles/viewer", "members": [member]})
        else:
            b["members"].append(member)
        r = c.post(f"/v3/projects/{project}:setIamPolicy", json={"policy": policy})
        if r.status_code == 409:       # another replica's write was not yet applied here: read again
            continue
        assert r.status_code == 200, r.text
        return r.headers["X-Keycard-Revision"]
    raise AssertionError(f"setIamPolicy on {project} kept conflicting")


def _granted(c: httpx.Client, project: str, token: str, revision: str | None = None) -> bool:
    headers = {"Authorization": f"Bearer {token}"}
    if revision is not None:
        headers["X-Keycard-Revision"] = revision
    r = c.post(f"/v3/projects/{project}:testIamPermissions", json={"permissions": [PERMISSION]}, headers=headers)
    assert r.status_code == 200, r.text
    return PERMISSION in r.json().get("permissions", [])


def test_consistency_token_gives_zero_stale_answers(replicas: list[Server]) -> None:
    users = [f"t{i}@example.com" for i in range(TRIALS)]
    tokens = mint_tokens(replicas[0].database, users)
    admin = replicas[0].token()
    clients = [httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {admin}"}, timeout=30)
               for s in replicas]
    stale: list[int] = []
    started = time.monotonic()
    try:
        for i in range(TRIALS):
            project = PROJECTS[i % len(PROJECTS)]
            revision = _grant(clients[i % 3], project, f"user:{users[i]}")
            if not _granted(clients[(i + 1) % 3], project, tokens[users[i]], revision):
                stale.append(i)
    finally:
        for c in clients:
            c.close()
    elapsed = time.monotonic() - started
    print(f"\n{TRIALS} write-then-check trials with the token: {len(stale)} stale, {elapsed:.1f}s")
    assert stale == [], f"{len(stale)} stale answers with the consistency token (trials {stale[:20]})"


def test_without_token_every_write_is_visible_everywhere_within_a_second(replicas: list[Server]) -> None:
    users = [f"v{i}@example.com" for i in range(VISIBILITY_TRIALS)]
    tokens = mint_tokens(replicas[0].database, users)
    admin = replicas[0].token()
    clients = [httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {admin}"}, timeout=30)
               for s in replicas]
    delays: list[float] = []
    immediately_stale = 0
    try:
        for i in range(VISIBILITY_TRIALS):
            project = PROJECTS[i % len(PROJECTS)]
            _grant(clients[i % 3], project, f"user:{users[i]}")
            written = time.monotonic()
            pending = {(i + 1) % 3, (i + 2) % 3}
            first_poll = True
            while pending:
                for n in sorted(pending):
                    if _granted(clients[n], project, tokens[users[i]]):
                        pending.discard(n)
                        delays.append(time.monotonic() - written)
                    elif first_poll:
                        immediately_stale += 1
                first_poll = False
                if pending and time.monotonic() - written > 5 * MAX_DELAY:
                    delays.append(time.monotonic() - written)   # give up on this write; it fails below
                    break
    finally:
        for c in clients:
            c.close()
    worst, median = max(delays), statistics.median(delays)
    summary = (f"{len(delays)} visibility delays over {VISIBILITY_TRIALS} writes: max {worst * 1000:.1f} ms, "
               f"median {median * 1000:.1f} ms; {immediately_stale} checks stale on the first poll")
    print("\n" + summary)
    assert worst <= MAX_DELAY, summary
