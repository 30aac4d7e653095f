"""keycard plan/apply/export against live servers, through the real `keycard` entry point."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.conftest import KEYCARD, Server, start_server, stop_server

DOC = """
organization:
  iam: additive
  bindings:
    - role: organizations/ORG/roles/modelReader
      members: [group:ml-readers@example.com]
  roles:
    - roleId: modelReader
      title: Model reader
      stage: GA
      permissions: [ml.models.get, ml.models.list]
folders:
  - path: eng
  - path: eng/ml
    iam: authoritative
    bindings:
      - role: roles/viewer
        members: [user:vera@example.com]
projects:
  - projectId: pac-ml-prod
    displayName: ML prod
    parent: eng/ml
    labels: {env: prod}
    iam: authoritative
    bindings:
      - role: roles/owner
        members: [user:alice@example.com]
      - role: roles/ml.developer
        members: [group:ml-team@example.com, user:dave@example.com]
      - role: projects/pac-ml-prod/roles/jobRunner
        members: [serviceAccount:runner@pac-ml-prod.iam.gserviceaccount.com]
    denyPolicies:
      - id: no-model-delete
        displayName: Nobody deletes models
        rules:
          - denyRule:
              deniedPrincipals: ["principalSet://goog/group/ml-team@example.com"]
              exceptionPrincipals: ["principal://goog/subject/dave@example.com"]
              deniedPermissions: [ml.googleapis.com/models.delete]
    roles:
      - roleId: jobRunner
        title: Job runner
        stage: GA
        permissions: [ml.jobs.create, ml.jobs.get]
serviceAccounts:
  - email: runner@pac-ml-prod.iam.gserviceaccount.com
    displayName: Runner
    description: runs training jobs
    iam: authoritative
    bindings:
      - role: roles/iam.serviceAccountUser
        members: [user:dave@example.com]
groups:
  - email: ml-team@example.com
    displayName: ML team
    members: [user:bob@example.com, user:carol@example.com, group:ml-interns@example.com]
  - email: ml-interns@example.com
    members: [user:ian@example.com]
  - email: ml-readers@example.com
    members: [user:rita@example.com]
"""


def kc(server: Server, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KEYCARD_ENDPOINT": server.url, "KEYCARD_ACCESS_TOKEN": server.token(),
           "COLUMNS": "200"}
    out = subprocess.run([*KEYCARD, *args], capture_output=True, text=True, env=env, timeout=300)
    if check:
        assert out.returncode == 0, f"{args}: {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def plan_json(server: Server, path: Path) -> dict[str, Any]:
    return json.loads(kc(server, "plan", "-f", str(path), "--format", "json").stdout)


def export(server: Server, tmp: Path, name: str) -> dict[str, Any]:
    out = tmp / name
    kc(server, "export", "-f", str(out))
    return yaml.safe_load(out.read_text())


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    a, b = tmp_path_factory.mktemp("pac-a"), tmp_path_factory.mktemp("pac-b")
    sa = start_server(f"sqlite:///{a / 'keycard.db'}", a / "server.log")
    try:
        sb = start_server(f"sqlite:///{b / 'keycard.db'}", b / "server.log")
    except BaseException:
        stop_server(sa)
        raise
    yield sa, sb
    stop_server(sa)
    stop_server(sb)


def test_round_trip_idempotency_and_removal(servers: tuple[Server, Server], tmp_path: Path) -> None:
    a, b = servers
    doc = tmp_path / "org.yaml"
    doc.write_text(DOC)
    out = kc(a, "apply", "-f", str(doc))
    assert "Applied" in out.stdout, out.stdout
    # idempotent: a second apply changes nothing
    again = kc(a, "apply", "-f", str(doc), "--format", "json")
    assert json.loads(again.stdout)["changes"] == [] and json.loads(again.stdout)["summary"]["applied"] == 0
    # export -> apply to an empty server -> export gives the same document
    first = export(a, tmp_path, "a.yaml")
    assert any(p["projectId"] == "pac-ml-prod" for p in first["projects"])
    kc(b, "apply", "-f", str(tmp_path / "a.yaml"))
    second = export(b, tmp_path, "b.yaml")
    assert second == first
    assert plan_json(b, tmp_path / "a.yaml")["changes"] == []
