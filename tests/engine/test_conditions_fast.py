"""The plain-Python fast path for common condition shapes answers exactly as CEL does."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from keycard.engine import conditions
from keycard.engine.conditions import ConditionContext

TIMES = ["2026-01-01T00:00:00Z", "2026-06-01T12:00:00.5Z", "2026-06-01T12:00:00+02:00", "2030-12-31T23:59:59Z"]
STRINGS = ["projects/_/buckets/b", "projects/_/buckets/b1", "/objects/x", "", "projects/p/models/m",
           "ml.googleapis.com", "storage.googleapis.com/Bucket", "x\u00e9"]


@st.composite
def atoms(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 2))
    if kind == 0:
        op = draw(st.sampled_from(["<", "<=", ">", ">=", "==", "!="]))
        return f'request.time {op} timestamp("{draw(st.sampled_from(TIMES))}")'
    if kind == 1:
        attr = draw(st.sampled_from(["name", "type", "service"]))
        return f'resource.{attr} {draw(st.sampled_from(["==", "!="]))} "{draw(st.sampled_from(STRINGS))}"'
    fn = draw(st.sampled_from(["startsWith", "endsWith"]))
    return f'resource.name.{fn}("{draw(st.sampled_from(STRINGS))}")'


@st.composite
def expressions(draw: st.DrawFn) -> str:
    parts = draw(st.lists(atoms(), min_size=1, max_size=4))
    return f" {draw(st.sampled_from(['&&', '||']))} ".join(parts)


def _cel_only(expression: str) -> conditions.CompiledCondition:
    c = conditions._compile(expression)
    object.__setattr__(c, "_fast", None)
    return c


@settings(max_examples=400, deadline=None)
@given(expressions(), st.datetimes(min_value=dt.datetime(2025, 1, 1), max_value=dt.datetime(2031, 1, 1),
                                   timezones=st.just(dt.UTC)),
       st.sampled_from(STRINGS), st.sampled_from(STRINGS), st.sampled_from(STRINGS))
def test_fast_path_agrees_with_cel(expr: str, when: dt.datetime, name: str, rtype: str, service: str) -> None:
    fast = conditions.compile_condition(expr)
    assert fast._fast is not None, expr
    ctx = ConditionContext(request_time=when, resource_name=name, resource_type=rtype, resource_service=service)
    assert fast.evaluate(ctx) == _cel_only(expr).evaluate(ctx), (expr, when, name)


def test_shapes_outside_the_fast_path_still_run_in_cel() -> None:
    for expr in ['(request.time < timestamp("2030-01-01T00:00:00Z"))',
                 'request.time < timestamp("2030-01-01T00:00:00Z") && resource.name == "a" || resource.name == "b"',
                 'resource.name.startsWith("a") && request.time.getHours("UTC") > 3',
                 'resource.name == "a\\"b"']:
        assert conditions.compile_condition(expr)._fast is None, expr
