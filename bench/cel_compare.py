"""Compare the CEL runtimes available to keycard on Google IAM Condition expressions.

Run:  .venv/bin/python bench/cel_compare.py [--quick]

Correctness first: every library runs the same corpus of ~50 IAM Condition
expressions (Google's attributes and functions, including the ``extract()``
extension) and each case must produce the expected outcome: ``True``,
``False``, ``"error"`` (evaluation fails, e.g. a missing attribute) or
``"invalid"`` (rejected when compiled, e.g. an unknown attribute).

Then speed: median compile time and median evaluation time (building the
per-request activation + evaluating + reading the bool), over the cases every
runtime gets right, measured with ``time.perf_counter_ns``.

``CORPUS`` is also the fixture of tests/engine/test_conditions.py.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from keycard.engine.conditions import ConditionContext, extract_template

Outcome = bool | Literal["error", "invalid"]

UTC = datetime.UTC
# Friday 2024-03-15 14:30:45 UTC (15:30:45 in Berlin, CET).
T0 = datetime.datetime(2024, 3, 15, 14, 30, 45, tzinfo=UTC)
# Sunday 2024-03-31 23:30 UTC = Monday 2024-04-01 01:30 in Berlin (CEST, DST began that night).
T_DST = datetime.datetime(2024, 3, 31, 23, 30, tzinfo=UTC)
# 2024-12-31 23:00 UTC = 2025-01-01 08:00 in Tokyo.
T_NYE = datetime.datetime(2024, 12, 31, 23, 0, tzinfo=UTC)
# Same instant as T0, expressed in +09:00.
T0_TOKYO = T0.astimezone(datetime.timezone(datetime.timedelta(hours=9)))

OBJECT = "projects/_/buckets/b/objects/reports/2024/q1.csv"
OBJECT_TYPE = "storage.googleapis.com/Object"
STORAGE = "storage.googleapis.com"


@dataclass(frozen=True)
class Case:
    name: str
    expression: str
    expected: Outcome
    request_time: datetime.datetime = T0
    resource_name: str = OBJECT
    resource_type: str = OBJECT_TYPE
    resource_service: str = STORAGE
    extra: Mapping[str, str] = field(default_factory=dict)

    def context(self) -> ConditionContext:
        return ConditionContext(
            request_time=self.request_time,
            resource_name=self.resource_name,
            resource_type=self.resource_type,
            resource_service=self.resource_service,
            extra=dict(self.extra),
        )


IAP = {"request.path": "/predict/v1", "request.host": "api.example.com"}

CORPUS: tuple[Case, ...] = (
    # --- request.time, timestamp(), duration()
    Case("time_before_expiry", 'request.time < timestamp("2025-01-01T00:00:00Z")', True),
    Case("time_after_expiry", 'request.time < timestamp("2024-01-01T00:00:00Z")', False),
    Case("time_window", 'request.time >= timestamp("2024-03-01T00:00:00Z") && '
         'request.time < timestamp("2024-04-01T00:00:00Z")', True),
    Case("timestamp_with_offset", 'request.time > timestamp("2024-03-15T15:00:00+01:00")', True),
    Case("timestamp_plus_duration",
         'request.time < timestamp("2024-03-15T14:00:00Z") + duration("1h")', True),
    Case("time_minus_duration",
         'request.time - duration("3600s") > timestamp("2024-03-15T14:00:00Z")', False),
    Case("timestamp_difference", 'request.time - timestamp("2024-03-15T00:00:00Z") > duration("14h")', True),
    Case("bad_timestamp_literal", 'request.time < timestamp("not-a-time")', "error"),
    # --- date/time accessors, UTC by default
    Case("getHours_utc", "request.time.getHours() == 14", True),
    Case("getMinutes_utc", "request.time.getMinutes() == 30", True),
    Case("getSeconds_utc", "request.time.getSeconds() == 45", True),
    Case("getDayOfWeek_utc_sunday_is_0", "request.time.getDayOfWeek() == 5", True),
    Case("getDayOfMonth_zero_based", "request.time.getDayOfMonth() == 14", True),
    Case("getDate_one_based", "request.time.getDate() == 15", True),
    Case("getMonth_zero_based", "request.time.getMonth() == 2", True),
    Case("getFullYear_utc", "request.time.getFullYear() == 2024", True),
    Case("getHours_input_not_utc", "request.time.getHours() == 14 && request.time.getDate() == 15", True,
         request_time=T0_TOKYO),
    # --- with a time zone
    Case("getHours_berlin", 'request.time.getHours("Europe/Berlin") == 15', True),
    Case("business_hours_berlin", 'request.time.getHours("Europe/Berlin") >= 9 && '
         'request.time.getHours("Europe/Berlin") < 17', True),
    Case("weekday_berlin", 'request.time.getDayOfWeek("Europe/Berlin") >= 1 && '
         'request.time.getDayOfWeek("Europe/Berlin") <= 5', True),
    Case("fixed_offset_zone",
         'request.time.getHours("+05:30") == 20 && request.time.getMinutes("+05:30") == 0', True),
    Case("getSeconds_zone", 'request.time.getSeconds("America/New_York") == 45', True),
    Case("dst_night_berlin", 'request.time.getDate("Europe/Berlin") == 1 && '
         'request.time.getMonth("Europe/Berlin") == 3 && request.time.getDayOfWeek("Europe/Berlin") == 1 && '
         'request.time.getDayOfMonth("Europe/Berlin") == 0 && request.time.getHours("Europe/Berlin") == 1',
         True, request_time=T_DST),
    Case("dst_night_utc", "request.time.getDate() == 31 && request.time.getMonth() == 2 && "
         "request.time.getDayOfWeek() == 0", True, request_time=T_DST),
    Case("new_year_tokyo",
         'request.time.getFullYear("Asia/Tokyo") == 2025 && request.time.getFullYear() == 2024', True,
         request_time=T_NYE),
    Case("bad_time_zone", 'request.time.getHours("Mars/Olympus_Mons") == 1', "error"),
    # --- resource.name / type / service
    Case("name_startsWith", 'resource.name.startsWith("projects/_/buckets/b/objects/reports/")', True),
    Case("name_startsWith_other_bucket", 'resource.name.startsWith("projects/_/buckets/c/")', False),
    Case("name_endsWith", 'resource.name.endsWith(".csv")', True),
    Case("name_matches", r'resource.name.matches("^projects/_/buckets/b/objects/reports/[0-9]{4}/")', True),
    Case("name_matches_false", r'resource.name.matches("\\.pdf$")', False),
    Case("bad_regex", 'resource.name.matches("[")', "error"),
    Case("type_equals", 'resource.type == "storage.googleapis.com/Object"', True),
    Case("service_and_type", 'resource.service == "storage.googleapis.com" && '
         'resource.type != "storage.googleapis.com/Bucket"', True),
    Case("type_in_list",
         'resource.type in ["storage.googleapis.com/Bucket", "storage.googleapis.com/Object"]', True),
    Case("not_prefix", '!resource.name.startsWith("projects/_/buckets/secret/")', True),
    Case("or_either_side",
         'resource.type == "storage.googleapis.com/Bucket" || resource.name.endsWith(".csv")', True),
    Case("google_bucket_or_objects", '(resource.type == "storage.googleapis.com/Bucket" && '
         'resource.name == "projects/_/buckets/b") || (resource.type == "storage.googleapis.com/Object" && '
         'resource.name.startsWith("projects/_/buckets/b/objects/reports/"))', True),
    Case("model_name",
         'resource.name == "projects/p/models/m" && resource.service == "ml.googleapis.com"', True,
         resource_name="projects/p/models/m", resource_type="ml.googleapis.com/Model",
         resource_service="ml.googleapis.com"),
    # --- extract()
    Case("extract_segment", 'resource.name.extract("/objects/{name}/") == "reports"', True),
    Case("extract_to_end", 'resource.name.extract("/objects/{name}") == "reports/2024/q1.csv"', True),
    Case("extract_bucket", 'resource.name.extract("projects/_/buckets/{bucket}/") == "b"', True),
    Case("extract_no_match_is_empty", 'resource.name.extract("/secrets/{name}") == ""', True),
    Case("extract_then_startsWith", 'resource.name.extract("projects/{project}/").startsWith("p") && '
         'resource.type == "ml.googleapis.com/Model"', True,
         resource_name="projects/p/models/m", resource_type="ml.googleapis.com/Model",
         resource_service="ml.googleapis.com"),
    Case("extract_bad_template", 'resource.name.extract("no-placeholder") == ""', "error"),
    # --- optional attributes (identity-aware proxy)
    Case("request_path_and_host",
         'request.path.startsWith("/predict") && request.host == "api.example.com"', True,
         extra=IAP),
    Case("request_path_missing", 'request.path == "/predict"', "error"),
    Case("missing_absorbed_by_or",
         'resource.type == "storage.googleapis.com/Object" || request.path == "/x"', True),
    Case("missing_absorbed_by_and", 'resource.type == "x" && request.path == "/x"', False),
    # --- rejected at compile time
    Case("empty", "", "invalid"),
    Case("syntax_error", "request.time <", "invalid"),
    Case("unknown_attribute", 'resource.nam == "x"', "invalid"),
    Case("unknown_variable", "principal == 1", "invalid"),
    Case("unknown_function", 'resource.name.startsWithh("x")', "invalid"),
    Case("not_bool", "resource.name", "invalid"),
    Case("type_mismatch", 'request.time < "2024-01-01"', "invalid"),
)


# --------------------------------------------------------------------------- adapters


class Adapter:
    """compile(expression) -> program (raises if rejected); evaluate(program, ctx) -> bool (or raises)."""

    name = ""

    def compile(self, expression: str) -> Any:
        raise NotImplementedError

    def evaluate(self, program: Any, ctx: ConditionContext) -> bool:
        raise NotImplementedError


class CelExprAdapter(Adapter):
    """cel-expr-python (Google's C++ CEL), typed variables + extract() as a Python member function."""

    name = "cel-expr-python 0.1.3 (C++ CEL)"

    def __init__(self) -> None:
        from cel_expr_python import cel

        t = cel.Type
        self.cel = cel
        self.env = cel.NewEnv(
            variables={
                "request.time": t.TIMESTAMP,
                "resource.name": t.STRING,
                "resource.type": t.STRING,
                "resource.service": t.STRING,
                "request.path": t.STRING,
                "request.host": t.STRING,
            },
            functions=[
                cel.FunctionDecl("extract", [
                    cel.Overload("string_extract_string", t.STRING, [t.STRING, t.STRING], is_member=True,
                                 impl=extract_template),
                ]),
            ],
        )

    def compile(self, expression: str) -> Any:
        if not expression.strip():
            raise ValueError("empty")
        program = self.env.compile(expression)
        if program.return_type() not in (self.cel.Type.BOOL, self.cel.Type.DYN):
            raise TypeError("not bool")
        return program

    def evaluate(self, program: Any, ctx: ConditionContext) -> bool:
        data: dict[str, Any] = {
            "request.time": ctx.request_time,
            "resource.name": ctx.resource_name,
            "resource.type": ctx.resource_type,
            "resource.service": ctx.resource_service,
        }
        data.update(ctx.extra)
        value = program.eval(data=data).value()
        if value is True or value is False:
            return value
        raise RuntimeError(str(value))


class CelpyAdapter(Adapter):
    """cel-python (pure Python, lark parser): nested maps for request/resource, extract() as a function."""

    def __init__(self, compiled: bool = False) -> None:
        import logging

        import celpy
        from celpy import celtypes

        logging.getLogger("celpy").setLevel(logging.CRITICAL)
        self.celpy = celpy
        self.t = celtypes
        from celpy.celparser import CELParser

        runner = celpy.CompiledRunner if compiled else celpy.InterpretedRunner
        # celpy keeps ONE lark parser in a class attribute, built for the first runner's tree class;
        # give each adapter its own and swap it in before parsing.
        self.parser_holder = CELParser
        CELParser.CEL_PARSER = None
        self.env = celpy.Environment(runner_class=runner)
        self.env.compile("true")
        self.parser = CELParser.CEL_PARSER
        self.name = f"cel-python 0.5.0 ({'CompiledRunner' if compiled else 'InterpretedRunner'})"

        def extract(value: Any, template: Any) -> Any:
            return celtypes.StringType(extract_template(str(value), str(template)))

        self.functions = {"extract": extract}

    def compile(self, expression: str) -> Any:
        if not expression.strip():
            raise ValueError("empty")
        self.parser_holder.CEL_PARSER = self.parser
        return self.env.program(self.env.compile(expression), functions=self.functions)

    def evaluate(self, program: Any, ctx: ConditionContext) -> bool:
        t = self.t
        request = {t.StringType("time"): t.TimestampType(ctx.request_time)}
        for key, value in ctx.extra.items():
            scope, _, attr = key.partition(".")
            if scope == "request":
                request[t.StringType(attr)] = t.StringType(value)
        activation = {
            "request": t.MapType(request),
            "resource": t.MapType({
                t.StringType("name"): t.StringType(ctx.resource_name),
                t.StringType("type"): t.StringType(ctx.resource_type),
                t.StringType("service"): t.StringType(ctx.resource_service),
            }),
        }
        value = program.evaluate(activation)
        if isinstance(value, t.BoolType):
            return bool(value)
        raise RuntimeError(f"not bool: {value!r}")


class KeycardAdapter(Adapter):
    """keycard.engine.conditions itself: Google semantics checks, attribute scan, error mapping."""

    name = "keycard.engine.conditions (wraps cel-expr-python)"

    def __init__(self) -> None:
        from keycard.engine import conditions

        self.conditions = conditions

    def compile(self, expression: str) -> Any:
        # compile_condition() minus its cache (which would make the timing meaningless);
        # tests/engine/test_conditions.py covers the InvalidArgument wrapping.
        return self.conditions._compile(expression)

    def evaluate(self, program: Any, ctx: ConditionContext) -> bool:
        result: bool = program.evaluate(ctx)
        return result


# --------------------------------------------------------------------------- measurement


def outcome(adapter: Adapter, case: Case) -> Outcome:
    try:
        program = adapter.compile(case.expression)
    except Exception:
        return "invalid"
    try:
        return adapter.evaluate(program, case.context())
    except Exception:
        return "error"


def median_us(samples: list[int]) -> float:
    return statistics.median(samples) / 1000.0


def time_calls(fn: Callable[[], object], runs: int) -> list[int]:
    samples: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(runs):
        start = clock()
        fn()
        samples.append(clock() - start)
    return samples


@dataclass
class Result:
    adapter: Adapter
    outcomes: dict[str, Outcome]
    passed: list[str]
    compile_us: float = 0.0
    eval_us: float = 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer timing runs")
    parser.add_argument("--details", action="store_true", help="list every failing case")
    args = parser.parse_args(argv)
    compile_runs, eval_runs = (20, 200) if args.quick else (100, 2000)

    adapters: list[Adapter] = [
        CelExprAdapter(), CelpyAdapter(), CelpyAdapter(compiled=True), KeycardAdapter(),
    ]
    results: list[Result] = []
    for adapter in adapters:
        outcomes = {case.name: outcome(adapter, case) for case in CORPUS}
        passed = [c.name for c in CORPUS if outcomes[c.name] == c.expected]
        results.append(Result(adapter, outcomes, passed))

    # Time only the bool cases every runtime gets right, so the medians compare like with like.
    timed = [c for c in CORPUS if isinstance(c.expected, bool) and all(c.name in r.passed for r in results)]
    # Interleave the runtimes case by case so a noisy machine skews them alike.
    compile_samples: dict[int, list[int]] = {id(r): [] for r in results}
    eval_samples: dict[int, list[int]] = {id(r): [] for r in results}
    for case in timed:
        for result in results:
            adapter = result.adapter
            compile_samples[id(result)] += time_calls(functools.partial(adapter.compile, case.expression),
                                                      compile_runs)
            program = adapter.compile(case.expression)
            evaluate = functools.partial(adapter.evaluate, program, case.context())
            eval_samples[id(result)] += time_calls(evaluate, eval_runs)
    for result in results:
        result.compile_us = median_us(compile_samples[id(result)])
        result.eval_us = median_us(eval_samples[id(result)])

    print(f"Corpus: {len(CORPUS)} IAM Condition cases; timing over the {len(timed)} bool cases"
          f" all runtimes pass; {compile_runs} compiles and {eval_runs} evaluations per case,"
          " median of all samples.\n")
    print("| library | corpus passed | compile µs (median) | eval µs (median) |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| {r.adapter.name} | {len(r.passed)}/{len(CORPUS)} | {r.compile_us:.1f} | {r.eval_us:.2f} |")
    print()
    for r in results:
        failed = [c for c in CORPUS if c.name not in r.passed]
        if not failed:
            continue
        print(f"{r.adapter.name} fails: " + ", ".join(
            f"{c.name} (expected {c.expected!r}, got {r.outcomes[c.name]!r})" for c in failed))
        print()


if __name__ == "__main__":
    main()
