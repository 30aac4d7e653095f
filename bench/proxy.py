"""keycard proxy's cost: overhead over a direct call at a fixed request rate, and throughput by body size.

    .venv/bin/python bench/proxy.py [--out docs/benchmarks.md] [--quick]

1. A fresh SQLite installation and `keycard serve` on loopback; a project, the proxy's service account
   (key file, roles/iap.settingsAdmin on the IAP resource) and a user granted
   roles/iap.httpsResourceAccessor there.
2. An upstream app (this script with --serve-upstream: raw ASGI under uvicorn, GET /bytes/N answers N
   bytes) and a real `keycard proxy` process in front of it.
3. Overhead: an open-loop load at --rate requests/s (default 1,000) of GET /bytes/1024 from keep-alive
   connections in this process (asyncio, raw HTTP/1.1), once straight to the upstream and once through
   the proxy with the user's Bearer token; overhead = proxied − direct at p50 and p99. The proxy's
   decisions come from its cache (≤ 1 s), as in steady traffic; its record of each request goes to
   keycard's audit log in batches.
4. Throughput: closed loop, --connections connections, 1 KiB and 1 MiB answers, direct and proxied.

Bounded: about 1 minute (--quick: 20 s). Every answer must be 200. The Markdown section between the
proxy-bench markers of --out is replaced (or appended).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

from bench.server import KEYCARD, Server, free_port, machine, write_section  # noqa: E402
from bench.server import api_call as _call  # noqa: E402

START, END = "<!-- proxy-bench:start -->", "<!-- proxy-bench:end -->"
ADMIN, USER = "admin@example.com", "bench@example.com"
PROJECT = "bench-iap"
RESOURCE = f"projects/{PROJECT}/iap_web/compute/services/bench-app"
P50_TARGET_US, P99_TARGET_US = 1000.0, 5000.0


# ================================================================================== the upstream app
def serve_upstream(port: int) -> None:
    import uvicorn

    blobs: dict[int, bytes] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        try:
            n = int(scope["path"].rsplit("/", 1)[1])
        except ValueError:
            n = 2
        body = blobs.get(n)
        if body is None:
            body = blobs[n] = b"k" * n
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"),
                                (b"content-length", str(n).encode())]})
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, loop="uvloop",
                http="httptools", lifespan="off")


# ============================================================================================ setup
def _wait(port: int, path: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited: {log.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", path)
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"not ready: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# ============================================================================================= load
async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> tuple[bytes, int]:
    writer.write(req)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    await asyncio.wait_for(reader.readexactly(length), 30)
    return head[9:12], length


def _request(port: int, path: str, token: str | None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}\r\n".encode()


def paced(port: int, token: str | None, rate: float, seconds: float, connections: int) -> dict[str, Any]:
    """Open loop: request i is due at i / rate; each connection takes every connections-th request."""
    lat: list[float] = []
    errors: list[str] = []
    total = int(rate * seconds)
    req = _request(port, "/bytes/1024", token)

    async def conn(k: int, t0: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in range(k, total, connections):
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                start = time.perf_counter()
                status, _ = await _one(reader, writer, req)
                lat.append(time.perf_counter() - start)
                if status != b"200":
                    errors.append(status.decode())
        finally:
            writer.close()

    async def run() -> float:
        t0 = time.perf_counter() + 0.05
        await asyncio.gather(*(conn(k, t0) for k in range(connections)))
        return time.perf_counter() - t0

    wall = asyncio.run(run())
    lat.sort()
    return {"requests": len(lat), "rate": len(lat) / wall, "p50_us": 1e6 * lat[len(lat) // 2],
            "p99_us": 1e6 * lat[int(len(lat) * 0.99)], "errors": len(errors)}


def closed(port: int, token: str | None, size: int, seconds: float, connections: int) -> dict[str, Any]:
    done: list[int] = []
    errors: list[str] = []
    req = _request(port, f"/bytes/{size}", token)

    async def conn(deadline: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4 << 20)
        try:
            while time.perf_counter() < deadline:
                status, n = await _one(reader, writer, req)
                done.append(n)
                if status != b"200":
                    errors.append(status.decode())
        finally:
            writer.close()

    async def run() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(conn(t0 + seconds) for _ in range(connections)))
        return time.perf_counter() - t0

    wall = asyncio.run(run())
    return {"size": size, "rate": len(done) / wall, "mib_s": sum(done) / wall / (1 << 20), "errors": len(errors)}


# ============================================================================================ report
def render(r: dict[str, Any], command: str) -> str:
    m = r["machine"]
    d, p = r["direct"], r["proxied"]
    o50, o99 = p["p50_us"] - d["p50_us"], p["p99_us"] - d["p99_us"]
    ok50, ok99 = o50 <= P50_TARGET_US, o99 <= P99_TARGET_US
    lines = [START, "## keycard proxy", "",
             f"`{command}` — {r['date']}, {m['cpu']}, {m['cores']} cores, Python {m['python']}.",
             "", "Overhead of the proxy over a direct call, GET of 1 KiB, open loop at the offered rate "
             "(decisions from the proxy's ≤ 1 s cache; every request recorded to keycard's audit log in batches):",
             "", "| path | requests | achieved rate | p50 | p99 | errors |", "|---|---:|---:|---:|---:|---:|",
             f"| direct to upstream | {d['requests']} | {d['rate']:.0f}/s | {d['p50_us']:.0f} µs | "
             f"{d['p99_us']:.0f} µs | {d['errors']} |",
             f"| through keycard proxy | {p['requests']} | {p['rate']:.0f}/s | {p['p50_us']:.0f} µs | "
             f"{p['p99_us']:.0f} µs | {p['errors']} |",
             f"| **overhead** | | | **{o50:.0f} µs** ({'meets' if ok50 else 'misses'} ≤ 1 ms) | "
             f"**{o99:.0f} µs** ({'meets' if ok99 else 'misses'} ≤ 5 ms) | |",
             "", f"Throughput, closed loop, {r['connections']} keep-alive connections:", "",
             "| answer size | direct req/s | direct MiB/s | proxied req/s | proxied MiB/s |",
             "|---|---:|---:|---:|---:|"]
    for a, b in zip(r["throughput_direct"], r["throughput_proxied"], strict=True):
        size = "1 KiB" if a["size"] == 1024 else "1 MiB"
        lines.append(f"| {size} | {a['rate']:.0f} | {a['mib_s']:.1f} | {b['rate']:.0f} | {b['mib_s']:.1f} |")
    lines += ["", f"keycard was asked {r['decision_calls']} times for decisions over the whole run "
                  "(the rest came from the proxy's cache).", END]
    return "\n".join(lines) + "\n"


def _decision_calls(port: int) -> int:
    """keycardCheckAccess requests keycard served (its Prometheus counter)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("keycard_requests_total{") and "iap.keycardCheckAccess" in line))


