"""`keycard serve --workers N`: N forked processes on one port and one database behave as one server.

Every request here opens a new connection, so the kernel hands it to any worker: a write is seen by the
very next request whichever worker answers it (no stale etag, no 409 for a read-modify-write done right),
concurrent writers through different workers lose nothing, and the audit chain stays whole. The process
tree starts and stops as one: SIGTERM stops every worker; a worker that dies takes the server down (for a
supervisor to restart); a killed parent takes its workers with it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import google.oauth2.credentials
import httpx
import pytest
from google.api_core.client_options import ClientOptions
from google.cloud import resourcemanager_v3
from google.iam.v1 import iam_policy_pb2, policy_pb2
from googleapiclient.discovery import build

from conftest import KEYCARD, Server, database, start_server, stop_server

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="--workers needs os.fork")

WORKERS = 2


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        out.extend(int(x) for x in task.read_text().split())
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def _wait_gone(pids: list[int], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def _workers_up(server: Server) -> list[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        kids = _children(server.process.pid)
        if len(kids) == WORKERS:
            return kids
        time.sleep(0.05)
    raise AssertionError(f"expected {WORKERS} workers: {server.log.read_text()[-2000:]}")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("workers")
    with database(request.param, d) as url:
        srv = start_server(url, d / "server.log", extra_args=["--workers", str(WORKERS)])
        try:
            _workers_up(srv)
            yield srv
        finally:
            stop_server(srv)


def _fresh(server: Server) -> httpx.Client:
    """A client whose every request opens a new connection (so any worker may answer it)."""
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token()}"}, timeout=30,
                        limits=httpx.Limits(max_keepalive_connections=0))


def _project(server: Server, project: str) -> None:
    with _fresh(server) as c:
        r = c.post("/v3/projects", json={"projectId": project, "parent": server.organization})
        assert r.status_code == 200, r.text


def _toggle(policy: dict[str, object], member: str, grant: bool) -> dict[str, object]:
    """``policy`` with ``member`` holding roles/browser (grant) or nothing (revoke)."""
    bindings = [b for b in policy.get("bindings", []) if b["role"] != "roles/browser"]  # type: ignore[attr-defined]
    if grant:
        bindings.append({"role": "roles/browser", "members": [member]})
    return {**policy, "bindings": bindings}


def test_every_write_is_seen_by_the_next_request_whichever_worker_answers(server: Server) -> None:
    """Rounds of read-modify-write on fresh connections, granting and revoking in turn: no stale etag,
    and the grant (or the revocation) is what the very next check sees."""
    project = "workers-ryw"
    _project(server, project)
    path = f"/v3/projects/{project}"
    user = httpx.Client(base_url=server.url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0),
                        headers={"Authorization": f"Bearer {server.token('ryw@example.com')}"})
    with _fresh(server) as c, user:
        for i in range(40):
            got = c.post(f"{path}:getIamPolicy", json={"options": {"requestedPolicyVersion": 3}})
            assert got.status_code == 200, got.text
            grant = i % 2 == 0
            put = c.post(f"{path}:setIamPolicy", json={"policy": _toggle(got.json(), "user:ryw@example.com", grant)})
            assert put.status_code == 200, f"round {i}: {put.text}"   # a stale read would be 409 ABORTED here
            again = c.post(f"{path}:getIamPolicy", json={"options": {"requestedPolicyVersion": 3}})
            assert again.json()["etag"] == put.json()["etag"], f"round {i}: a worker answered with an older policy"
            tip = user.post(f"{path}:testIamPermissions", json={"permissions": ["resourcemanager.projects.get"]})
            want = ["resourcemanager.projects.get"] if grant else None
            assert tip.json().get("permissions") == want, f"round {i} ({'grant' if grant else 'revoke'}): {tip.text}"


def test_google_clients_see_each_others_writes_through_any_worker(server: Server) -> None:
    """The admin's discovery client grants and revokes a user's role in turn; at once that user's GAPIC REST
    client (a new one each round: its own connection, on whichever worker) is allowed or denied, and another
    admin client reads the new policy."""
    project = "workers-clients"
    _project(server, project)
    opts = ClientOptions(api_endpoint=server.url)

    def gapic(user: str) -> resourcemanager_v3.ProjectsClient:
        return resourcemanager_v3.ProjectsClient(transport="rest", client_options=opts,
                                                 credentials=google.oauth2.credentials.Credentials(
                                                     token=server.token(user)))
    rounds = 16
    users = [gapic("gapic-user@example.com") for _ in range(rounds)]        # clients made up front
    readers = [gapic("alice@example.com") for _ in range(rounds)]
    admin = build("cloudresourcemanager", "v3", static_discovery=True, client_options={"api_endpoint": server.url},
                  credentials=google.oauth2.credentials.Credentials(token=server.token()))
    for i in range(rounds):
        grant = i % 2 == 0
        policy = admin.projects().getIamPolicy(resource=f"projects/{project}", body={}).execute()
        admin.projects().setIamPolicy(resource=f"projects/{project}", body={
            "policy": _toggle(policy, "user:gapic-user@example.com", grant)}).execute()
        got = users[i].test_iam_permissions(request=iam_policy_pb2.TestIamPermissionsRequest(
            resource=f"projects/{project}", permissions=["resourcemanager.projects.get"]))
        assert list(got.permissions) == (["resourcemanager.projects.get"] if grant else []), \
            f"round {i}: the {'grant' if grant else 'revocation'} was not seen"
        read: policy_pb2.Policy = readers[i].get_iam_policy(request=iam_policy_pb2.GetIamPolicyRequest(
            resource=f"projects/{project}"))
        assert any("user:gapic-user@example.com" in b.members for b in read.bindings) == grant, \
            f"round {i}: an older policy"


def test_concurrent_writers_through_different_workers_lose_nothing(server: Server) -> None:
    writers, rounds = 4, 12
    projects = [f"workers-w{i}" for i in range(writers)]
    for p in projects:
        _project(server, p)
    errors: list[str] = []
    aborted = [0]

    def write(project: str) -> None:
        path = f"/v3/projects/{project}"
        with _fresh(server) as c:
            for i in range(rounds):
                for _attempt in range(20):
                    policy = c.post(f"{path}:getIamPolicy", json={}).json()
                    policy.setdefault("bindings", []).append(
                        {"role": "roles/viewer", "members": [f"user:{project}-{i}@example.com"]})
                    r = c.post(f"{path}:setIamPolicy", json={"policy": policy})
                    if r.status_code == 200:
                        break
                    if r.status_code != 409:
                        errors.append(r.text)
                        return
                    aborted[0] += 1
                else:
                    errors.append(f"{project} round {i}: still 409 after 20 attempts")

    threads = [threading.Thread(target=write, args=(p,)) for p in projects]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    # each writer owns its project: a worker that answered from an older policy would have caused 409s
    assert aborted[0] == 0
    with _fresh(server) as c:
        for p in projects:
            members = {m for b in c.post(f"/v3/projects/{p}:getIamPolicy", json={}).json().get("bindings", [])
                       if b["role"] == "roles/viewer" for m in b["members"]}
            assert {f"user:{p}-{i}@example.com" for i in range(rounds)} <= members
    verify = subprocess.run([*KEYCARD, "logs", "verify", "--database", server.database], capture_output=True,
                            text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _own_server(tmp_path: Path) -> tuple[Server, list[int]]:
    srv = start_server(f"sqlite:///{tmp_path / 'keycard.db'}", tmp_path / "server.log",
                       extra_args=["--workers", str(WORKERS)])
    return srv, _workers_up(srv)


def test_sigterm_stops_every_worker(tmp_path: Path) -> None:
    srv, kids = _own_server(tmp_path)
    try:
        srv.process.send_signal(signal.SIGTERM)
        assert srv.process.wait(timeout=15) == 0
        assert _wait_gone(kids), "a worker outlived the server"
    finally:
        stop_server(srv)


def test_ctrl_c_stops_the_server_cleanly(tmp_path: Path) -> None:
    """Ctrl-C in a terminal: SIGINT to the whole process group (parent and workers)."""
    url = f"sqlite:///{tmp_path / 'keycard.db'}"
    init = subprocess.run([*KEYCARD, "init", "--organization-domain", "example.com", "--admin",
                           "user:alice@example.com", "--database", url], capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    number = port.getsockname()[1]
    port.close()
    log = tmp_path / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([*KEYCARD, "serve", "--database", url, "--port", str(number), "--workers", "2"],
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        kids: list[int] = []
        while time.monotonic() < deadline and len(kids) < 2:
            kids = _children(proc.pid)
            time.sleep(0.05)
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{number}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=15) == 0, log.read_text()[-2000:]
        assert _wait_gone(kids)
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_no_database_connection_crosses_the_fork(tmp_path: Path) -> None:
    """SQLite's rule: a connection opened before fork() must not be used after it. The parent closes its
    connections before forking: it holds no descriptor of the database once the workers run."""
    srv, kids = _own_server(tmp_path)
    try:
        with _fresh(srv) as c:      # the workers open connections of their own and write
            assert c.post("/v3/projects", json={"projectId": "fork-p", "parent": srv.organization}).status_code == 200
        def db_fds(pid: int) -> list[str]:
            out = []
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if "keycard.db" in target:
                    out.append(target)
            return out
        assert db_fds(srv.process.pid) == []
        assert all(db_fds(k) for k in kids)          # (the check can see them: the workers hold theirs)
    finally:
        stop_server(srv)


def test_a_dead_worker_takes_the_server_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))          # where the server makes its metrics directory
    srv, kids = _own_server(tmp_path)
    try:
        assert len(list(tmp.glob("keycard-metrics-*"))) == 1
        os.kill(kids[0], signal.SIGKILL)
        assert srv.process.wait(timeout=15) == 1
        assert _wait_gone(kids), "the other worker kept serving"
        assert "exited" in srv.log.read_text()
        assert not list(tmp.glob("keycard-metrics-*")), "the metrics directory outlived the server"
    finally:
        stop_server(srv)


@pytest.mark.skipif(sys.platform != "linux", reason="workers follow a killed parent on Linux (PR_SET_PDEATHSIG)")
def test_a_killed_parent_takes_its_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))     # the metrics directory a killed server leaves behind
    srv, kids = _own_server(tmp_path)
    try:
        srv.process.kill()
        srv.process.wait(timeout=10)
        assert _wait_gone(kids), "orphaned workers kept the port"
    finally:
        for k in kids:
            if _alive(k):
                os.kill(k, signal.SIGKILL)


def test_bad_worker_counts_and_a_taken_port_are_refused(tmp_path: Path, server: Server) -> None:
    db = server.database
    for bad in ("0", "65"):
        r = subprocess.run([*KEYCARD, "serve", "--database", db, "--workers", bad], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode != 0
        assert "Invalid --workers" in r.stderr and "Traceback" not in r.stderr
    port = server.url.rsplit(":", 1)[1]
    r = subprocess.run([*KEYCARD, "serve", "--database", db, "--port", port, "--workers", "2"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and f"Cannot listen on 127.0.0.1:{port}" in r.stderr, r.stderr


def _server_pid_of(client_port: int, candidates: list[int]) -> int | None:
    """The process holding the server end of our connection from ``client_port`` (Linux /proc)."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if int(f[2].rsplit(":", 1)[1], 16) == client_port:    # remote end = our client socket
                inode = f[9]
    if inode is None:
        return None
    for pid in candidates:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; SO_REUSEPORT spreading is Linux's")
