"""The asset benchmark: `keycard import --cai` of a 1M-binding export, and analyzeIamPolicy over HTTP.

    .venv/bin/python bench/asset.py [--quick] [--bindings N] [--out docs/benchmarks.md]

1. Import: a seeded Cloud Asset Inventory export (organization, folders, projects, buckets; allow policies
   of the built-in catalog's roles with users, nested groups, service accounts, domains and 10 % conditional
   bindings; newline-delimited JSON as `gcloud asset export` writes it, resource and iam-policy records) is
   generated, then `keycard import --cai FILE --groups FILE` runs as a subprocess into a freshly initialised
   SQLite database — timed end to end (reading and checking with the engine's loader, writing the records
   in batched commits). Target: 1M bindings ≤ 60 s.
2. Analyze: the ~100k-binding organization of bench/server.py (its builder, reused) served by
   `keycard serve`; "who has P on R" (`analyzeIamPolicy` with a resource and a permission selector, groups
   expanded) for projects, folders and buckets, each timed as one HTTP request. Target: ≤ 1 s.

Bounded: the import is given 240 s, the analyze phase a fixed number of queries. --quick uses 100k bindings
and 10 queries. The Markdown section between the asset-bench markers of --out is replaced (or appended).
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

from bench.server import KEYCARD, Server, build, load_avg, machine, mint_token, write_section  # noqa: E402
from keycard.catalog import builtin_roles  # noqa: E402

START, END = "<!-- asset-bench:start -->", "<!-- asset-bench:end -->"
CRM = "//cloudresourcemanager.googleapis.com"
IMPORT_TARGET_S, ANALYZE_TARGET_S = 60.0, 1.0
ORG = "461902537299"


# ============================================================================================ export
def write_export(path: Path, groups_path: Path, bindings: int, seed: int = 11) -> dict[str, int]:
    """A seeded CAI export with about ``bindings`` bindings (50 per project, 20 per folder, 8 per bucket)."""
    rng = random.Random(seed)
    roles = sorted(r["name"] for r in builtin_roles())
    users = [f"user:u{i}@example.com" for i in range(50_000)]
    groups = [f"g{i}@example.com" for i in range(2_000)]
    sas = [f"serviceAccount:sa{i}@p{i % 500:05d}-proj.iam.gserviceaccount.com" for i in range(5_000)]
    cond = {"title": "until 2030", "expression": 'request.time < timestamp("2030-01-01T00:00:00Z")'}
    counts = {"bindings": 0, "projects": 0, "folders": 0, "buckets": 0, "records": 0}
    dumps = json.JSONEncoder(separators=(",", ":")).encode

    def member() -> str:
        x = rng.random()
        if x < 0.7:
            return users[rng.randrange(len(users))]
        if x < 0.85:
            return "group:" + groups[rng.randrange(len(groups))]
        if x < 0.98:
            return sas[rng.randrange(len(sas))]
        return "domain:example.com"

    def policy(n: int) -> dict[str, Any]:
        out = []
        for i, role in enumerate(rng.sample(roles, min(n, len(roles)))):
            b: dict[str, Any] = {"role": role, "members": sorted({member() for _ in range(rng.randint(1, 3))})}
            if i % 10 == 9:
                b["condition"] = cond
            out.append(b)
        counts["bindings"] += len(out)
        return {"version": 3, "bindings": out, "etag": "BwX="}

    per_project, per_folder, per_bucket = 50, 20, 8
    n_projects = max(1, bindings // (per_project + 2 * per_bucket + 1))
    n_folders = max(1, n_projects // 100)
    with path.open("w", encoding="utf-8") as f:
        def emit(rec: dict[str, Any]) -> None:
            f.write(dumps(rec))
            f.write("\n")
            counts["records"] += 1
        org = f"organizations/{ORG}"
        emit({"name": f"{CRM}/{org}", "asset_type": "cloudresourcemanager.googleapis.com/Organization",
              "ancestors": [org], "iam_policy": policy(10)})
        folders: list[list[str]] = []
        for i in range(n_folders):
            fid = f"folders/{300_000_000_000 + i}"
            anc = [fid, *(rng.choice(folders) if folders and rng.random() < 0.5 else [org])]
            if len(anc) > 5:
                anc = [fid, org]
            emit({"name": f"{CRM}/{fid}", "asset_type": "cloudresourcemanager.googleapis.com/Folder",
                  "ancestors": anc, "resource": {"version": "v1", "discovery_name": "Folder",
                                                 "parent": f"{CRM}/{anc[1]}", "data": {"displayName": f"f{i}"}}})
            emit({"name": f"{CRM}/{fid}", "asset_type": "cloudresourcemanager.googleapis.com/Folder",
                  "ancestors": anc, "iam_policy": policy(per_folder)})
            folders.append(anc)
            counts["folders"] += 1
        for i in range(n_projects):
            num = str(400_000_000_000 + i)
            pid = f"bench-{i:06d}"
            anc = [f"projects/{num}", *rng.choice(folders)]
            emit({"name": f"{CRM}/projects/{num}", "asset_type": "cloudresourcemanager.googleapis.com/Project",
                  "ancestors": anc, "resource": {"version": "v1", "discovery_name": "Project", "parent": f"{CRM}/"
                                                 f"{anc[1]}", "data": {"projectId": pid, "projectNumber": num}}})
            emit({"name": f"{CRM}/projects/{num}", "asset_type": "cloudresourcemanager.googleapis.com/Project",
                  "ancestors": anc, "iam_policy": policy(per_project)})
            for j in range(2):
                emit({"name": f"//storage.googleapis.com/projects/_/buckets/{pid}-b{j}",
                      "asset_type": "storage.googleapis.com/Bucket", "ancestors": anc,
                      "iam_policy": policy(per_bucket)})
                counts["buckets"] += 1
            counts["projects"] += 1
    groups_json = {g: [users[rng.randrange(len(users))] for _ in range(10)] for g in groups}
    for i in range(0, 300):
        groups_json[groups[i]].append(f"group:{groups[i + 300]}")
    groups_path.write_text(json.dumps(groups_json))
    return counts


def bench_import(workdir: Path, bindings: int, budget: float) -> dict[str, Any]:
    export, groups = workdir / "export.ndjson", workdir / "groups.json"
    t0 = time.perf_counter()
    counts = write_export(export, groups, bindings)
    gen_s = time.perf_counter() - t0
    url = f"sqlite:///{workdir / 'import' / 'keycard.db'}"
    (workdir / "import").mkdir(exist_ok=True)
    init = subprocess.run([*KEYCARD, "init", "--organization-domain", "example.com", "--admin",
                           "user:admin@example.com", "--database", url, "--format", "json"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    if init.returncode != 0:
        raise RuntimeError(f"keycard init failed: {init.stderr[-2000:]}")
    print(f"[import] {counts['bindings']:,} bindings in {counts['records']:,} records "
          f"({export.stat().st_size / 2**20:.0f} MiB), generated in {gen_s:.1f} s; importing …", flush=True)
    t1 = time.perf_counter()
    done = subprocess.run([*KEYCARD, "import", "--cai", str(export), "--groups", str(groups), "--database", url,
                           "--format", "json"], cwd=REPO, capture_output=True, text=True, timeout=budget)
    import_s = time.perf_counter() - t1
    if done.returncode != 0:
        raise RuntimeError(f"keycard import failed: {done.stderr[-2000:]}")
    out = json.loads(done.stdout)
    print(f"[import] {import_s:.1f} s: {out}", flush=True)
    return {"counts": counts, "gen_s": gen_s, "import_s": import_s, "result": out,
            "mib": export.stat().st_size / 2**20}


# =========================================================================================== analyze
def bench_analyze(workdir: Path, n_queries: int, quick: bool) -> dict[str, Any]:
    url = f"sqlite:///{workdir / 'analyze' / 'keycard.db'}"
    (workdir / "analyze").mkdir(exist_ok=True)
    sizes = dict(folders=200, projects=2000, per_project=48, per_folder=20, groups=300)
    built = build(url, **sizes)
    print(f"[analyze] organization built: {built['counts']} in {built['build_s']:.1f} s", flush=True)
    token = mint_token(url, "admin@example.com")
    server = Server(url, workdir / "analyze" / "server.log")
    rng = random.Random(5)
    perms = ["resourcemanager.projects.get", "storage.objects.get", "ml.models.predict",
             "resourcemanager.projects.setIamPolicy", "iam.serviceAccounts.actAs"]
    org = built["organization"]
    times: list[float] = []
    identities: list[int] = []
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        for i in range(n_queries):
            pid = rng.choice(built["project_ids"])
            num = built["project_numbers"][built["project_ids"].index(pid)]
            target = [f"{CRM}/projects/{pid}", f"{CRM}/projects/{num}",
                      f"//ml.googleapis.com/projects/{pid}/models/m1"][i % 3]
            q = urlencode({"analysisQuery.resourceSelector.fullResourceName": target,
                           "analysisQuery.accessSelector.permissions": perms[i % len(perms)],
                           "analysisQuery.options.expandGroups": "true"})
            t = time.perf_counter()
            conn.request("GET", f"/v1/{org}:analyzeIamPolicy?{q}", headers={"Authorization": f"Bearer {token}"})
            resp = conn.getresponse()
            body = resp.read()
            times.append(time.perf_counter() - t)
            if resp.status != 200:
                raise RuntimeError(f"analyzeIamPolicy {resp.status}: {body[:500]!r}")
            data = json.loads(body)
            identities.append(len({x["name"] for r in data["mainAnalysis"].get("analysisResults", [])
                                   for x in r["identityList"]["identities"]}))
        conn.close()
    finally:
        server.stop()
    return {"counts": built["counts"], "n": len(times), "p50_s": statistics.median(times), "max_s": max(times),
            "mean_identities": statistics.mean(identities) if identities else 0, "cold_s": server.cold_s}


# ============================================================================================ report
def render(res: dict[str, Any], cmd: str) -> str:
    m = res["machine"]
    imp, an = res["import"], res["analyze"]
    ok_imp = imp["import_s"] <= IMPORT_TARGET_S * imp["counts"]["bindings"] / 1_000_000
    ok_an = an["max_s"] <= ANALYZE_TARGET_S
    lines = [START, "## Asset analysis and CAI import (bench/asset.py)", "",
             f"`{cmd}` on {m['cpu']} ({m['cores']} cores), Python {m['python']}, {res['date']}; load average "
             f"{res['load_start'][0]:.2f} at start.{' **--quick: indicative only.**' if res['quick'] else ''}", "",
             "| target | measured | verdict |", "|---|---|---|",
             f"| import of a 1M-binding CAI export ≤ {IMPORT_TARGET_S:.0f} s (scaled: {imp['counts']['bindings']:,} "
             f"bindings) | {imp['import_s']:.1f} s | {'PASS' if ok_imp else 'FAIL'} |",
             f"| analyze \"who has P on R\" ≤ {ANALYZE_TARGET_S:.0f} s on the ~100k-binding org | max "
             f"{an['max_s'] * 1000:.0f} ms (p50 {an['p50_s'] * 1000:.0f} ms, {an['n']} queries) | "
             f"{'PASS' if ok_an else 'FAIL'} |", "",
             f"- import: {imp['counts']['records']:,} records ({imp['mib']:.0f} MiB NDJSON; "
             f"{imp['counts']['projects']:,} projects, {imp['counts']['folders']:,} folders, "
             f"{imp['counts']['buckets']:,} buckets, 2,000 groups), "
             f"`keycard import --cai … --groups …` as a subprocess into a fresh SQLite database (reading and "
             f"checking with the engine's loader, then {imp['result']['records']:,} records in batched commits); "
             f"export generated in {imp['gen_s']:.1f} s (not counted).",
             f"- analyze: bench/server.py's organization ({an['counts']['bindings']:,} bindings, "
             f"{an['counts']['projects']:,} projects, {an['counts']['folders']:,} folders, {an['counts']['groups']:,} "
             f"groups) served by `keycard serve` (SQLite); one `GET …:analyzeIamPolicy` per query over HTTP, "
             f"resource = a project (by id or number) or a model in it, one permission, groups expanded; on average "
             f"{an['mean_identities']:.0f} identities per answer.", END, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100k bindings, 10 queries (indicative only)")
    ap.add_argument("--bindings", type=int, default=0)
    ap.add_argument("--queries", type=int, default=0)
    ap.add_argument("--out", default="docs/benchmarks.md")
    ap.add_argument("--workdir", default="")
    args = ap.parse_args(argv)
    bindings = args.bindings or (100_000 if args.quick else 1_000_000)
    queries = args.queries or (10 if args.quick else 60)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="keycard-asset-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"machine": machine(), "load_start": load_avg(), "quick": args.quick,
                           "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")}
    try:
        res["import"] = bench_import(workdir, bindings, budget=240)
        res["analyze"] = bench_analyze(workdir, queries, args.quick)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    cmd = "bench/asset.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = render(res, cmd.strip())
    out = Path(args.out) if os.path.isabs(args.out) else REPO / args.out
    write_section(out, md, START, END)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
