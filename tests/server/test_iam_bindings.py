"""keycard's atomic :keycardAddIamPolicyBinding / :keycardRemoveIamPolicyBinding (no client read-modify-write)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import Server

PROJECT = "bind-proj"


@pytest.fixture(scope="module")
def project(server: Server) -> str:
    with server.client() as c:
        r = c.post("/v3/projects", json={"projectId": PROJECT, "parent": server.organization})
        assert r.status_code == 200, r.text
    return PROJECT


def _policy(c: httpx.Client, node: str) -> dict[str, object]:
    r = c.post(f"/v3/{node}:getIamPolicy", json={"options": {"requestedPolicyVersion": 3}})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _members(policy: dict[str, object], role: str) -> set[str]:
    out: set[str] = set()
    for b in policy.get("bindings", []):  # type: ignore[attr-defined]
        if b["role"] == role and not b.get("condition"):
            out |= set(b["members"])
    return out


def test_parallel_adds_all_land(server: Server, project: str) -> None:
    """N clients add N different members at once: every one is in the policy afterwards (setIamPolicy
    read-modify-write by N clients would lose all but a few)."""
    n = 24
    users = [f"user:par{i}@example.com" for i in range(n)]

    def add(member: str) -> int:
        with server.client() as c:
            r = c.post(f"/v3/projects/{project}:keycardAddIamPolicyBinding",
                       json={"binding": {"role": "roles/viewer", "members": [member]}})
            return r.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(add, users))
    assert codes == [200] * n
    with server.client() as c:
        assert _members(_policy(c, f"projects/{project}"), "roles/viewer") >= set(users)

    def remove(member: str) -> int:
        with server.client() as c:
            return c.post(f"/v3/projects/{project}:keycardRemoveIamPolicyBinding",
                          json={"binding": {"role": "roles/viewer", "members": [member]}}).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(remove, users[: n // 2])) == [200] * (n // 2)
    with server.client() as c:
        left = _members(_policy(c, f"projects/{project}"), "roles/viewer")
    assert left & set(users) == set(users[n // 2:])


def test_add_is_idempotent_and_answers_the_policy(server: Server, project: str) -> None:
    body = {"binding": {"role": "roles/browser", "members": ["user:idem@example.com"]}}
    with server.client() as c:
        first = c.post(f"/v3/projects/{project}:keycardAddIamPolicyBinding", json=body)
        again = c.post(f"/v3/projects/{project}:keycardAddIamPolicyBinding", json=body)
        assert first.status_code == again.status_code == 200
        assert first.json()["etag"] == again.json()["etag"]          # nothing written the second time
        assert "user:idem@example.com" in _members(first.json(), "roles/browser")


def test_conditional_binding_and_removal_by_condition(server: Server, project: str) -> None:
    cond = {"expression": "request.time < timestamp('2030-01-01T00:00:00Z')", "title": "until 2030"}
    member = "user:temp@example.com"
    with server.client() as c:
        r = c.post(f"/v3/projects/{project}:keycardAddIamPolicyBinding",
                   json={"binding": {"role": "roles/viewer", "members": [member], "condition": cond}})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 3
        assert any(b.get("condition", {}).get("title") == "until 2030" and member in b["members"]
                   for b in r.json()["bindings"])
        # without the condition it is a different binding: nothing to remove
        r = c.post(f"/v3/projects/{project}:keycardRemoveIamPolicyBinding",
                   json={"binding": {"role": "roles/viewer", "members": [member]}})
        assert r.status_code == 404 and r.json()["error"]["details"][0]["reason"] == "BINDING_NOT_FOUND"
        r = c.post(f"/v3/projects/{project}:keycardRemoveIamPolicyBinding",
                   json={"binding": {"role": "roles/viewer", "members": [member], "condition": cond}})
        assert r.status_code == 200, r.text
        assert not any(member in b["members"] for b in r.json().get("bindings", []))


def test_bad_input_is_400_naming_the_field(server: Server, project: str) -> None:
    with server.client() as c:
        for body, fld in (({}, "binding"), ({"binding": {"members": ["user:a@example.com"]}}, "binding.role"),
                          ({"binding": {"role": "roles/viewer", "members": []}}, "binding.members"),
                          ({"binding": {"role": "roles/nope", "members": ["user:a@example.com"]}},
                           "policy.bindings[")):
            r = c.post(f"/v3/projects/{project}:keycardAddIamPolicyBinding", json=body)
            assert r.status_code == 400, (body, r.text)
            assert fld in r.json()["error"]["message"], r.text


def test_self_lockout_guard(server: Server, project: str) -> None:
    """Removing the caller's own last grant of setIamPolicy is refused like setIamPolicy's; with
    X-Keycard-Allow-Lockout it goes through."""
    with server.client() as c:
        r = c.post(f"/v3/projects/{project}:keycardAddIamPolicyBinding",
                   json={"binding": {"role": "roles/owner", "members": ["user:solo@example.com"]}})
        assert r.status_code == 200, r.text
    body = {"binding": {"role": "roles/owner", "members": ["user:solo@example.com"]}}
    with server.client("solo@example.com") as c:
        r = c.post(f"/v3/projects/{project}:keycardRemoveIamPolicyBinding", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["details"][0]["reason"] == "SELF_LOCKOUT"
        r = c.post(f"/v3/projects/{project}:keycardRemoveIamPolicyBinding", json=body,
                   headers={"X-Keycard-Allow-Lockout": "true"})
        assert r.status_code == 200, r.text
    with server.client() as c:
        assert "user:solo@example.com" not in _members(_policy(c, f"projects/{project}"), "roles/owner")


def test_stranger_is_denied_with_set_iam_policy(server: Server, project: str) -> None:
    with server.client("mallory@example.com") as c:
        r = c.post(f"/v3/projects/{project}:keycardAddIamPolicyBinding",
                   json={"binding": {"role": "roles/owner", "members": ["user:mallory@example.com"]}})
    assert r.status_code == 403
    assert "resourcemanager.projects.setIamPolicy" in r.json()["error"]["message"]
