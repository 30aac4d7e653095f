"""IAM Conditions (CEL): corpus, garbage input, time zones, extract(), missing attributes, caching."""

from __future__ import annotations

import datetime
import importlib.util
import sys
import zoneinfo
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keycard.engine.conditions import (
    MAX_LOGIC_OPERATORS,
    CompiledCondition,
    ConditionContext,
    ConditionError,
    compile_condition,
    extract_template,
)
from keycard.errors import InvalidArgument


def _load_bench() -> ModuleType:
    """The corpus lives in bench/cel_compare.py (shared with the library comparison)."""
    path = Path(__file__).resolve().parents[2] / "bench" / "cel_compare.py"
    spec = importlib.util.spec_from_file_location("keycard_bench_cel_compare", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


BENCH = _load_bench()
CORPUS = BENCH.CORPUS
UTC = datetime.UTC
NOW = datetime.datetime(2024, 3, 15, 14, 30, 45, tzinfo=UTC)


def ctx(**kwargs: object) -> ConditionContext:
    base: dict[str, object] = {
        "request_time": NOW,
        "resource_name": "projects/_/buckets/b/objects/reports/2024/q1.csv",
        "resource_type": "storage.googleapis.com/Object",
        "resource_service": "storage.googleapis.com",
    }
    base.update(kwargs)
    return ConditionContext(**base)  # type: ignore[arg-type]


def run(expression: str, context: ConditionContext | None = None) -> bool:
    return compile_condition(expression).evaluate(context or ctx())


# --------------------------------------------------------------------------- corpus


def test_corpus_is_large_and_covers_all_outcomes() -> None:
    assert len(CORPUS) >= 40
    assert len({case.name for case in CORPUS}) == len(CORPUS)
    assert {str(case.expected) for case in CORPUS} == {"True", "False", "error", "invalid"}


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_corpus(case: object) -> None:
    expression: str = case.expression  # type: ignore[attr-defined]
    expected = case.expected  # type: ignore[attr-defined]
    context: ConditionContext = case.context()  # type: ignore[attr-defined]
    if expected == "invalid":
        with pytest.raises(InvalidArgument) as err:
            compile_condition(expression)
        assert err.value.field == "condition.expression"
        assert "condition.expression" in err.value.message
        assert "\n" not in err.value.message
        return
    compiled = compile_condition(expression)
    if expected == "error":
        with pytest.raises(ConditionError) as cerr:
            compiled.evaluate(context)
        assert "\n" not in str(cerr.value)
        return
    result = compiled.evaluate(context)
    assert type(result) is bool
    assert result is expected


# --------------------------------------------------------------------------- garbage in

CEL_TOKENS = [
    "request.time", "resource.name", "resource.type", "resource.service", "request.path", "request.host",
    "request", "resource", "time", "name", ".", "(", ")", "[", "]", "{", "}", ",", ":", "?",
    "&&", "||", "!", "==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/", "%", "in",
    "true", "false", "null", "1", "0", "-1", "1.5", "1u", '"x"', "''", 'r"\\d"', 'b"z"', '"""a"""',
    "startsWith", "endsWith", "matches", "extract", "timestamp", "duration", "getHours", "getDayOfWeek",
    "getMonth", "getDate", '"Europe/Berlin"', '"/objects/{name}/"', '"{n}"', '"1h"',
    '"2024-01-01T00:00:00Z"', "size", "has", "dyn", "int", "string", "exists", "all", "x", "// c\n",
]


def _check_anything(expression: str, context: ConditionContext) -> None:
    try:
        compiled = compile_condition(expression)
    except InvalidArgument as exc:
        assert exc.field == "condition.expression"
        assert "\n" not in exc.message
        return
    assert isinstance(compiled, CompiledCondition)
    assert compiled.expression == expression
    try:
        result = compiled.evaluate(context)
    except ConditionError as exc:
        assert "\n" not in str(exc)
        return
    assert type(result) is bool


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_random_text_only_raises_invalid_argument(expression: str) -> None:
    _check_anything(expression, ctx())


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(CEL_TOKENS), max_size=12).map(" ".join),
    st.dictionaries(st.sampled_from(["request.path", "request.host", "other"]), st.text(max_size=5)),
)
def test_token_soup_only_raises_documented_errors(expression: str, extra: dict[str, str]) -> None:
    _check_anything(expression, ctx(extra=extra))


