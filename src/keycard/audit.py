"""Reading the audit log: Cloud Logging's filter language (the subset users type most).

A filter is terms joined by ``AND`` (or spaces); each term is ``FIELD OP VALUE`` with OP one of
``=``, ``!=``, ``:`` (has / substring), ``>=``, ``<=``, ``>``, ``<``; FIELD is a dotted path into
the LogEntry (``protoPayload.methodName``, ``protoPayload.authenticationInfo.principalEmail``,
``logName``, ``severity``, ``timestamp``, ``resource.type``). ``NOT term`` negates a term. Values may
be quoted. Severity compares by rank (DEBUG < INFO < NOTICE < WARNING < ERROR …).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from keycard.errors import InvalidArgument

__all__ = ["compile_filter", "matches"]

_SEVERITY = ["DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY"]
_TERM = re.compile(r"^(?P<field>[A-Za-z_@][\w.@/-]*)\s*(?P<op>!=|>=|<=|=|:|>|<)\s*(?P<value>.*)$")

Predicate = Callable[[Mapping[str, Any]], bool]


def _lookup(entry: Mapping[str, Any], path: str) -> list[Any]:
    values: list[Any] = [entry]
    for part in path.split("."):
        nxt: list[Any] = []
        for v in values:
            if isinstance(v, Mapping) and part in v:
                nxt.append(v[part])
            elif isinstance(v, list):
                nxt.extend(x[part] for x in v if isinstance(x, Mapping) and part in x)
        values = nxt
    flat: list[Any] = []
    for v in values:
        flat.extend(v if isinstance(v, list) else [v])
    return flat


def _compare(actual: Any, op: str, value: str, field: str) -> bool:
    if field == "severity" and isinstance(actual, str) and value.upper() in _SEVERITY:
        a, b = _SEVERITY.index(actual.upper()) if actual.upper() in _SEVERITY else 0, _SEVERITY.index(value.upper())
        return {"=": a == b, "!=": a != b, ">=": a >= b, "<=": a <= b, ">": a > b, "<": a < b, ":": a == b}[op]
    text = str(actual).lower() if isinstance(actual, bool) else str(actual)
    if op == ":":
        return value.lower() in text.lower()
    if op == "=":
        return text == value
    if op == "!=":
        return text != value
    return {">=": text >= value, "<=": text <= value, ">": text > value, "<": text < value}[op]


def compile_filter(expression: str) -> Predicate:
    expression = expression.strip()
    if not expression:
        return lambda e: True
    try:
        tokens = shlex.split(expression, posix=True)
    except ValueError as e:
        raise InvalidArgument(f"Invalid filter: {e}.", field="filter") from None
    # rejoin FIELD OP VALUE that shlex split on spaces around the operator
    joined: list[str] = []
    for t in tokens:
        if joined and (t in ("=", "!=", ":", ">=", "<=", ">", "<") or joined[-1].endswith(
                ("=", ":", ">", "<"))) and joined[-1] not in ("AND", "NOT"):
            joined[-1] += t
        else:
            joined.append(t)
    preds: list[Predicate] = []
    negate = False
    for t in joined:
        if t == "AND":
            continue
        if t == "NOT":
            negate = True
            continue
        m = _TERM.match(t)
        if m is None:
            raise InvalidArgument(f"Invalid filter term {t!r}: use FIELD=VALUE, FIELD:VALUE, FIELD>=VALUE …, e.g. "
                                  'protoPayload.methodName="SetIamPolicy".', field="filter")
        field, op, value = m.group("field"), m.group("op"), m.group("value").strip("\"'")

        def pred(e: Mapping[str, Any], field: str = field, op: str = op, value: str = value, neg: bool = negate
                 ) -> bool:
            hit = any(_compare(v, op, value, field) for v in _lookup(e, field))
            return not hit if neg else hit
        preds.append(pred)
        negate = False
    return lambda e: all(p(e) for p in preds)


def matches(entries: Iterable[Mapping[str, Any]], expression: str) -> list[Mapping[str, Any]]:
    pred = compile_filter(expression)
    return [e for e in entries if pred(e)]
