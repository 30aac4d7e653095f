"""The identity benchmark: token issue at the OAuth2 endpoint and bearer verification.

    .venv/bin/python bench/identity.py [--out docs/benchmarks.md] [--quick]

1. A fresh SQLite installation and `keycard serve` on loopback (as the CLI runs it: uvicorn, one worker);
   a project, a service account with a user-managed key and roles/viewer on the project.
2. JWT-bearer token issue (RFC 7523, the request google-auth's service_account.Credentials sends):
   distinct assertions are signed beforehand (client signing is not the server's cost), then sent by
   several keep-alive connections in a closed loop from this process (asyncio, raw HTTP/1.1) — issue
   rate, latency percentiles, every answer must be 200 with an access token.
3. Bearer verification, cached (a token already seen): ``Authenticator.authenticate`` in-process over
   the same database (the code every request runs), timed call by call — keycard access tokens of a
   service account and a user, and a Google-style self-signed service-account JWT.
4. Its share of a request: ``testIamPermissions`` on the project over HTTP, one connection, sequential.

The Markdown section between the identity-bench markers of --out is replaced (or appended).
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

import jwt  # noqa: E402

from bench.server import Server, fresh_installation, machine, write_section  # noqa: E402
from bench.server import api_call as _call  # noqa: E402
from bench.server_load import closed_loop  # noqa: E402

START, END = "<!-- identity-bench:start -->", "<!-- identity-bench:end -->"
PROJECT = "bench-identity"
ISSUE_TARGET, VERIFY_TARGET_US = 500.0, 50.0


def setup(port: int, admin_token: str, org: str) -> dict[str, Any]:
    _call(port, "POST", "/v3/projects", admin_token, {"projectId": PROJECT, "parent": org})
    sa = _call(port, "POST", f"/v1/projects/{PROJECT}/serviceAccounts", admin_token, {"accountId": "bench-sa"})
    key = _call(port, "POST", f"/v1/projects/{PROJECT}/serviceAccounts/{sa['email']}/keys", admin_token, {})
    import base64
    key_file = json.loads(base64.b64decode(key["privateKeyData"]))
    policy = _call(port, "POST", f"/v3/projects/{PROJECT}:getIamPolicy", admin_token, {})
    policy["bindings"] = [*policy.get("bindings", []),
                          {"role": "roles/viewer", "members": [f"serviceAccount:{sa['email']}"]}]
    _call(port, "POST", f"/v3/projects/{PROJECT}:setIamPolicy", admin_token, {"policy": policy})
    return key_file


def assertions(key_file: dict[str, Any], n: int) -> list[bytes]:
    from cryptography.hazmat.primitives import serialization
    private = serialization.load_pem_private_key(key_file["private_key"].encode(), password=None)
    now = int(time.time())
    out = []
    for i in range(n):
        claims = {"iss": key_file["client_email"], "scope": "https://www.googleapis.com/auth/cloud-platform",
                  "aud": "https://oauth2.googleapis.com/token", "iat": now - (i % 60), "exp": now - (i % 60) + 3600}
        signed = jwt.encode(claims, private, algorithm="RS256",  # type: ignore[arg-type]
                            headers={"kid": key_file["private_key_id"]})
        out.append(urlencode({"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                              "assertion": signed}).encode())
    return out


def issue(port: int, bodies: list[bytes], connections: int) -> dict[str, Any]:
    head = (f"Host: 127.0.0.1:{port}\r\nContent-Type: application/x-www-form-urlencoded\r\n").encode()
    per = [[b"POST /token HTTP/1.1\r\n" + head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            for body in bodies[i::connections]] for i in range(connections)]
    lat, errors, wall = closed_loop(port, per, b'"access_token"')
    return {"requests": len(lat), "connections": connections, "wall_s": wall, "rate": len(lat) / wall,
            "p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[int(len(lat) * 0.99)],
            "errors": len(errors), "first_error": errors[0] if errors else ""}


def verify(database: str, tokens: dict[str, str], n: int) -> dict[str, dict[str, float]]:
    from keycard.identity.authn import Authenticator
    from keycard.server import open_services, utcnow
    services, keys, store = open_services(database)
    try:
        authn = Authenticator(keys, services.runtime.identities, utcnow)
        out: dict[str, dict[str, float]] = {}
        for label, token in tokens.items():
            authn.authenticate(token)                       # first sight: signature verified, then cached
            samples = []
            for _ in range(n):
                t0 = time.perf_counter_ns()
                authn.authenticate(token)
                samples.append(time.perf_counter_ns() - t0)
            samples.sort()
            out[label] = {"p50_us": samples[n // 2] / 1000, "p99_us": samples[int(n * 0.99)] / 1000}
        return out
    finally:
        services.runtime.stop()
        store.close()


def tip_latency(port: int, token: str, n: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"permissions": ["resourcemanager.projects.get", "resourcemanager.projects.delete"]})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    samples = []
    try:
        for i in range(n + 50):
            t0 = time.perf_counter()
            conn.request("POST", f"/v3/projects/{PROJECT}:testIamPermissions", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"testIamPermissions: {resp.status}")
            if i >= 50:
                samples.append(time.perf_counter() - t0)
    finally:
        conn.close()
    samples.sort()
    return {"p50_us": 1e6 * samples[n // 2], "p99_us": 1e6 * samples[int(n * 0.99)]}


def self_signed(key_file: dict[str, Any]) -> str:
    now = int(time.time())
    claims = {"iss": key_file["client_email"], "sub": key_file["client_email"],
              "aud": "https://cloudresourcemanager.googleapis.com/", "iat": now, "exp": now + 3600}
    return jwt.encode(claims, key_file["private_key"], algorithm="RS256", headers={"kid": key_file["private_key_id"]})


def render(r: dict[str, Any], cmd: str) -> str:
    m = r["machine"]
    iss = r["issue"]
    v = r["verify"]
    tip = r["tip"]
    share = 100 * v["service account access token"]["p50_us"] / tip["p50_us"]
    ok_issue = iss["rate"] >= ISSUE_TARGET and iss["errors"] == 0
    ok_verify = max(x["p50_us"] for x in v.values()) <= VERIFY_TARGET_US
    lines = [START, "## Identity: token issue and bearer verification", "",
             "Generated by `bench/identity.py` (section between the `identity-bench` markers).", "",
             f"- command: `{cmd}`",
             f"- date: {r['date']}; machine: {m['cpu']}, {m['cores']} cores, {m['mem_gib']:.1f} GiB RAM; "
             f"Python {m['python']}",
             "- server: `keycard serve` (uvicorn, one worker) on embedded SQLite; load from this process over "
             "loopback (asyncio, raw HTTP/1.1 keep-alive); assertions signed before the clock starts.", "",
             "| target | measured | result |", "|---|---|---|",
             f"| JWT-bearer token issue ≥ {ISSUE_TARGET:.0f}/s | {iss['rate']:,.0f}/s over {iss['requests']:,} "
             f"requests on {iss['connections']} connections (p50 {iss['p50_ms']:.2f} ms, p99 {iss['p99_ms']:.2f} ms, "
             f"{iss['errors']} errors) | {'PASS' if ok_issue else 'MISS'} |",
             f"| bearer verification p50 ≤ {VERIFY_TARGET_US:.0f} µs (cached) | worst kind "
             f"{max(x['p50_us'] for x in v.values()):.2f} µs | {'PASS' if ok_verify else 'MISS'} |", "",
             "| credential (cached) | p50 µs | p99 µs |", "|---|---:|---:|"]
    for label, x in v.items():
        lines.append(f"| {label} | {x['p50_us']:.2f} | {x['p99_us']:.2f} |")
    lines += ["",
              f"Share of a request: `testIamPermissions` (2 permissions, one connection, sequential) p50 "
              f"{tip['p50_us']:.0f} µs, p99 {tip['p99_us']:.0f} µs over HTTP; verifying its bearer (service-account "
              f"access token, cached) takes {v['service account access token']['p50_us']:.2f} µs of it = "
              f"{share:.1f} %.", END, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/benchmarks.md")
    ap.add_argument("--quick", action="store_true", help="fewer requests (indicative only)")
    ap.add_argument("--connections", type=int, default=8)
    args = ap.parse_args(argv)
    n_issue = 600 if args.quick else 4000
    n_verify = 5000 if args.quick else 50000
    n_tip = 500 if args.quick else 3000
    work, database, org, admin = fresh_installation("keycard-identity-bench-")
    server = Server(database, work / "server.log")
    try:
        key_file = setup(server.port, admin, org)
        print(f"signing {n_issue} assertions …", flush=True)
        bodies = assertions(key_file, n_issue)
        issue(server.port, bodies[:100], args.connections)                  # warm-up
        print("token issue …", flush=True)
        issued = issue(server.port, bodies[100:], args.connections)
        print(f"  {issued['rate']:.0f}/s, p50 {issued['p50_ms']:.2f} ms, errors {issued['errors']}", flush=True)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("POST", "/token", body=bodies[0], headers={"Content-Type": "application/x-www-form-urlencoded"})
        sa_token = json.loads(conn.getresponse().read())["access_token"]
        conn.close()
        tip = tip_latency(server.port, sa_token, n_tip)
    finally:
        server.stop()
    tokens = {"service account access token": sa_token, "user access token": admin,
              "self-signed service-account JWT": self_signed(key_file)}
    print("bearer verification …", flush=True)
    verified = verify(database, tokens, n_verify)
    results = {"machine": machine(), "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
               "issue": issued, "verify": verified, "tip": tip}
    cmd = "bench/identity.py " + " ".join(argv if argv is not None else sys.argv[1:])
    section = render(results, cmd.strip())
    print(section)
    write_section(Path(args.out), section, START, END)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    return 0 if issued["errors"] == 0 else 1


if __name__ == "__main__":
    os.chdir(REPO)
    raise SystemExit(main())
