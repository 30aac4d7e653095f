"""The server benchmark's load generator: a separate process speaking raw HTTP/1.1 on keep-alive connections.

Run by bench/server.py as ``python bench/server_load.py SPEC_JSON``; prints one JSON result line. Pure asyncio
on ``asyncio.open_connection`` (no HTTP library: a few µs of client work per request), one coroutine per
connection, closed loop (each connection sends its next request when the previous answer is read).

Modes:
- ``tip``: ``POST /v3/projects/{random project}:testIamPermissions`` with the spec's permissions.
- ``rmw``: each connection is one writer on its own project: ``getIamPolicy`` (v3), change one binding's
  members, ``setIamPolicy`` with the etag read; the figures are the setIamPolicy calls'.

Only 127.0.0.1. Every loop ends at the spec's deadline; every read has a timeout.

:func:`closed_loop` is the in-process variant for a fixed number of prepared requests (bench/identity.py,
bench/ml.py).
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import sys
import time
from typing import Any

READ_TIMEOUT = 10.0


class Conn:
    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.head = (f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
                     "Content-Type: application/json\r\nUser-Agent: keycard-bench\r\n").encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port),
                                                          READ_TIMEOUT)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        self.writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\n" + self.head
                          + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        return await read_response(self.reader)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next HTTP/1.1 response on a keep-alive connection → (status, body); it must give its Content-Length."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
    status = int(head[9:12])
    length = -1
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
            break
    if length < 0:
        raise RuntimeError("response without Content-Length")
    data = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT) if length else b""
    return status, data


def closed_loop(port: int, requests: list[list[bytes]], ok: bytes) -> tuple[list[float], list[str], float]:
    """A fixed amount of load in this process: each list of raw HTTP/1.1 ``requests`` is sent on a keep-alive
    connection of its own, one request when the previous answer is read, all connections at once. An answer
    that is not 200 with ``ok`` in its body is an error. → (latencies in seconds, sorted; errors; wall seconds)."""
    lat: list[float] = []
    errors: list[str] = []

    async def connection(chunk: list[bytes]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for request in chunk:
                t0 = time.perf_counter()
                writer.write(request)
                status, payload = await read_response(reader)
                lat.append(time.perf_counter() - t0)
                if status != 200 or ok not in payload:
                    errors.append(f"{status} {payload[:200].decode(errors='replace')}")
        finally:
            writer.close()

    async def run() -> None:
        await asyncio.gather(*(connection(chunk) for chunk in requests))

    t0 = time.perf_counter()
    asyncio.run(run())
    wall = time.perf_counter() - t0
    lat.sort()
    return lat, errors, wall


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


class Stats:
    def __init__(self, measure_from: float, measure_until: float) -> None:
        self.measure_from = measure_from
        self.measure_until = measure_until
        self.lat: list[float] = []
        self.codes: dict[str, int] = {}
        self.errors: list[str] = []

    def add(self, started: float, ended: float, status: int) -> None:
        if self.measure_from <= started and ended <= self.measure_until:
            self.lat.append(ended - started)
            self.codes[str(status)] = self.codes.get(str(status), 0) + 1

    def summary(self, window: float) -> dict[str, Any]:
        lat = sorted(self.lat)
        ok = sum(n for c, n in self.codes.items() if c.startswith("2"))
        return {"requests": len(lat), "ok": ok, "per_s": ok / window if window > 0 else 0.0,
                "p50_ms": _percentile(lat, 50) * 1e3, "p90_ms": _percentile(lat, 90) * 1e3,
                "p99_ms": _percentile(lat, 99) * 1e3, "max_ms": (lat[-1] * 1e3) if lat else float("nan"),
                "codes": self.codes, "errors": len(self.errors), "error_samples": self.errors[:5]}


async def _tip_worker(spec: dict[str, Any], stats: Stats, deadline: float, rng: random.Random) -> None:
    conn = Conn(spec["port"], spec["token"])
    projects = spec["projects"]
    body = json.dumps({"permissions": spec["permissions"]}).encode()
    while time.perf_counter() < deadline:
        path = f"/v3/projects/{rng.choice(projects)}:testIamPermissions"
        t0 = time.perf_counter()
        try:
            status, _ = await conn.post(path, body)
        except (TimeoutError, OSError, RuntimeError, ValueError, asyncio.IncompleteReadError) as e:
            stats.errors.append(f"{type(e).__name__}: {e}"[:200])
            conn.close()
            await asyncio.sleep(0.01)
            continue
        stats.add(t0, time.perf_counter(), status)
    conn.close()


async def _rmw_worker(spec: dict[str, Any], stats: Stats, deadline: float, project: str, wid: int) -> None:
    conn = Conn(spec["port"], spec["token"])
    get_body = json.dumps({"options": {"requestedPolicyVersion": 3}}).encode()
    n = 0
    while time.perf_counter() < deadline:
        n += 1
        try:
            status, data = await conn.post(f"/v3/projects/{project}:getIamPolicy", get_body)
            if status != 200:
                stats.errors.append(f"getIamPolicy {status}: {data[:200]!r}")
                await asyncio.sleep(0.01)
                continue
            policy = json.loads(data)
            bindings = policy.setdefault("bindings", [])
            mine = next((b for b in bindings if b.get("role") == "roles/ml.modelUser" and not b.get("condition")),
                        None)
            if mine is None:
                mine = {"role": "roles/ml.modelUser", "members": []}
                bindings.append(mine)
            mine["members"] = [f"user:writer{wid}-{n % 7}@example.com"]
            body = json.dumps({"policy": policy}).encode()
            t0 = time.perf_counter()
            status, data = await conn.post(f"/v3/projects/{project}:setIamPolicy", body)
            stats.add(t0, time.perf_counter(), status)
            if status >= 500:
                stats.errors.append(f"setIamPolicy {status}: {data[:200]!r}")
        except (TimeoutError, OSError, RuntimeError, ValueError, asyncio.IncompleteReadError) as e:
            stats.errors.append(f"{type(e).__name__}: {e}"[:200])
            conn.close()
            await asyncio.sleep(0.01)
    conn.close()


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    measure_from = start + spec["warmup"]
    deadline = measure_from + spec["duration"]
    stats = Stats(measure_from, deadline)
    rng = random.Random(spec.get("seed", 1))
    if spec["mode"] == "tip":
        tasks = [_tip_worker(spec, stats, deadline, random.Random(rng.random())) for _ in range(spec["concurrency"])]
    else:
        tasks = [_rmw_worker(spec, stats, deadline, p, i) for i, p in enumerate(spec["projects"])]
    await asyncio.wait_for(asyncio.gather(*tasks), spec["warmup"] + spec["duration"] + 3 * READ_TIMEOUT)
    out = stats.summary(spec["duration"])
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out["client_cpu_s"] = ru.ru_utime + ru.ru_stime
    out["wall_s"] = time.perf_counter() - start
    return out


def main() -> int:
    spec = json.loads(sys.argv[1])
    result = asyncio.run(run(spec))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
