"""Shared by the proxy tests: the upstream app, a real `keycard proxy` process, IAP policy edits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from conftest import KEYCARD, free_port

HERE = Path(__file__).resolve().parent
ACCESSOR = "roles/iap.httpsResourceAccessor"


@dataclass
class Proc:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _wait(proc: subprocess.Popen[bytes], url: str, log: Path, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text()[-3000:]}")
        try:
            httpx.get(url, timeout=1, verify=False)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{what} did not start: {log.read_text()[-3000:]}")


def start_upstream(tmp: Path, keycard_url: str, audience: str) -> Proc:
    port = free_port()
    log = tmp / "upstream.log"
    proc = subprocess.Popen([sys.executable, str(HERE / "proxy_upstream.py"), str(port), keycard_url, audience],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait(proc, url + "/__seen", log, "upstream app")
    return Proc(url, proc, log)


def start_proxy(tmp: Path, *, upstream: str, resource: str, endpoint: str, key_file: Path,
                extra: Sequence[str] = (), tls: tuple[Path, Path] | None = None) -> Proc:
    port = free_port()
    log = tmp / f"proxy-{port}.log"
    if tls is not None:
        extra = [*extra, "--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    proc = subprocess.Popen([*KEYCARD, "proxy", "--upstream", upstream, "--resource", resource,
                             "--listen", f"127.0.0.1:{port}", "--endpoint", endpoint, "--credentials", str(key_file),
                             *extra], stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    _wait(proc, url + "/.keycard/healthz", log, "keycard proxy")
    return Proc(url, proc, log)


def ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, (r.status_code, r.text)
    body: dict[str, Any] = r.json()
    return body


def set_bindings(admin: httpx.Client, resource: str, bindings: list[dict[str, Any]]) -> dict[str, Any]:
    """Replace the resource's IAP policy bindings (version 3: conditions allowed)."""
    policy = ok(admin.post(f"/v1/{resource}:getIamPolicy", json={"options": {"requestedPolicyVersion": 3}}))
    return ok(admin.post(f"/v1/{resource}:setIamPolicy",
                         json={"policy": {"version": 3, "bindings": bindings, "etag": policy["etag"]}}))


def headers_of(echo: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in echo["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def write_key(tmp: Path, name: str, key_file: dict[str, Any]) -> Path:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(key_file))
    return path


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files) for a TLS proxy."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "proxy-cert.pem", tmp / "proxy-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
