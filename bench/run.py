"""`make bench`: keycard and its peers answer the same queries, side by side, in one run.

    .venv/bin/python bench/run.py [--scales small,medium,large] [--quick] [--out docs/benchmarks.md]

For each scale the workload (bench/workload.py) is generated once (cached under --workdir) and
each engine runs in a FRESH subprocess, pinned to one core, so its load time and peak RSS are
its own: load, warm up, time ≥ --checks single checks one by one (perf_counter_ns), measure
throughput without per-check timers, batch throughput where the engine has a batch call, and
the time from a policy write to the next check seeing it. Every engine is bounded by a time
budget; one that does not finish is reported as such. Decisions are compared with keycard's.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.workload import SCALES, Workload, generate

REPO = Path(__file__).resolve().parent.parent
ENGINES = ("keycard", "precomputed", "naive", "cedar", "rego", "casbin")
MODULES = {"keycard": "bench.peers.keycard_engine", "precomputed": "bench.peers.precomputed",
           "naive": "bench.peers.naive", "cedar": "bench.peers.cedar",
           "rego": "bench.peers.rego", "casbin": "bench.peers.casbin"}
PEERS = ("cedar", "rego", "casbin")          # what a user would pick instead (the 10× target)


# ============================================================================================ child
def _pin() -> int | None:
    try:
        cpus = os.sched_getaffinity(0)
        cpu = 1 if 1 in cpus else min(cpus)
        os.sched_setaffinity(0, {cpu})
        return cpu
    except (AttributeError, OSError):
        return None


def run_child(engine: str, workdir: Path, n_checks: int, budget: float, n_writes: int, out: Path,
              mem_gib: float) -> None:
    if mem_gib > 0:
        lim = int(mem_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    cpu = _pin()
    mod = importlib.import_module(MODULES[engine])
    res: dict[str, Any] = {"engine": engine, "cpu": cpu, "status": "ok"}
    t0 = time.perf_counter()
    wl = Workload.load(workdir)
    eng = mod.build(wl)
    res["load_s"] = time.perf_counter() - t0
    res["policies"] = getattr(eng, "n_policies", None)
    unsupported = set(mod.UNSUPPORTED)
    idx = [i for i, m in enumerate(wl.meta) if not (set(m["features"]) & unsupported)]
    res["excluded"] = len(wl.meta) - len(idx)
    queries = [q[:3] for q in wl.queries]
    check = mod.check
    deadline = time.perf_counter() + budget
    decisions: dict[int, bool] = {}
    # warm-up: one pass over (part of) the query list; its answers are the decisions compared
    for warm, i in enumerate(idx, 1):
        p, perm, r = queries[i]
        decisions[i] = bool(check(eng, p, perm, r))
        if warm >= 2000 or time.perf_counter() > deadline - budget * 0.6:
            break
    gc.collect()
    gc.freeze()
    lat: list[int] = []
    pc = time.perf_counter_ns
    n = len(idx)
    k = 0
    end = time.perf_counter() + budget * 0.6
    while k < n_checks:
        i = idx[k % n]
        p, perm, r = queries[i]
        t = pc()
        d = check(eng, p, perm, r)
        lat.append(pc() - t)
        if i not in decisions:
            decisions[i] = bool(d)
        k += 1
        if time.perf_counter() > end:   # outside the timed region
            break
    res["timed_complete"] = k >= n_checks
    res["lat_ns"] = lat
    res["lat_idx"] = [idx[j % n] for j in range(len(lat))]
    # throughput without per-check timers (the clock is read every `stride` checks, ~10 ms)
    m = min(len(lat), n_checks)
    mean_s = (sum(lat) / len(lat) / 1e9) if lat else 1.0
    stride = max(1, min(4096, int(0.01 / max(mean_s, 1e-9))))
    t = time.perf_counter()
    j = 0
    tend = t + budget * 0.15
    while j < m:
        p, perm, r = queries[idx[j % n]]
        check(eng, p, perm, r)
        j += 1
        if j % stride == 0 and time.perf_counter() > tend:
            break
    res["throughput"] = j / (time.perf_counter() - t)
    # batch
    batch = getattr(mod, "check_batch", None)
    if batch is not None:
        size = min(1000, max(1, int(budget * 0.05 / max(mean_s, 1e-9))))
        res["batch_size"] = size
        t = time.perf_counter()
        done = 0
        tend = t + budget * 0.1
        while done < m:
            chunk = [queries[idx[(done + x) % n]] for x in range(size)]
            batch(eng, chunk)
            done += size
            if time.perf_counter() > tend:
                break
        res["batch_throughput"] = done / (time.perf_counter() - t)
    # write → visible
    write = getattr(mod, "write", None)
    writes = []
    if write is not None:
        for w in wl.write_tests[:n_writes]:
            before = bool(check(eng, w["principal"], w["permission"], w["resource"]))
            t = pc()
            write(eng, w["resource"], w["policy"])
            t1 = pc()
            after = bool(check(eng, w["principal"], w["permission"], w["resource"]))
            t2 = pc()
            writes.append({"write_ns": t1 - t, "visible_ns": t2 - t, "before": before, "after": after})
            if time.perf_counter() > deadline + budget * 0.2:
                break
    res["writes"] = writes
    res["decisions"] = {str(i): d for i, d in decisions.items()}
    res["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps(res))


# ============================================================================================ parent
def _spawn(engine: str, workdir: Path, args: argparse.Namespace, timeout: float) -> dict[str, Any]:
    out = workdir / f"result-{engine}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench.run", "--child", engine, "--workdir", str(workdir),
           "--checks", str(args.checks), "--budget", str(args.budget), "--writes", str(args.writes),
           "--result", str(out), "--mem-gib", str(args.mem_gib if engine != "keycard" else args.mem_gib * 2)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, timeout=timeout, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return {"engine": engine, "status": f"did not complete within {timeout:.0f} s"}
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        return {"engine": engine, "status": f"failed (exit {proc.returncode}): " + " / ".join(tail)[:300]}
    res: dict[str, Any] = json.loads(out.read_text())
    res["wall_s"] = time.perf_counter() - t0
    return res


def _machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    vers = {}
    for pkg in ("keycard-iam", "cedarpy", "opa-eval", "casbin", "cel-python"):
        try:
            vers[pkg] = version(pkg)
        except PackageNotFoundError:
            vers[pkg] = "not installed"
    import platform

    return {"cpu": model, "cores": os.cpu_count(), "memory": mem, "python": platform.python_version(),
            "platform": platform.platform(), "versions": vers}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="small,medium,large")
    ap.add_argument("--quick", action="store_true", help="small scale only, fewer queries (CI smoke run)")
    ap.add_argument("--out", default="docs/benchmarks.md")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--queries", type=int, default=None, help="distinct queries (default 4000; quick 1000)")
    ap.add_argument("--checks", type=int, default=None, help="timed single checks (default 20000; quick 3000)")
    ap.add_argument("--budget", type=float, default=None, help="seconds per engine for checks (default 90; quick 8)")
    ap.add_argument("--load-budget", type=float, default=None, help="seconds per engine for loading (default 600)")
    ap.add_argument("--writes", type=int, default=None)
    ap.add_argument("--mem-gib", type=float, default=8.0, help="address-space cap per peer process")
    ap.add_argument("--workdir", default="/tmp/keycard-bench")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    q = args.quick
    args.queries = args.queries or (1000 if q else 4000)
    args.checks = args.checks or (3000 if q else 20000)
    args.budget = args.budget or (8.0 if q else 90.0)
    args.load_budget = args.load_budget or (60.0 if q else 600.0)
    args.writes = args.writes if args.writes is not None else (5 if q else 20)
    if args.child:
        run_child(args.child, Path(args.workdir), args.checks, args.budget, args.writes, Path(args.result),
                  args.mem_gib)
        return 0

    from bench.report import render, summarize

    scales = ["small"] if q else [s.strip() for s in args.scales.split(",") if s.strip()]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if "keycard" in engines:
        engines = ["keycard", *[e for e in engines if e != "keycard"]]
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t_all = time.perf_counter()
    results: dict[str, Any] = {"machine": _machine(), "started": started, "args": vars(args), "scales": {}}
    for scale in scales:
        if scale not in SCALES:
            ap.error(f"unknown scale {scale!r}")
        wdir = Path(args.workdir) / f"{scale}-s{args.seed}-q{args.queries}"
        t = time.perf_counter()
        if Workload.cached(wdir, scale, args.seed, args.queries):
            wl = Workload.load(wdir)
            gen_s = None
            print(f"[{scale}] workload cached in {wdir}", flush=True)
        else:
            print(f"[{scale}] generating workload …", flush=True)
            wl = generate(scale, args.seed, args.queries)
            wl.save(wdir)
            gen_s = time.perf_counter() - t
            print(f"[{scale}] generated in {gen_s:.1f} s: {wl.stats}", flush=True)
        sres: dict[str, Any] = {"stats": wl.stats, "gen_s": gen_s, "queries": wl.queries, "meta": wl.meta,
                                "engines": {}}
        del wl
        for eng in engines:
            print(f"[{scale}] {eng} …", flush=True)
            timeout = args.load_budget + args.budget * 2.5 + 30
            r = _spawn(eng, wdir, args, timeout)
            sres["engines"][eng] = r
            s = summarize(r, sres, eng)
            print(f"[{scale}] {eng}: {s}", flush=True)
        results["scales"][scale] = sres
    results["total_s"] = time.perf_counter() - t_all
    cmd = "bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = render(results, cmd.strip())
    out = REPO / args.out if not os.path.isabs(args.out) else Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md + _kept_sections(out))
    raw = Path(args.workdir) / "results.json"
    slim = {k: v for k, v in results.items() if k != "scales"}
    slim["scales"] = {s: {**{k: v for k, v in d.items() if k not in ("queries", "meta")},
                          "engines": {e: {k: v for k, v in r.items() if k not in ("lat_ns", "lat_idx", "decisions")}
                                      for e, r in d["engines"].items()}}
                      for s, d in results["scales"].items()}
    raw.write_text(json.dumps(slim, indent=1, default=str))
    print(f"wrote {out} in {results['total_s']:.0f} s (raw summary: {raw})")
    return 0



def _kept_sections(out: Path) -> str:
    """The sections the other bench scripts write between their markers (``<!-- NAME:start -->`` …
    ``<!-- NAME:end -->``), kept in their order: this script rewrites only the engine's part."""
    if not out.exists():
        return ""
    found = re.finditer(r"<!-- ([\w-]+):start -->.*?<!-- \1:end -->", out.read_text(), flags=re.S)
    return "".join("\n" + m.group(0) + "\n" for m in found)


if __name__ == "__main__":
    raise SystemExit(main())

