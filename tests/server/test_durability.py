"""Concurrency, crash safety and the tamper-evident audit log, on a real server process."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import KEYCARD, Server, database, start_server, stop_server

CLIENTS, ROUNDS = 32, 40


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    with database(request.param, tmp_path) as url:
        srv = start_server(url, tmp_path / "server.log")
        try:
            yield srv
        finally:
            stop_server(srv)


def test_concurrent_read_modify_write_loses_nothing(backend_server: Server) -> None:
    srv = backend_server
    admin = srv.client()
    r = admin.post("/v3/projects", json={"projectId": "race-project", "parent": srv.organization})
    assert r.status_code == 200, r.text
    token = srv.token()
    stats = {"ok": 0, "stale": 0, "5xx": 0, "other": 0}
    lock = threading.Lock()

    acknowledged: set[str] = set()

    def client(i: int) -> None:
        """Each round: one read-modify-write that adds this round's member; a stale write gets 409."""
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
            for n in range(ROUNDS):
                member = f"user:c{i}-r{n}@example.com"
                pol = c.post("/v3/projects/race-project:getIamPolicy", json={}).json()
                bindings = pol.setdefault("bindings", [])
                b = next((b for b in bindings if b["role"] == "roles/viewer"), None)
                if b is None:
                    bindings.append({"role": "roles/viewer", "members": [member]})
                else:
                    b["members"].append(member)
                resp = c.post("/v3/projects/race-project:setIamPolicy", json={"policy": pol})
                with lock:
                    if resp.status_code == 200:
                        stats["ok"] += 1
                        acknowledged.add(member)
                    elif resp.status_code == 409 and resp.json()["error"]["status"] == "ABORTED":
                        stats["stale"] += 1
                    elif resp.status_code >= 500:
                        stats["5xx"] += 1
                    else:
                        stats["other"] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = admin.post("/v3/projects/race-project:getIamPolicy", json={}).json()
    viewers = set(next(b for b in final["bindings"] if b["role"] == "roles/viewer")["members"])
    assert stats["5xx"] == 0 and stats["other"] == 0, stats
    assert stats["ok"] + stats["stale"] == CLIENTS * ROUNDS and stats["ok"] > 0, stats
    # no lost update (every acknowledged binding is there) and no phantom (nothing unacknowledged is)
    assert viewers == acknowledged, (len(acknowledged - viewers), len(viewers - acknowledged))


def test_kill_9_during_writes_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kc.db'}"
    srv = start_server(url, tmp_path / "server.log")
    acknowledged: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        with srv.client() as c:
            i = 0
            while not stop.is_set():
                try:
                    r = c.post("/v3/folders", json={"parent": srv.organization, "displayName": f"crash-{i}"})
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    acknowledged.append(r.json()["response"]["name"])
                i += 1

    srv.token()                         # minted before the clock starts (a CLI run: slow on a loaded machine)
    t = threading.Thread(target=writer)
    t.start()
    deadline = time.monotonic() + 60    # kill while writes stream in: after some were acknowledged
    while len(acknowledged) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    srv.process.send_signal(signal.SIGKILL)
    srv.process.wait()
    stop.set()
    t.join()
    assert len(acknowledged) > 5
    again = start_server(url, tmp_path / "server2.log")
    try:
        with again.client() as c:
            listed = set()
            token = ""
            while True:
                page = c.get("/v3/folders", params={"parent": srv.organization, "pageToken": token}).json()
                listed |= {f["name"] for f in page.get("folders", [])}
                token = page.get("nextPageToken", "")
                if not token:
                    break
            assert set(acknowledged) <= listed
            for name in acknowledged[-3:]:
                assert c.get(f"/v3/{name}").status_code == 200
        verify = subprocess.run([*KEYCARD, "logs", "verify", "--database", url], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        stop_server(again)


def test_editing_or_deleting_an_audit_record_is_detected(server: Server, tmp_path: Path) -> None:
    server.client().post("/v3/folders", json={"parent": server.organization, "displayName": "audited"})
    db = server.database.removeprefix("sqlite:///")
    copy = tmp_path / "copy.db"
    with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    ok = subprocess.run([*KEYCARD, "logs", "verify", "--database", f"sqlite:///{copy}"], capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    with sqlite3.connect(copy) as conn:
        seq = conn.execute("select max(seq) from audit").fetchone()[0]
        conn.execute("update audit set entry = replace(entry, 'audited', 'AUDITED') where seq = ?", (seq,))
    bad = subprocess.run([*KEYCARD, "logs", "verify", "--database", f"sqlite:///{copy}"], capture_output=True,
                         text=True)
    assert bad.returncode == 1 and f"record {seq}" in bad.stderr
    with sqlite3.connect(copy) as conn:
        conn.execute("update audit set entry = replace(entry, 'AUDITED', 'audited') where seq = ?", (seq,))
        conn.execute("delete from audit where seq = 2")
    gap = subprocess.run([*KEYCARD, "logs", "verify", "--database", f"sqlite:///{copy}"], capture_output=True,
                         text=True)
    assert gap.returncode == 1 and "record" in gap.stderr
