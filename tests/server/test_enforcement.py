"""`keycard serve --enforcement=dry-run`: would-be denials are allowed, announced and audited; enforce denies.

The same stranger's request (no grants anywhere) runs against a dry-run server and an enforcing one:
dry-run answers it, names the permission and resource in ``X-Keycard-Would-Deny`` and labels its audit
entry with the mode and the would-be denial, and the server warned at start; enforce answers 403.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import KEYCARD, Server, start_server, stop_server

STRANGER = "mallory@example.com"
PROJECT = "enforcement-proj"
PERMISSION = "resourcemanager.projects.update"


def _server(tmp_path_factory: pytest.TempPathFactory, mode: str) -> Iterator[Server]:
    d = tmp_path_factory.mktemp(f"kc-{mode}")
    srv = start_server(f"sqlite:///{d / 'keycard.db'}", d / "server.log", enforcement=mode)
    with srv.client() as c:
        r = c.post("/v3/projects", json={"projectId": PROJECT, "parent": srv.organization})
        assert r.status_code == 200, r.text
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _server(tmp_path_factory, "dry-run")


@pytest.fixture(scope="module")
def enforcing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _server(tmp_path_factory, "enforce")


def _rename(server: Server) -> Any:
    with server.client(STRANGER) as c:
        return c.patch(f"/v3/projects/{PROJECT}", params={"updateMask": "displayName"},
                       json={"displayName": "renamed by mallory"})


def _audit(server: Server, log_filter: str) -> list[dict[str, Any]]:
    out = subprocess.run([*KEYCARD, "logs", "read", log_filter, "--limit", "50", "--database", server.database,
                          "--format", "json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    entries: list[dict[str, Any]] = json.loads(out.stdout)
    return entries


def test_dry_run_allows_a_would_be_denial_and_says_so(dry_run: Server) -> None:
    r = _rename(dry_run)
    assert r.status_code == 200, r.text
    assert r.json()["response"]["displayName"] == "renamed by mallory"
    would = r.headers.get("X-Keycard-Would-Deny", "")
    assert PERMISSION in would and f"projects/{PROJECT}" in would, would
    # a read that would be denied is allowed too, and says so
    with dry_run.client(STRANGER) as c:
        got = c.get(f"/v3/projects/{PROJECT}")
    assert got.status_code == 200, got.text
    assert "resourcemanager.projects.get" in got.headers.get("X-Keycard-Would-Deny", "")
    # the admin's allowed request carries no such header
    with dry_run.client() as c:
        assert "X-Keycard-Would-Deny" not in c.get(f"/v3/projects/{PROJECT}").headers


def test_dry_run_audit_entry_is_labelled_with_the_mode_and_the_would_be_denial(dry_run: Server) -> None:
    entries = _audit(dry_run, f'protoPayload.authenticationInfo.principalEmail="{STRANGER}"')
    updates = [e for e in entries if e["protoPayload"]["methodName"].endswith("UpdateProject")]
    assert updates, [e["protoPayload"]["methodName"] for e in entries]
    entry = updates[0]
    labels = entry.get("labels", {})
    assert labels.get("keycard.dev/enforcement") == "dry-run", entry
    assert PERMISSION in labels.get("keycard.dev/would-deny", "") and PROJECT in labels["keycard.dev/would-deny"]
    auth = entry["protoPayload"]["authorizationInfo"]
    assert {"resource": f"projects/{PROJECT}", "permission": PERMISSION, "granted": False} in auth, auth


def test_dry_run_server_warns_at_start(dry_run: Server) -> None:
    log = dry_run.log.read_text(errors="replace")
    assert "WARNING" in log and "enforcement is dry-run" in log, log[-2000:]


def test_enforce_denies_the_same_request(enforcing: Server) -> None:
    r = _rename(enforcing)
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["status"] == "PERMISSION_DENIED" and PERMISSION in err["message"], err
    assert "X-Keycard-Would-Deny" not in r.headers
    with enforcing.client() as c:
        assert c.get(f"/v3/projects/{PROJECT}").json()["displayName"] != "renamed by mallory"
    assert "WARNING" not in enforcing.log.read_text(errors="replace")
    # nothing was written, so the stranger has no Admin Activity entry; entries carry no dry-run labels
    entries = _audit(enforcing, "")
    assert not [e for e in entries if e["protoPayload"].get("authenticationInfo", {}).get("principalEmail") == STRANGER]
    assert all("keycard.dev/enforcement" not in e.get("labels", {}) for e in entries)