def test_connections_are_spread_over_the_workers(tmp_path: Path) -> None:
    srv, kids = _own_server(tmp_path)
    port = int(srv.url.rsplit(":", 1)[1])
    socks = []
    try:
        owners: dict[int, int] = {}
        for _ in range(24):      # all on one worker: 2 × 0.5^24
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            socks.append(s)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b" 200 " in s.recv(4096)
            owner = _server_pid_of(s.getsockname()[1], kids)
            assert owner is not None
            owners[owner] = owners.get(owner, 0) + 1
        assert set(owners) == set(kids), owners
        # a second keycard server on the same port is refused, although the workers use SO_REUSEPORT
        r = subprocess.run([*KEYCARD, "serve", "--database", srv.database, "--port", str(port), "--workers", "2"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and f"Cannot listen on 127.0.0.1:{port}" in r.stderr, r.stderr
        one = subprocess.run([*KEYCARD, "serve", "--database", srv.database, "--port", str(port)],
                             capture_output=True, text=True, timeout=60)
        assert one.returncode != 0
    finally:
        for s in socks:
            s.close()
        stop_server(srv)


def _counted(text: str, metric: str, route: str) -> float:
    """The sum of ``metric``'s samples for ``route`` in a /metrics exposition."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(metric + "{") and f'route="{route}"' in line)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; SO_REUSEPORT spreading is Linux's")
def test_metrics_count_the_requests_of_every_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests spread over both workers; every scrape of /metrics, whichever worker answers it, shows them
    all (prometheus_client's multiprocess mode over a private directory the server removes when it stops)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))          # where the server makes its metrics directory
    srv, kids = _own_server(tmp_path)
    port = int(srv.url.rsplit(":", 1)[1])
    route = "cloudresourcemanager.organizations.search"
    try:
        made = list(tmp.glob("keycard-metrics-*"))
        assert len(made) == 1 and made[0].is_dir(), made
        assert made[0].stat().st_mode & 0o777 == 0o700
        request = (f"GET /v3/organizations:search HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {srv.token()}\r\n"
                   "\r\n").encode()
        answered: dict[int, int] = {}
        sent = 24                                   # all on one worker: 2 × 0.5^24
        for _ in range(sent):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(request)
                first = s.recv(4096)                # (keep-alive: the worker still holds the connection)
                owner = _server_pid_of(s.getsockname()[1], kids)
            assert first.startswith(b"HTTP/1.1 200 "), first[:200]
            assert owner is not None
            answered[owner] = answered.get(owner, 0) + 1
        assert set(answered) == set(kids), answered
        totals = set()
        for _ in range(8):
            with httpx.Client(base_url=srv.url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as c:
                text = c.get("/metrics").text
            counted = _counted(text, "keycard_requests_total", route)
            assert counted >= sent, f"a scrape counted {counted} of {sent} requests (one worker's share?)"
            assert _counted(text, "keycard_request_seconds_count", route) == counted
            totals.add(counted)
        assert len(totals) == 1, f"scrapes disagree: {sorted(totals)}"
    finally:
        stop_server(srv)
    assert srv.process.returncode == 0
    assert not list(tmp.glob("keycard-metrics-*")), "the metrics directory outlived the server"