# ============================================================================================== main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/benchmarks.md")
    ap.add_argument("--quick", action="store_true", help="short windows (indicative only)")
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--serve-upstream", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_upstream is not None:
        serve_upstream(args.serve_upstream)
        return 0
    window = 4.0 if args.quick else 12.0
    work = Path(tempfile.mkdtemp(prefix="keycard-proxy-bench-"))
    database = f"sqlite:///{work / 'keycard.db'}"
    init = subprocess.run([*KEYCARD, "init", "--organization-domain", "example.com", "--admin", f"user:{ADMIN}",
                           "--database", database, "--format", "json"], capture_output=True, text=True, cwd=REPO,
                          check=True)
    org = json.loads(init.stdout)["organization"]
    tokens = {u: subprocess.run([*KEYCARD, "auth", "print-access-token", "--user", u, "--database", database],
                                capture_output=True, text=True, cwd=REPO, check=True).stdout.strip()
              for u in (ADMIN, USER)}
    server = Server(database, work / "server.log")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        admin = tokens[ADMIN]
        _call(server.port, "POST", "/v3/projects", admin, {"projectId": PROJECT, "parent": org})
        sa = _call(server.port, "POST", f"/v1/projects/{PROJECT}/serviceAccounts", admin, {"accountId": "iap-proxy"})
        key = _call(server.port, "POST", f"/v1/projects/-/serviceAccounts/{sa['email']}/keys", admin, {})
        key_file = work / "proxy-key.json"
        key_file.write_bytes(base64.b64decode(key["privateKeyData"]))
        _call(server.port, "POST", f"/v1/{RESOURCE}:setIamPolicy", admin, {"policy": {"bindings": [
            {"role": "roles/iap.settingsAdmin", "members": [f"serviceAccount:{sa['email']}"]},
            {"role": "roles/iap.httpsResourceAccessor", "members": [f"user:{USER}"]}]}})
        up_port, px_port = free_port(), free_port()
        up_log, px_log = work / "upstream.log", work / "proxy.log"
        procs.append(subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(up_port)], cwd=REPO,
                                      stdout=up_log.open("ab"), stderr=subprocess.STDOUT))
        _wait(up_port, "/bytes/1", procs[-1], up_log)
        procs.append(subprocess.Popen([*KEYCARD, "proxy", "--upstream", f"http://127.0.0.1:{up_port}", "--resource",
                                       RESOURCE, "--listen", f"127.0.0.1:{px_port}", "--endpoint",
                                       f"http://127.0.0.1:{server.port}", "--credentials", str(key_file)],
                                      cwd=REPO, stdout=px_log.open("ab"), stderr=subprocess.STDOUT))
        _wait(px_port, "/.keycard/healthz", procs[-1], px_log)
        user = tokens[USER]
        paced(px_port, user, 200, 1.0, args.connections)                    # warm-up: connections, caches
        paced(up_port, None, 200, 1.0, args.connections)
        direct = paced(up_port, None, args.rate, window, args.connections)
        print(f"direct:  {direct}", flush=True)
        proxied = paced(px_port, user, args.rate, window, args.connections)
        print(f"proxied: {proxied}", flush=True)
        tput_window = window / 2
        t_direct = [closed(up_port, None, s, tput_window, args.connections) for s in (1024, 1 << 20)]
        t_proxied = [closed(px_port, user, s, tput_window, args.connections) for s in (1024, 1 << 20)]
        print(f"throughput direct {t_direct}\nthroughput proxied {t_proxied}", flush=True)
        calls = _decision_calls(server.port)
    finally:
        for p in reversed(procs):
            _stop(p)
        server.stop()
    results = {"machine": machine(), "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
               "direct": direct, "proxied": proxied, "throughput_direct": t_direct, "throughput_proxied": t_proxied,
               "connections": args.connections, "decision_calls": calls}
    section = render(results, ("bench/proxy.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip())
    print(section)
    write_section(Path(args.out), section, START, END)
    errors = direct["errors"] + proxied["errors"] + sum(t["errors"] for t in t_direct + t_proxied)
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    os.chdir(REPO)
    raise SystemExit(main())