@pytest.mark.parametrize("bad", [None, 42, b"true", ["true"]])
def test_non_string_expression_is_invalid_argument(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        compile_condition(bad)  # type: ignore[arg-type]


def test_invalid_argument_names_the_given_field() -> None:
    with pytest.raises(InvalidArgument) as err:
        compile_condition("resource.nam == 'x'", field="bindings[2].condition.expression")
    assert err.value.field == "bindings[2].condition.expression"
    assert err.value.message.startswith("bindings[2].condition.expression ")
    assert "resource.nam" in err.value.message
    assert err.value.to_json()["error"]["status"] == "INVALID_ARGUMENT"  # type: ignore[index]


@pytest.mark.parametrize("expression", ["", "   ", "\n\t"])
def test_empty_expression_is_invalid(expression: str) -> None:
    with pytest.raises(InvalidArgument, match="must not be empty"):
        compile_condition(expression)


@pytest.mark.parametrize("expression", ["1 + 1", "resource.name", "request.time", '["a"]', "null"])
def test_non_bool_expression_is_rejected_when_known_statically(expression: str) -> None:
    with pytest.raises(InvalidArgument, match="must evaluate to bool"):
        compile_condition(expression)


@pytest.mark.parametrize("expression", ["dyn(1)", 'dyn("true")', "dyn(null)"])
def test_non_bool_result_at_runtime_is_condition_error(expression: str) -> None:
    with pytest.raises(ConditionError, match="not bool"):
        run(expression)


# --------------------------------------------------------------------------- time zones

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Asia/Kolkata", "Australia/Lord_Howe",
         "America/St_Johns", "Pacific/Chatham"]


def _google_fields(moment: datetime.datetime) -> dict[str, int]:
    """Google's accessor semantics, computed with Python's zoneinfo."""
    return {
        "getFullYear": moment.year,
        "getMonth": moment.month - 1,  # 0-based
        "getDate": moment.day,  # 1-based
        "getDayOfMonth": moment.day - 1,  # 0-based
        "getDayOfWeek": moment.isoweekday() % 7,  # 0 = Sunday
        "getHours": moment.hour,
        "getMinutes": moment.minute,
        "getSeconds": moment.second,
    }


@settings(max_examples=150, deadline=None)
@given(
    st.datetimes(min_value=datetime.datetime(1990, 1, 1), max_value=datetime.datetime(2037, 12, 31),
                 timezones=st.just(UTC)),
    st.sampled_from(ZONES),
)
def test_accessors_match_zoneinfo(moment: datetime.datetime, zone: str) -> None:
    local = _google_fields(moment.astimezone(zoneinfo.ZoneInfo(zone)))
    utc = _google_fields(moment)
    checks = [f'request.time.{fn}("{zone}") == {value}' for fn, value in local.items()]
    checks += [f"request.time.{fn}() == {value}" for fn, value in utc.items()]
    context = ctx(request_time=moment)
    for check in checks:
        assert run(check, context), check


def test_accessors_without_zone_use_utc_even_for_non_utc_input() -> None:
    tokyo = NOW.astimezone(zoneinfo.ZoneInfo("Asia/Tokyo"))  # 23:30:45 local
    assert run("request.time.getHours() == 14", ctx(request_time=tokyo))
    assert run('request.time.getHours("Asia/Tokyo") == 23', ctx(request_time=tokyo))


def test_day_of_week_is_zero_for_sunday() -> None:
    sunday = datetime.datetime(2024, 3, 17, 12, tzinfo=UTC)
    assert run("request.time.getDayOfWeek() == 0", ctx(request_time=sunday))
    # Saturday 23:00 UTC is already Sunday in Berlin.
    saturday_night = datetime.datetime(2024, 3, 16, 23, 30, tzinfo=UTC)
    assert run('request.time.getDayOfWeek() == 6 && request.time.getDayOfWeek("Europe/Berlin") == 0',
               ctx(request_time=saturday_night))


def test_fixed_offset_zone() -> None:
    assert run('request.time.getHours("-03:00") == 11 && request.time.getMinutes("+05:45") == 15')


def test_unknown_time_zone_is_condition_error() -> None:
    with pytest.raises(ConditionError, match=r"(?i)time ?zone"):
        run('request.time.getHours("Not/AZone") == 1')


def test_naive_request_time_is_condition_error() -> None:
    naive = datetime.datetime(2024, 3, 15, 14, 30)
    with pytest.raises(ConditionError, match="timezone-aware"):
        run("request.time.getHours() == 14", ctx(request_time=naive))


def test_naive_request_time_ignored_when_not_used() -> None:
    naive = datetime.datetime(2024, 3, 15, 14, 30)
    assert run('resource.type == "storage.googleapis.com/Object"', ctx(request_time=naive))


# --------------------------------------------------------------------------- extract()


@pytest.mark.parametrize(
    ("name", "template", "expected"),
    [
        ("projects/_/buckets/b/objects/dir/file.txt", "/objects/{name}/", "dir"),
        ("projects/_/buckets/b/objects/file.txt", "/objects/{name}/", ""),
        ("projects/_/buckets/b/objects/dir/file.txt", "/objects/{name}", "dir/file.txt"),
        ("projects/_/buckets/b/objects/dir/file.txt", "projects/_/buckets/{bucket}/", "b"),
        ("projects/p/secrets/s1/versions/3", "/secrets/{name}/versions/", "s1"),
        ("projects/p/secrets/s1", "/secrets/{name}/versions/", ""),
        ("projects/p/models/m", "projects/{project}/", "p"),
        ("projects/p/models/m", "/datasets/{d}", ""),
        ("projects/p/zones/z/instances/vm-1", "instances/{name}", "vm-1"),
        ("", "projects/{p}/", ""),
        ("projects/p/locations/l/keyRings/k", "{all}", "projects/p/locations/l/keyRings/k"),
        ("ws-123-databricks-x", "{prefix}-databricks-", "ws-123"),
    ],
)
def test_extract(name: str, template: str, expected: str) -> None:
    assert extract_template(name, template) == expected
    literal = template.replace("\\", "\\\\").replace('"', '\\"')
    assert run(f'resource.name.extract("{literal}") == "{expected}"', ctx(resource_name=name))


