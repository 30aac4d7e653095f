"""getIamPolicy and setIamPolicy served from the runtime's mirror of iam_policy records.

Two `keycard serve` processes share one SQLite database (each follows the other's writes through the change
feed), so a read-modify-write on one server may carry an etag the other has not applied yet, or one it has
applied while the store has moved on. Whichever server answers: the freshest etag is accepted (the mirror's
record when it has that revision, the store otherwise), a stale one is 409 ABORTED with nothing written, and
every accepted write has its audit record with the policyDelta of what it changed.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from conftest import Server, serve, start_server, stop_server

PROJECT = "mirror-p"
ROUNDS = 40


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    d = tmp_path_factory.mktemp("mirror")
    database = f"sqlite:///{d / 'keycard.db'}"
    first = start_server(database, d / "a.log")
    servers = [first]
    try:
        servers.append(serve(database, d / "b.log", first.organization))
        with first.client() as c:
            r = c.post("/v3/projects", json={"projectId": PROJECT, "parent": first.organization})
            assert r.status_code == 200, r.text
        yield servers
    finally:
        for s in servers:
            stop_server(s)


def _get(c: httpx.Client, revision: str | None = None) -> dict[str, object]:
    headers = {"X-Keycard-Revision": revision} if revision else {}
    r = c.post(f"/v3/projects/{PROJECT}:getIamPolicy", json={"options": {"requestedPolicyVersion": 3}},
               headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _with_viewer(policy: dict[str, object], member: str) -> dict[str, object]:
    bindings = [b for b in policy.get("bindings", []) if isinstance(b, dict) and b.get("role") != "roles/viewer"]
    return {**policy, "bindings": [*bindings, {"role": "roles/viewer", "members": [member]}]}


def _set(c: httpx.Client, policy: dict[str, object]) -> httpx.Response:
    return c.post(f"/v3/projects/{PROJECT}:setIamPolicy", json={"policy": policy})


def _viewers(policy: dict[str, object]) -> list[str]:
    return [m for b in policy.get("bindings", []) if isinstance(b, dict) and b.get("role") == "roles/viewer"
            for m in b.get("members", [])]


def test_the_freshest_etag_is_accepted_on_either_server_and_a_stale_one_never(pair: list[Server]) -> None:
    clients = [s.client() for s in pair]
    try:
        policy = _get(clients[0])
        written: list[tuple[str, str]] = []        # (member, etag of the write)
        for i in range(ROUNDS):
            here, there = clients[i % 2], clients[(i + 1) % 2]
            member = f"user:m{i}@example.com"
            # the etag just returned by the other server: this one may or may not have applied that write yet
            r = _set(here, _with_viewer(policy, member))
            assert r.status_code == 200, (i, r.text)
            policy = r.json()
            assert _viewers(policy) == [member]
            written.append((member, str(policy["etag"])))
            # the etag before this write is stale on both servers, whatever each has applied: 409, nothing written
            if i:
                for c in (here, there):
                    stale = _set(c, {**_with_viewer(policy, "user:stale@example.com"), "etag": written[-2][1]})
                    assert stale.status_code == 409, stale.text
                    assert stale.json()["error"]["status"] == "ABORTED"
                    assert "concurrent policy changes" in stale.json()["error"]["message"]
        # with the consistency token both servers answer the last write
        last_member, last_etag = written[-1]
        for c in clients:
            token = str(_revision(last_etag))
            got = _get(c, token)
            assert got["etag"] == last_etag and _viewers(got) == [last_member]
    finally:
        for c in clients:
            c.close()
    # every accepted write is in the audit log, with the delta from the policy it replaced
    log = pair[0].client()
    try:
        entries = _audit_entries(log)
    finally:
        log.close()
    sets = [e for e in entries if "odd@" not in str(e)]       # not the other test's write
    assert len(sets) == ROUNDS
    for i, e in enumerate(sets):
        deltas = e["protoPayload"]["serviceData"]["policyDelta"]["bindingDeltas"]
        added = [d["member"] for d in deltas if d["action"] == "ADD" and d["role"] == "roles/viewer"]
        removed = [d["member"] for d in deltas if d["action"] == "REMOVE" and d["role"] == "roles/viewer"]
        assert added == [f"user:m{i}@example.com"]
        assert removed == ([f"user:m{i - 1}@example.com"] if i else [])
        assert e["protoPayload"]["request"]["policy"]["bindings"][-1]["members"] == [f"user:m{i}@example.com"]


def _revision(etag: str) -> int:
    """The revision an etag names (it is what the write returned as X-Keycard-Revision)."""
    import base64
    return int.from_bytes(base64.b64decode(etag)[2:], "big")


def _audit_entries(c: httpx.Client) -> list[dict[str, object]]:
    """Every audit entry, oldest first, through the Logging API the server offers."""
    out: list[dict[str, object]] = []
    token = ""
    while True:
        body: dict[str, object] = {"resourceNames": [f"projects/{PROJECT}"], "pageSize": 1000,
                                   "orderBy": "timestamp asc", "filter": 'protoPayload.methodName="SetIamPolicy"'}
        if token:
            body["pageToken"] = token
        r = c.post("/v2/entries:list", json=body)
        assert r.status_code == 200, r.text
        page = r.json()
        out += page.get("entries", [])
        token = page.get("nextPageToken", "")
        if not token:
            return out


def test_a_secret_in_an_unusual_policy_field_is_still_redacted(pair: list[Server]) -> None:
    c = pair[0].client()
    try:
        policy = _get(c)
        odd = _with_viewer(policy, "user:odd@example.com")
        odd["bindings"][-1]["password"] = "hunter2"           # type: ignore[index]  # not a policy field
        r = _set(c, odd)
        assert r.status_code == 200, r.text
        entries = _audit_entries(c)
    finally:
        c.close()
    last = entries[-1]["protoPayload"]["request"]["policy"]    # type: ignore[index]
    assert last["bindings"][-1]["password"] == "[REDACTED]"
    assert "hunter2" not in str(entries)
