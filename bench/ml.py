"""The ML workload benchmark: online prediction on a small scikit-learn model, and authorization's share.

    .venv/bin/python bench/ml.py [--out docs/benchmarks.md] [--quick]

1. A fresh SQLite installation and `keycard serve` on loopback (uvicorn, one worker); a project, a bucket,
   a LogisticRegression (4 features) uploaded as model.joblib, a model and a deployed version.
2. Online prediction: `POST /v1/projects/P/models/M:predict` with one instance, from several keep-alive
   connections in a closed loop in this process (asyncio, raw HTTP/1.1), fixed count — predictions/s
   and latency percentiles; every answer must be 200.
3. Authorization's share: the checks a predict request makes (``Services.authorize`` of
   ``ml.models.predict`` on the model, then the engine) timed call by call in-process over the same
   database, against the request's p50 over HTTP at one connection.

4. Batch prediction throughput: jobs over 100,000 newline-delimited instances at two batch sizes.

The Markdown section between the ml-bench markers of --out is replaced (or appended).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

from bench.server import ADMIN, Server, fresh_installation, machine, write_section  # noqa: E402
from bench.server import api_call as _call  # noqa: E402
from bench.server_load import closed_loop  # noqa: E402

START, END = "<!-- ml-bench:start -->", "<!-- ml-bench:end -->"
PROJECT, BUCKET, MODEL = "bench-ml", "bench-ml-models", "clf"
RATE_TARGET, SHARE_TARGET = 500.0, 5.0


def setup(port: int, token: str, org: str) -> None:
    import joblib
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng(7)
    x = rng.normal(size=(200, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    buf = io.BytesIO()
    joblib.dump(LogisticRegression().fit(x, y), buf)
    _call(port, "POST", "/v3/projects", token, {"projectId": PROJECT, "parent": org})
    _call(port, "POST", f"/storage/v1/b?project={PROJECT}", token, {"name": BUCKET})
    _call(port, "POST", f"/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name=clf/model.joblib", token,
          raw=buf.getvalue(), ctype="application/octet-stream")
    _call(port, "POST", f"/v1/projects/{PROJECT}/models", token, {"name": MODEL})
    op = _call(port, "POST", f"/v1/projects/{PROJECT}/models/{MODEL}/versions", token,
               {"name": "v1", "deploymentUri": f"gs://{BUCKET}/clf/", "framework": "SCIKIT_LEARN"})
    if "error" in op:
        raise RuntimeError(f"deploy failed: {op['error']}")


def load(port: int, token: str, total: int, connections: int) -> dict[str, Any]:
    body = json.dumps({"instances": [[0.5, -0.2, 0.1, 1.0]]}).encode()
    req = (f"POST /v1/projects/{PROJECT}/models/{MODEL}:predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
           f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    lat, errors, wall = closed_loop(port, [[req] * (total // connections) for _ in range(connections)],
                                    b"predictions")
    return {"requests": len(lat), "connections": connections, "rate": len(lat) / wall,
            "p50_us": 1e6 * lat[len(lat) // 2], "p99_us": 1e6 * lat[int(len(lat) * 0.99)], "errors": len(errors),
            "first_error": errors[0] if errors else ""}


def authz_cost(database: str, n: int) -> dict[str, float]:
    from keycard.server import open_services
    from keycard.services.common import Caller
    services, _keys, store = open_services(database)
    try:
        target = f"//ml.googleapis.com/projects/{PROJECT}/models/{MODEL}"
        caller = Caller(f"user:{ADMIN}")
        services.authorize(caller, "ml.models.predict", target, service="ml.googleapis.com")
        samples = []
        for _ in range(n):
            c = Caller(f"user:{ADMIN}")
            t0 = time.perf_counter_ns()
            services.authorize(c, "ml.models.predict", target, service="ml.googleapis.com")
            samples.append(time.perf_counter_ns() - t0)
        samples.sort()
        return {"p50_us": samples[n // 2] / 1000, "p99_us": samples[int(n * 0.99)] / 1000}
    finally:
        services.runtime.stop()
        store.close()


def batch(port: int, token: str, n: int, batch_sizes: tuple[int, ...] = (64, 1000)) -> list[dict[str, Any]]:
    """Batch prediction jobs over ``n`` newline-delimited instances: instances/s from the job's own
    startTime→endTime, and from create to done as a client sees it."""
    import numpy as np
    rng = np.random.default_rng(11)
    data = rng.normal(size=(n, 4)).round(4)
    body = ("\n".join(json.dumps(row) for row in data.tolist()) + "\n").encode()
    _call(port, "POST", f"/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name=in/x.json", token, raw=body,
          ctype="application/json")
    out = []
    for size in batch_sizes:
        job_id = f"bench_{size}"
        t0 = time.perf_counter()
        _call(port, "POST", f"/v1/projects/{PROJECT}/jobs", token, {"jobId": job_id, "predictionInput": {
            "dataFormat": "JSON", "inputPaths": [f"gs://{BUCKET}/in/x.json"], "outputPath": f"gs://{BUCKET}/out/{job_id}",
            "versionName": f"projects/{PROJECT}/models/{MODEL}/versions/v1", "region": "us-central1",
            "batchSize": size}})
        while True:
            job = _call(port, "GET", f"/v1/projects/{PROJECT}/jobs/{job_id}", token)
            if job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                break
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        if job["state"] != "SUCCEEDED":
            raise RuntimeError(f"batch job {job_id}: {job['state']} {job.get('errorMessage')}")

        def ts(v: str) -> dt.datetime:
            return dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
        run = (ts(job["endTime"]) - ts(job["startTime"])).total_seconds()
        out.append({"batch_size": size, "instances": n, "run_s": run, "wall_s": wall,
                    "rate": n / run if run > 0 else float("nan"), "wall_rate": n / wall,
                    "predictions": int(job.get("predictionOutput", {}).get("predictionCount", 0))})
    return out


def render(r: dict[str, Any], cmd: str) -> str:
    m, online, single, authz = r["machine"], r["online"], r["single"], r["authz"]
    share = 100 * authz["p50_us"] / single["p50_us"]
    ok_rate = online["rate"] >= RATE_TARGET and online["errors"] == 0
    return "\n".join([
        START, "## ML workload: online prediction", "",
        "Generated by `bench/ml.py` (section between the `ml-bench` markers).", "",
        f"- command: `{cmd}`",
        f"- date: {r['date']}; machine: {m['cpu']}, {m['cores']} cores, {m['mem_gib']:.1f} GiB RAM; "
        f"Python {m['python']}",
        "- server: `keycard serve` (uvicorn, one worker) on embedded SQLite; model: scikit-learn "
        "LogisticRegression, 4 features, one instance per request; load from this process over loopback.", "",
        "| target | measured | result |", "|---|---|---|",
        f"| ≥ {RATE_TARGET:.0f} predictions/s | {online['rate']:,.0f}/s over {online['requests']:,} requests on "
        f"{online['connections']} connections (p50 {online['p50_us'] / 1000:.2f} ms, p99 "
        f"{online['p99_us'] / 1000:.2f} ms, {online['errors']} errors) | {'PASS' if ok_rate else 'MISS'} |",
        f"| authorization ≤ {SHARE_TARGET:.0f} % of a predict request | {authz['p50_us']:.1f} µs of "
        f"{single['p50_us']:.0f} µs (p50, one connection) = {share:.1f} % | "
        f"{'PASS' if share <= SHARE_TARGET else 'MISS'} |", "",
        "| batch prediction job | instances | run (startTime→endTime) | instances/s | create→done (client) |",
        "|---|---:|---:|---:|---:|",
        *[f"| batchSize {b['batch_size']} | {b['instances']:,} | {b['run_s']:.2f} s | {b['rate']:,.0f} | "
          f"{b['wall_s']:.2f} s ({b['wall_rate']:,.0f}/s) |" for b in r["batch"]], END, ""])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/benchmarks.md")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--connections", type=int, default=8)
    args = ap.parse_args(argv)
    total = 1600 if args.quick else 8000
    work, database, org, token = fresh_installation("keycard-ml-bench-")
    server = Server(database, work / "server.log")
    try:
        setup(server.port, token, org)
        load(server.port, token, 200, args.connections)                       # warm-up
        online = load(server.port, token, total, args.connections)
        print(f"online: {online['rate']:.0f}/s p50 {online['p50_us']:.0f} µs errors {online['errors']}", flush=True)
        single = load(server.port, token, total // 4, 1)
        batched = batch(server.port, token, 20_000 if args.quick else 100_000)
        print(f"batch: {[round(b['rate']) for b in batched]} instances/s", flush=True)
    finally:
        server.stop()
    authz = authz_cost(database, 20000)
    results = {"machine": machine(), "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
               "online": online, "single": single, "authz": authz, "batch": batched}
    section = render(results, ("bench/ml.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip())
    print(section)
    write_section(Path(args.out), section, START, END)
    return 0 if online["errors"] == 0 else 1


if __name__ == "__main__":
    os.chdir(REPO)
    raise SystemExit(main())
