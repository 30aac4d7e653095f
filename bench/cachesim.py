"""Work per check, counted rather than timed: instructions and simulated cache misses (callgrind).

    .venv/bin/python bench/cachesim.py [--scales small,medium,large] [--checks 20000] [--out docs/benchmarks.md]

Timings on a small shared VM move by ±20 % between runs; counts do not. For each scale (the
workload of ``bench/run.py``, generated or read from the same cache) and for keycard and the
precomputed reference index, a fresh process loads the engine and warms it up under
``valgrind --tool=callgrind`` with instrumentation off; instrumentation is switched on
(``callgrind_control -i on``) for exactly ``--checks`` single checks, cycling through the query
list as ``bench/run.py`` does, then off. Reported per check: instructions executed (Ir) and
reads and writes that miss a simulated last-level cache of ``--ll-kib`` (default 2 MiB, 16-way:
what this machine's own memory latency curve shows it has, see below). Also, when a C compiler
is present, that curve: ``bench/native/memlat.c``, the latency of one dependent read by working
set size. Huge pages are off under the simulator (it models caches, not the TLB).

The Markdown section between the cachesim-bench markers of --out is replaced (or appended).
Needs valgrind (callgrind_control comes with it); without it the script says so and exits 2.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import MODULES
from bench.server import write_section
from bench.workload import SCALES, Workload, generate

REPO = Path(__file__).resolve().parent.parent
START, END = "<!-- cachesim-bench:start -->", "<!-- cachesim-bench:end -->"
ENGINES = ("keycard", "precomputed")
EVENTS = ("Ir", "DLmr", "DLmw")


# ============================================================================================ child
def child(engine: str, workdir: Path, checks: int, flag: Path) -> None:
    """Load and warm up (not counted), say ready, wait for the flag, run the counted checks."""
    import gc
    import importlib

    mod = importlib.import_module(MODULES[engine])
    wl = Workload.load(workdir)
    eng = mod.build(wl)
    queries = [q[:3] for q in wl.queries]
    check = mod.check
    for p, perm, r in queries:
        check(eng, p, perm, r)
    gc.collect()
    gc.freeze()
    print("ready", flush=True)
    while not flag.exists():
        time.sleep(0.01)
    n = len(queries)
    for k in range(checks):
        p, perm, r = queries[k % n]
        check(eng, p, perm, r)
    flag.with_suffix(".done").touch()
    while flag.exists():
        time.sleep(0.01)


# ============================================================================================ parent
def _totals(path: Path) -> dict[str, int]:
    """The event totals of a callgrind output file (its ``totals:`` line, written at the end)."""
    events: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("totals:") and events:
            return dict(zip(events, (int(x) for x in line.split()[1:]), strict=False))
    raise RuntimeError(f"no totals in {path}")


def count(engine: str, workdir: Path, checks: int, ll_kib: int, tmp: Path) -> dict[str, float]:
    flag = tmp / f"go-{engine}-{workdir.name}"
    out = tmp / f"callgrind-{engine}-{workdir.name}.out"
    for f in (flag, flag.with_suffix(".done"), out):
        f.unlink(missing_ok=True)
    env = dict(os.environ, KEYCARD_HUGEPAGES="0", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--cache-sim=yes",
           f"--LL={ll_kib * 1024},16,64", f"--callgrind-out-file={out}",
           sys.executable, "-m", "bench.cachesim", "--child", engine, "--workdir", str(workdir),
           "--checks", str(checks), "--flag", str(flag)]
    t0 = time.perf_counter()
    log = tmp / f"valgrind-{engine}-{workdir.name}.log"
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            proc.wait(60)
            raise RuntimeError(f"{engine} did not start under valgrind: {log.read_text()[-400:]}")
        load_s = time.perf_counter() - t0
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
        flag.touch()
        t1 = time.perf_counter()
        while not flag.with_suffix(".done").exists():
            if proc.poll() is not None:
                raise RuntimeError(f"{engine} exited during the counted checks")
            time.sleep(0.05)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
        run_s = time.perf_counter() - t1
        flag.unlink()
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    tot = _totals(out)
    out.unlink(missing_ok=True)
    per = {e: tot.get(e, 0) / checks for e in EVENTS}
    per["misses"] = per["DLmr"] + per["DLmw"]
    per["load_s"] = load_s
    per["run_s"] = run_s
    return per


def memlat(tmp: Path) -> list[tuple[int, float]] | None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    exe = tmp / "memlat"
    subprocess.run([cc, "-O2", "-o", str(exe), str(REPO / "bench" / "native" / "memlat.c")], check=True)
    cpu = 1 if 1 in os.sched_getaffinity(0) else min(os.sched_getaffinity(0))
    res = subprocess.run([str(exe), "1024"], check=True, capture_output=True, text=True,
                         preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    return [(int(a), float(b)) for a, b, _ in (line.split() for line in res.stdout.splitlines())]


def render(rows: dict[str, dict[str, dict[str, float]]], curve: list[tuple[int, float]] | None, args: Any,
           cmd: str) -> str:
    lines = [START, "## Work per check, counted: instructions and simulated cache misses", "",
             f"Generated by `bench/cachesim.py` (section between the `cachesim-bench` markers): `{cmd}`, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Each engine loads and warms up under "
             f"`valgrind --tool=callgrind` with instrumentation off, then {args.checks:,} single checks are counted "
             "(cycling through the query list, as the timed run does). Counts are exact and repeatable: they "
             "do not move with the machine's load. A miss is a data read or write that misses a simulated "
             f"last-level cache of {args.ll_kib:,} KiB (16-way), the size this machine's latency curve shows.", "",
             "| scale | engine | instructions per check | LL misses per check (reads + writes) |",
             "|---|---|---:|---:|"]
    for scale, engines in rows.items():
        for eng, r in engines.items():
            lines.append(f"| {scale} ({SCALES[scale]:,} bindings) | {eng} | {r['Ir']:,.0f} | "
                         f"{r['misses']:.1f} ({r['DLmr']:.1f} + {r['DLmw']:.1f}) |")
    lines.append("")
    k = {s: e["keycard"] for s, e in rows.items() if "keycard" in e}
    if "small" in k and "large" in k:
        lines += [f"keycard's instructions per check grow {k['large']['Ir'] / k['small']['Ir']:.2f}× from 1k to 1M "
                  f"bindings; its cache misses {k['small']['misses']:.1f} → {k['large']['misses']:.1f}. The work "
                  "follows depth and nesting; what grows with the number of bindings is how much of it is "
                  "already in a cache.", ""]
    if curve:
        lines += ["**Latency of one dependent read by working set** (`bench/native/memlat.c`, pinned to one core, "
                  "huge pages advised):", "",
                  "| working set | " + " | ".join(f"{kib // 1024} MiB" if kib >= 1024 else f"{kib} KiB"
                                                  for kib, _ in curve) + " |",
                  "|---|" + "---:|" * len(curve),
                  "| ns per read | " + " | ".join(f"{ns:.0f}" for _, ns in curve) + " |", ""]
    else:
        lines += ["(No C compiler: the latency curve was not measured.)", ""]
    lines.append(END)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="small,medium,large")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--checks", type=int, default=20_000)
    ap.add_argument("--ll-kib", type=int, default=2048, help="simulated last-level cache (KiB)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--queries", type=int, default=4000)
    ap.add_argument("--workdir", default="/tmp/keycard-bench")
    ap.add_argument("--out", default="docs/benchmarks.md")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--flag", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, Path(args.workdir), args.checks, Path(args.flag))
        return 0
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("bench/cachesim.py needs valgrind (with callgrind_control): install it (Debian: apt-get install "
              "valgrind) and run again.", file=sys.stderr)
        return 2
    rows: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="keycard-cachesim-") as t:
        tmp = Path(t)
        curve = memlat(tmp)
        if curve:
            print("memory latency: " + ", ".join(f"{kib} KiB {ns:.0f} ns" for kib, ns in curve), flush=True)
        for scale in [s.strip() for s in args.scales.split(",") if s.strip()]:
            if scale not in SCALES:
                ap.error(f"unknown scale {scale!r}")
            wdir = Path(args.workdir) / f"{scale}-s{args.seed}-q{args.queries}"
            if not Workload.cached(wdir, scale, args.seed, args.queries):
                print(f"[{scale}] generating workload …", flush=True)
                generate(scale, args.seed, args.queries).save(wdir)
            for eng in [e.strip() for e in args.engines.split(",") if e.strip()]:
                print(f"[{scale}] {eng} under callgrind …", flush=True)
                r = count(eng, wdir, args.checks, args.ll_kib, tmp)
                rows.setdefault(scale, {})[eng] = r
                print(f"[{scale}] {eng}: {r['Ir']:,.0f} instructions, {r['misses']:.1f} LL misses per check "
                      f"(load {r['load_s']:.0f} s, counted run {r['run_s']:.0f} s)", flush=True)
    cmd = "bench/cachesim.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = REPO / args.out if not os.path.isabs(args.out) else Path(args.out)
    write_section(out, render(rows, curve, args, cmd.strip()), START, END)
    print(f"wrote the cachesim section of {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
