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