@pytest.mark.parametrize("template", ["", "no-placeholder", "{a}/{b}", "{", "}{x}", "{1x}", "{a-b}"])
def test_extract_bad_template(template: str) -> None:
    with pytest.raises(ValueError, match="placeholder"):
        extract_template("projects/p", template)
    with pytest.raises(ConditionError, match="placeholder"):
        run(f'resource.name.extract("{template}") == ""')


def test_extract_works_on_other_strings() -> None:
    assert run('request.path.extract("/v{version}/") == "1"', ctx(extra={"request.path": "/api/v1/predict"}))


@given(st.text(), st.text(alphabet=st.characters(exclude_characters="{}")),
       st.text(alphabet=st.characters(exclude_characters="{}")))
def test_extract_property(name: str, prefix: str, suffix: str) -> None:
    result = extract_template(name, prefix + "{x}" + suffix)
    if result:
        assert prefix + result + suffix in name
    if prefix in name and not suffix:
        assert result == name[name.index(prefix) + len(prefix):]


# --------------------------------------------------------------------------- attributes


def test_missing_optional_attribute_is_condition_error() -> None:
    with pytest.raises(ConditionError, match=r"request\.path"):
        run('request.path == "/predict"')
    with pytest.raises(ConditionError, match=r"request\.host"):
        run('request.host.endsWith(".example.com")', ctx(extra={"request.path": "/p"}))


def test_present_optional_attributes() -> None:
    context = ctx(extra={"request.path": "/predict", "request.host": "h.example.com", "unrelated": "x"})
    assert run('request.path == "/predict" && request.host.endsWith(".example.com")', context)


def test_missing_attribute_follows_cel_short_circuit() -> None:
    assert run('true || request.path == "/x"')
    assert run('request.path == "/x" || true')
    assert run('false && request.path == "/x"') is False
    with pytest.raises(ConditionError):
        run('false || request.path == "/x"')


def test_empty_resource_attributes_are_present_strings() -> None:
    context = ConditionContext(request_time=NOW)
    assert run('resource.name == "" && resource.type == "" && resource.service == ""', context)


@pytest.mark.parametrize(
    "expression",
    ["request.url == 'x'", "resource.labels.env == 'prod'", "api.getAttribute('x', []) == 1",
     "resource.matchTag('123/env', 'prod')", "request.auth.claims.email == 'a'"],
)
def test_unsupported_attributes_and_functions_are_rejected_at_compile_time(expression: str) -> None:
    with pytest.raises(InvalidArgument):
        compile_condition(expression)


# --------------------------------------------------------------------------- compiled object


def test_same_expression_gives_same_object() -> None:
    expression = 'resource.name.startsWith("projects/p/") && request.time < timestamp("2030-01-01T00:00:00Z")'
    first = compile_condition(expression)
    assert compile_condition(expression) is first
    assert compile_condition(expression, field="other.field") is first
    assert compile_condition(expression + " ") is not first


def test_compiled_condition_is_immutable() -> None:
    compiled = compile_condition("true")
    with pytest.raises(AttributeError):
        compiled.expression = "false"
    with pytest.raises(AttributeError):
        compiled.logic_operators = 0
    assert compiled.expression == "true"
    assert repr(compiled) == "CompiledCondition('true')"


def test_evaluate_many_contexts() -> None:
    compiled = compile_condition('request.time.getHours("Europe/Berlin") >= 9 && '
                                 'request.time.getHours("Europe/Berlin") < 17')
    hours = [datetime.datetime(2024, 7, 1, h, tzinfo=UTC) for h in range(24)]
    granted = [moment.hour for moment in hours if compiled.evaluate(ctx(request_time=moment))]
    assert granted == list(range(7, 15))  # CEST = UTC+2


@pytest.mark.parametrize(
    ("expression", "count"),
    [
        ("true", 0),
        ("true && false || true", 2),
        ('resource.name == "a && b || c" && true', 1),
        ('r"&&" == "||" || true', 1),
        ('"""&&\n||""" == "" && true // && || in a comment\n', 1),
        (" && ".join(["true"] * 13), 12),
        (" || ".join(["true"] * 14), 13),
    ],
)
def test_logic_operator_count(expression: str, count: int) -> None:
    compiled = compile_condition(expression)
    assert compiled.logic_operators == count


def test_more_than_google_limit_still_compiles() -> None:
    expression = " || ".join(f'resource.name == "n{i}"' for i in range(MAX_LOGIC_OPERATORS + 2))
    compiled = compile_condition(expression)
    assert compiled.logic_operators == MAX_LOGIC_OPERATORS + 1 > MAX_LOGIC_OPERATORS
    assert compiled.evaluate(ctx(resource_name="n13")) is True
