"""keycard's ASGI entry: API requests go straight to dispatch, everything else through Starlette — and a
client sees the same answers either way (Google's errors, the fixed endpoints, 405 for other methods)."""

from __future__ import annotations

from conftest import Server


def test_api_requests_fixed_endpoints_and_other_methods(server: Server) -> None:
    with server.client() as c:
        r = c.post(f"/v3/{server.organization}:testIamPermissions",
                   json={"permissions": ["resourcemanager.organizations.get"]})
        assert r.status_code == 200 and r.json() == {"permissions": ["resourcemanager.organizations.get"]}
        assert r.headers["X-Keycard-Revision"].isdigit()
        missing = c.get("/v3/no/such/thing")
        assert missing.status_code == 404 and missing.json()["error"]["status"] == "NOT_FOUND"
        wrong = c.delete(f"/v3/{server.organization}:testIamPermissions")
        assert wrong.status_code == 404 and "not supported" in wrong.json()["error"]["message"]
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").status_code == 200
        assert "keycard_requests_total" in c.get("/metrics").text
        assert c.get("/openapi.json").json()["paths"]
        assert c.request("OPTIONS", "/v3/projects").status_code == 405
    with server.client(user=None) as anonymous:
        r = anonymous.post(f"/v3/{server.organization}:testIamPermissions", json={"permissions": []})
        assert r.status_code == 401 and "WWW-Authenticate" in r.headers


def _decisions(text: str) -> dict[str, float]:
    out = {"granted": 0.0, "denied": 0.0}
    for line in text.splitlines():
        for outcome in out:
            if line.startswith(f'keycard_decisions_total{{outcome="{outcome}"}}'):
                out[outcome] = float(line.rsplit(" ", 1)[1])
    return out


def test_metrics_count_each_authorization_by_outcome(server: Server) -> None:
    """keycard_decisions counts every permission check a request makes, granted and denied."""
    with server.client() as admin, server.client(user="stranger@example.com") as stranger:
        before = _decisions(admin.get("/metrics").text)
        assert admin.get(f"/v3/{server.organization}").status_code == 200          # one check, granted
        assert stranger.get(f"/v3/{server.organization}").status_code == 403       # one check, denied
        after = _decisions(admin.get("/metrics").text)
    assert after["granted"] - before["granted"] >= 1
    assert after["denied"] - before["denied"] >= 1
