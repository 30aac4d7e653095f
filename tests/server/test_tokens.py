"""Server tokens: prefixed, signed and verified with PyJWT, keys rotatable and published as JWKS."""

from __future__ import annotations

import subprocess
import time

import httpx

from conftest import KEYCARD, Server


def _get(server: Server, token: str) -> httpx.Response:
    return httpx.get(f"{server.url}/v3/organizations:search", headers={"Authorization": f"Bearer {token}"})


def test_bad_tokens_get_401_with_www_authenticate(server: Server) -> None:
    good = server.token()
    assert good.startswith("kc1.")
    assert _get(server, good).status_code == 200
    for bad in ("ya29.a0AfH6SMB-google-token", good[:-4] + "AAAA", "kc1.not.a.jwt", good.replace("kc1.", "kc2.")):
        r = _get(server, bad)
        assert r.status_code == 401, bad
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["error"]["status"] == "UNAUTHENTICATED"
    r = httpx.get(f"{server.url}/v3/organizations:search", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401


def test_rotation_keeps_old_tokens_until_retired(server: Server) -> None:
    old = server.token()
    kids_before = {k["kid"] for k in httpx.get(f"{server.url}/.well-known/jwks.json").json()["keys"]}
    subprocess.run([*KEYCARD, "auth", "rotate-signing-key", "--database", server.database], check=True,
                   capture_output=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kids = {k["kid"] for k in httpx.get(f"{server.url}/.well-known/jwks.json").json()["keys"]}
        if kids > kids_before:
            break
        time.sleep(0.5)
    assert kids > kids_before, "the new key is published"
    assert _get(server, old).status_code == 200, "tokens of the older key still verify"
    subprocess.run([*KEYCARD, "auth", "rotate-signing-key", "--retire-older", "--database", server.database],
                   check=True, capture_output=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _get(server, old).status_code == 200:
        time.sleep(0.5)
    assert _get(server, old).status_code == 401, "retired keys stop verifying"
    fresh = subprocess.run([*KEYCARD, "auth", "print-access-token", "--user", "alice@example.com", "--database",
                            server.database], check=True, capture_output=True, text=True).stdout.strip()
    assert _get(server, fresh).status_code == 200
