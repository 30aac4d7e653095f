"""Recommender / simulator benchmark: the access record's cost per request, and replaying 100k accesses.

    .venv/bin/python bench/reco.py [--out docs/benchmarks.md] [--quick]

In-process, over a fresh SQLite installation (the server's own Services, store and engine):

1. Access record overhead: ``Services.authorize`` (the check every API method makes, now also feeding
   the access record) timed call by call with the recorder off and on; and ``testIamPermissions``
   (which authorizes nothing, so the record does not touch it) for comparison.
2. Recording: 100,000 distinct (principal, permission, resource) rows upserted into the store.
3. Replay (Policy Simulator): read the 100,000 recorded accesses back and replay them under a proposed
   policy (baseline and simulated check of each) — target ≤ 30 s.
4. Recommendations: the recommender's analysis of the project's bindings over the same record.

The Markdown section between the reco-bench markers of --out is replaced (or appended). Bounded: a few
tens of seconds at full size (--quick: 20,000 accesses).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

from bench.server import machine, write_section  # noqa: E402
from keycard.engine.model import parse_allow_policy  # noqa: E402
from keycard.server import init_installation, open_services  # noqa: E402
from keycard.services import iam_policy  # noqa: E402
from keycard.services import resourcemanager as crm  # noqa: E402
from keycard.services.access_record import minute_of  # noqa: E402
from keycard.services.common import Caller, Services  # noqa: E402
from keycard.services.recommender import analyse  # noqa: E402
from keycard.services.simulator import replay  # noqa: E402
from keycard.store.base import AccessRecord  # noqa: E402
from keycard.store.sql import open_store  # noqa: E402

START, END = "<!-- reco-bench:start -->", "<!-- reco-bench:end -->"
ADMIN = "user:admin@example.com"
PROJECT = "bench-reco"
REPLAY_TARGET_S = 30.0
ROLES = ("roles/ml.admin", "roles/ml.developer", "roles/ml.viewer", "roles/storage.objectViewer",
         "roles/iam.serviceAccountUser")


def _per_call_us(fn: object, n: int) -> float:
    call = fn  # type: ignore[assignment]
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n // 5):
            call()  # type: ignore[operator]
        samples.append((time.perf_counter() - t0) / (n // 5) * 1e6)
    return statistics.median(samples)


def _setup(url: str, principals: int) -> tuple[Services, str]:
    store = open_store(url)
    init_installation(store, domain="example.com", admins=[ADMIN])
    store.close()
    services, _keys, _store = open_services(url)
    admin = Caller(ADMIN)
    org = (services.organization or "").split("/", 3)[3]
    crm.create_project(services, admin, {"projectId": PROJECT, "parent": org})
    project = crm.resolve_project(services, PROJECT)
    policy = iam_policy.get_iam_policy(services, admin, project, service=crm.SERVICE, version=3,
                                       permission="resourcemanager.projects.getIamPolicy")
    policy["bindings"] = [*policy.get("bindings", []),
                          *({"role": role, "members": [f"user:u{i}@example.com" for i in range(principals)
                                                       if i % len(ROLES) == k]} for k, role in enumerate(ROLES))]
    iam_policy.set_iam_policy(services, admin, project, {"policy": policy}, service=crm.SERVICE,
                              permission="resourcemanager.projects.setIamPolicy", method="SetIamPolicy")
    return services, project


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/benchmarks.md")
    ap.add_argument("--quick", action="store_true", help="20,000 accesses, fewer timed calls")
    ap.add_argument("--accesses", type=int, default=None)
    args = ap.parse_args(argv)
    n_access = args.accesses or (20_000 if args.quick else 100_000)
    calls = 20_000 if args.quick else 100_000
    principals = 1000
    with tempfile.TemporaryDirectory(prefix="kc-reco-bench-") as d:
        url = f"sqlite:///{Path(d) / 'keycard.db'}"
        services, project = _setup(url, principals)
        engine, store = services.runtime.engine, services.runtime.store
        admin = Caller(ADMIN)
        perm, svc_name = "resourcemanager.projects.getIamPolicy", crm.SERVICE
        recorder = services.access
        assert recorder is not None

        # 1. overhead of the access record on the request path
        def authorize() -> None:
            services.authorize(admin, perm, project, service=svc_name)
            admin.authorizations.clear()
        services.access = None
        off = _per_call_us(authorize, calls)
        services.access = recorder
        on = _per_call_us(authorize, calls)
        recorder.flush()
        body = {"permissions": ["resourcemanager.projects.get", "ml.models.get"]}
        tip = _per_call_us(lambda: iam_policy.test_iam_permissions(services, admin, project, body), calls // 2)

        # 2. recording 100k distinct accesses
        now = dt.datetime.now(dt.UTC)
        perms = sorted(engine.get_role("roles/ml.admin").permissions)  # type: ignore[union-attr]
        rows: list[AccessRecord] = []
        i = 0
        while len(rows) < n_access:
            p = f"user:u{i % principals}@example.com"
            rows.append(AccessRecord(minute_of(now - dt.timedelta(minutes=i % 5000)), p, perms[i % len(perms)],
                                     f"//ml.googleapis.com/projects/{PROJECT}/models/m{i // principals}",
                                     True, 1 + i % 3))
            i += 1
        t0 = time.perf_counter()
        for k in range(0, len(rows), 10_000):
            store.record_access(rows[k:k + 10_000])
        record_s = time.perf_counter() - t0

        # 3. replay under a proposed policy: roles/ml.admin removed
        current = engine.get_iam_policy(project)
        assert current is not None
        proposed = parse_allow_policy({**current.to_json(), "bindings": [
            b.to_json() for b in current.bindings if b.role != "roles/ml.admin"]})
        t0 = time.perf_counter()
        recorded = list(store.accesses(since_minute=minute_of(now) - 90 * 1440))
        read_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        _changed, summary = replay(engine, project, proposed, recorded, time=now)
        replay_s = time.perf_counter() - t0

        # 4. recommendations over the same record
        t0 = time.perf_counter()
        findings = analyse(engine, project, recorded)
        reco_s = time.perf_counter() - t0
        services.runtime.stop()
        store.close()

    total = read_s + replay_s
    m = machine()
    where = f"{m['cpu']}, {m['cores']} cores, {m['mem_gib']:.0f} GiB, Python {m['python']}"
    ok = total <= REPLAY_TARGET_S
    lines = [
        START,
        "## Recommender and Policy Simulator (bench/reco.py)",
        "",
        f"{where}; in-process, SQLite; {'--quick, ' if args.quick else ''}{len(rows):,} recorded accesses "
        f"of {principals:,} principals on one project. Command: `.venv/bin/python bench/reco.py`.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| `Services.authorize`, access record off | {off:.2f} µs |",
        f"| `Services.authorize`, access record on | {on:.2f} µs (+{on - off:.2f} µs) |",
        f"| `testIamPermissions` (2 permissions; records nothing) | {tip:.2f} µs |",
        f"| record {len(rows):,} access rows (upsert, 10k per transaction) | {record_s:.2f} s |",
        f"| read them back (90-day window) | {read_s:.2f} s |",
        f"| replay {summary['logCount']:,} access tuples (baseline + simulated check) | {replay_s:.2f} s "
        f"({summary['logCount'] / max(replay_s, 1e-9):,.0f} tuples/s); {summary['differenceCount']:,} change |",
        f"| replay total (read + replay) vs target ≤ {REPLAY_TARGET_S:.0f} s | {total:.2f} s "
        f"{'✅' if ok else '❌'} |",
        f"| recommender analysis of {len(findings):,} (binding, member) pairs | {reco_s:.2f} s |",
        "",
        END,
    ]
    section = "\n".join(lines) + "\n"
    sys.stdout.write(section)
    write_section(Path(args.out), section, START, END)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
