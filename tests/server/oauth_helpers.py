"""Shared by the token-endpoint and forgery tests: projects, service accounts, keys and signed assertions."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from typing import Any

import httpx
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from conftest import Server

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_AUD = "https://oauth2.googleapis.com/token"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


def ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, (r.status_code, r.text)
    body: dict[str, Any] = r.json()
    return body


def make_project(c: httpx.Client, server: Server, project_id: str) -> str:
    ok(c.post("/v3/projects", json={"projectId": project_id, "parent": server.organization}))
    return project_id


def make_account(c: httpx.Client, project: str, account_id: str) -> dict[str, Any]:
    return ok(c.post(f"/v1/projects/{project}/serviceAccounts", json={"accountId": account_id}))


def make_key(c: httpx.Client, email: str) -> dict[str, Any]:
    """A key file (Google's JSON) for a new key of the account."""
    out = ok(c.post(f"/v1/projects/-/serviceAccounts/{email}/keys", json={}))
    key_file: dict[str, Any] = json.loads(base64.b64decode(out["privateKeyData"]))
    return key_file


def grant(c: httpx.Client, project: str, member: str, role: str = "roles/viewer") -> None:
    policy = ok(c.post(f"/v3/projects/{project}:getIamPolicy", json={}))
    bindings = policy.setdefault("bindings", [])
    bindings.append({"role": role, "members": [member]})
    ok(c.post(f"/v3/projects/{project}:setIamPolicy", json={"policy": policy}))


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def certificate(key: rsa.RSAPrivateKey, not_before: dt.datetime, not_after: dt.datetime) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "uploaded")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def upload_key(c: httpx.Client, email: str, key: rsa.RSAPrivateKey, not_before: dt.datetime,
               not_after: dt.datetime) -> str:
    """Upload the key's public half in a certificate with that validity; returns the key id."""
    data = base64.b64encode(certificate(key, not_before, not_after).encode()).decode()
    out = ok(c.post(f"/v1/projects/-/serviceAccounts/{email}/keys:upload", json={"publicKeyData": data}))
    return str(out["name"]).rsplit("/", 1)[-1]


def claims(email: str, *, now: float | None = None, **over: Any) -> dict[str, Any]:
    t = int(time.time() if now is None else now)
    out: dict[str, Any] = {"iss": email, "aud": GOOGLE_TOKEN_AUD, "scope": CLOUD_PLATFORM, "iat": t,
                           "exp": t + 3600}
    out.update(over)
    return {k: v for k, v in out.items() if v is not None}


def sign(private_pem: str, kid: str, payload: dict[str, Any], **headers: Any) -> str:
    return jwt.encode(payload, private_pem, algorithm="RS256", headers={"kid": kid, **headers})


def assertion(key_file: dict[str, Any], **over: Any) -> str:
    return sign(key_file["private_key"], key_file["private_key_id"], claims(key_file["client_email"], **over))


def post_token(server: Server, assertion_jwt: str, path: str = "/token") -> httpx.Response:
    return httpx.post(server.url + path, data={"grant_type": JWT_BEARER, "assertion": assertion_jwt}, timeout=30)


def bearer_get(server: Server, token: str, path: str) -> httpx.Response:
    return httpx.get(server.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=30)
