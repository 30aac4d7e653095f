"""Reading the audit log: Cloud Logging's query language (the one filter implementation of keycard).

``keycard logs read``, Logging v2 ``entries.list`` and every reader of the audit log (recommender,
simulator, lint) compile filters here. Supported, as in Google's Logging query language:

* comparisons ``FIELD OP VALUE`` with OP one of ``=``, ``!=``, ``>``, ``<``, ``>=``, ``<=``, ``:`` (has:
  case-insensitive substring; ``FIELD:*`` is "present"), ``=~`` / ``!~`` (RE2-style regular expression
  search, Python ``re``); FIELD a dotted path into the LogEntry (``logName``, ``severity``,
  ``timestamp``, ``insertId``, ``resource.type``, ``resource.labels.project_id``, ``labels."a/b"``,
  ``protoPayload.methodName``, ``protoPayload.authenticationInfo.principalEmail``,
  ``protoPayload.authorizationInfo.permission`` — a path through a list matches any element);
* a value list ``FIELD=(A OR B)``;
* ``AND``, ``OR``, ``NOT`` / ``-``, parentheses; juxtaposed terms are ANDed; ``OR`` binds tighter than
  ``AND`` as in Google's language (``a b OR c`` is ``a AND (b OR c)``);
* a bare value (``"setIamPolicy"``) searches every field's text (case-insensitive);
* ``severity`` compares by rank (DEFAULT < DEBUG < INFO < NOTICE < WARNING < ERROR < CRITICAL < ALERT
  < EMERGENCY); ``timestamp`` compares as time (RFC 3339 values, any offset).

A field that is absent makes a comparison false (so ``NOT FIELD=V`` is true). Bad filters raise
InvalidArgument naming ``filter``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from keycard.errors import InvalidArgument

__all__ = ["SEVERITIES", "compile_filter", "log_entry", "matches"]

SEVERITIES = ["DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY"]
_OPS = ("=~", "!~", ">=", "<=", "!=", "=", ":", ">", "<")
_MAX_FILTER = 20_000

Predicate = Callable[[Mapping[str, Any]], bool]


def _bad(message: str) -> InvalidArgument:
    return InvalidArgument(f"Invalid filter: {message}. Example: protoPayload.methodName=\"SetIamPolicy\" AND "
                           "timestamp>=\"2026-01-01T00:00:00Z\".", field="filter")


# ============================================================================================ lexer
class _Lexer:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def skip(self) -> None:
        while self.i < len(self.s) and self.s[self.i].isspace():
            self.i += 1

    def peek(self) -> str:
        self.skip()
        return self.s[self.i] if self.i < len(self.s) else ""

    def at_end(self) -> bool:
        return self.peek() == ""

    def string(self) -> str:
        """A double-quoted string (backslash escapes) at the cursor."""
        assert self.s[self.i] == '"'
        j = self.i + 1
        out: list[str] = []
        while j < len(self.s):
            c = self.s[j]
            if c == "\\" and j + 1 < len(self.s):
                out.append(self.s[j + 1])
                j += 2
                continue
            if c == '"':
                self.i = j + 1
                return "".join(out)
            out.append(c)
            j += 1
        raise _bad(f"unterminated string at character {self.i + 1}")

    def word(self, stops: str) -> str:
        j = self.i
        while j < len(self.s) and not self.s[j].isspace() and self.s[j] not in stops:
            j += 1
        w = self.s[self.i:j]
        self.i = j
        return w

    def keyword(self, kw: str) -> bool:
        self.skip()
        end = self.i + len(kw)
        if self.s[self.i:end] == kw and (end == len(self.s) or self.s[end].isspace() or self.s[end] in "()"):
            self.i = end
            return True
        return False

    def op(self) -> str | None:
        self.skip()
        for o in _OPS:
            if self.s.startswith(o, self.i):
                self.i += len(o)
                return o
        return None


# =========================================================================================== values
def _lookup(entry: Mapping[str, Any], path: tuple[str, ...]) -> list[Any]:
    values: list[Any] = [entry]
    for part in path:
        nxt: list[Any] = []
        for v in values:
            if isinstance(v, Mapping):
                if part in v:
                    nxt.append(v[part])
            elif isinstance(v, list):
                nxt.extend(x[part] for x in v if isinstance(x, Mapping) and part in x)
        values = nxt
    flat: list[Any] = []
    for v in values:
        flat.extend(v if isinstance(v, list) else [v])
    return flat


def _time(value: str) -> dt.datetime | None:
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip())
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, Mapping | list):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _ordered(a: Any, b: Any, op: str) -> bool:
    if op == "=":
        return bool(a == b)
    if op == "!=":
        return bool(a != b)
    if op == ">=":
        return bool(a >= b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a < b)


def _comparison(path: tuple[str, ...], op: str, value: str) -> Predicate:
    field = ".".join(path)
    if op == ":" and value == "*":
        return lambda e: bool(_lookup(e, path))
    if op in ("=~", "!~"):
        try:
            rx = re.compile(value)
        except re.error as e:
            raise _bad(f"bad regular expression {value!r} for {field} ({e})") from None
        if op == "=~":
            return lambda e: any(rx.search(_text(v)) for v in _lookup(e, path))
        return lambda e: bool(_lookup(e, path)) and not any(rx.search(_text(v)) for v in _lookup(e, path))
    if path[-1] == "severity" and value.upper() in SEVERITIES:
        rank = SEVERITIES.index(value.upper())

        def sev(e: Mapping[str, Any]) -> bool:
            vals = _lookup(e, path)
            if not vals:
                return False
            r = [SEVERITIES.index(str(v).upper()) if str(v).upper() in SEVERITIES else 0 for v in vals]
            if op == "!=":
                return all(x != rank for x in r)
            return any(_ordered(x, rank, "=" if op == ":" else op) for x in r)
        return sev
    if path[-1] in ("timestamp", "receiveTimestamp") and op not in (":",):
        want = _time(value)
        if want is None:
            raise _bad(f"{field} needs an RFC 3339 time such as \"2026-01-01T00:00:00Z\", not {value!r}")

        def when(e: Mapping[str, Any]) -> bool:
            times = [t for t in (_time(str(v)) for v in _lookup(e, path)) if t is not None]
            if not times:
                return False
            if op == "!=":
                return all(t != want for t in times)
            return any(_ordered(t, want, op) for t in times)
        return when
    if op == ":":
        low = value.lower()
        return lambda e: any(low in _text(v).lower() for v in _lookup(e, path))
    if op == "!=":
        return lambda e: bool(_lookup(e, path)) and all(_text(v) != value for v in _lookup(e, path))
    if op == "=":
        return lambda e: any(_text(v) == value for v in _lookup(e, path))

    def cmp(e: Mapping[str, Any]) -> bool:
        for v in _lookup(e, path):
            if isinstance(v, int | float) and not isinstance(v, bool):
                try:
                    if _ordered(float(v), float(value), op):
                        return True
                except ValueError:
                    continue
            elif _ordered(_text(v), value, op):
                return True
        return False
    return cmp


# =========================================================================================== parser
class _Parser:
    """expression := conj ; conj := disj (AND? disj)* ; disj := unary (OR unary)* ;
    unary := (NOT | -) unary | '(' conj ')' | comparison | bare value"""

    def __init__(self, text: str) -> None:
        self.lx = _Lexer(text)

    def parse(self) -> Predicate:
        pred = self.conj()
        if not self.lx.at_end():
            raise _bad(f"unexpected {self.lx.s[self.lx.i:self.lx.i + 20]!r} at character {self.lx.i + 1}")
        return pred

    def conj(self) -> Predicate:
        parts = [self.disj()]
        while True:
            c = self.lx.peek()
            if c in ("", ")"):
                break
            self.lx.keyword("AND")
            parts.append(self.disj())
        if len(parts) == 1:
            return parts[0]
        return lambda e: all(p(e) for p in parts)

    def disj(self) -> Predicate:
        parts = [self.unary()]
        while self.lx.keyword("OR"):
            parts.append(self.unary())
        if len(parts) == 1:
            return parts[0]
        return lambda e: any(p(e) for p in parts)

    def unary(self) -> Predicate:
        lx = self.lx
        c = lx.peek()
        if c == "":
            raise _bad("the expression ends where a term was expected")
        if lx.keyword("NOT") or (c == "-" and not lx.s[lx.i + 1:lx.i + 2].isspace()
                                 and self._skip_dash()):
            inner = self.unary()
            return lambda e: not inner(e)
        if c == "(":
            lx.i += 1
            inner = self.conj()
            if lx.peek() != ")":
                raise _bad(f"missing ')' at character {lx.i + 1}")
            lx.i += 1
            return inner
        if c == ")":
            raise _bad(f"unexpected ')' at character {lx.i + 1}")
        if c == '"':
            return self._bare(lx.string())
        start = lx.i
        path = self._path()
        op = lx.op()
        if op is None:
            lx.i = start
            return self._bare(lx.word("()"))
        return self._value_for(path, op)

    def _skip_dash(self) -> bool:
        self.lx.i += 1
        return True

    def _path(self) -> tuple[str, ...]:
        lx = self.lx
        parts: list[str] = []
        lx.skip()
        while True:
            if lx.i < len(lx.s) and lx.s[lx.i] == '"':
                parts.append(lx.string())
            else:
                j = lx.i
                while j < len(lx.s) and (lx.s[j].isalnum() or lx.s[j] in "_@/-%$"):
                    j += 1
                parts.append(lx.s[lx.i:j])
                lx.i = j
            if lx.i < len(lx.s) and lx.s[lx.i] == ".":
                lx.i += 1
                continue
            return tuple(parts)

    def _value_for(self, path: tuple[str, ...], op: str) -> Predicate:
        lx = self.lx
        if not path or not all(path):
            raise _bad(f"a comparison needs a field name before {op!r} (character {lx.i})")
        c = lx.peek()
        if c == "(":                                   # FIELD=(A OR B …)
            lx.i += 1
            alts: list[Predicate] = []
            while True:
                alts.append(_comparison(path, op, self._value(op)))
                if lx.peek() == ")":
                    lx.i += 1
                    break
                if not lx.keyword("OR"):
                    raise _bad(f"expected OR or ')' in the value list of {'.'.join(path)}")
            return lambda e: any(a(e) for a in alts)
        return _comparison(path, op, self._value(op))

    def _value(self, op: str) -> str:
        lx = self.lx
        c = lx.peek()
        if c == '"':
            return lx.string()
        w = lx.word("()")
        if not w:
            raise _bad(f"a value is missing after {op!r} at character {lx.i + 1}")
        return w

    @staticmethod
    def _bare(value: str) -> Predicate:
        low = value.lower()
        if not low:
            return lambda e: True
        return lambda e: low in json.dumps(e, sort_keys=True).lower()


def compile_filter(expression: str) -> Predicate:
    """A predicate over LogEntry JSON for a Cloud Logging filter (empty: everything)."""
    if not isinstance(expression, str):
        raise _bad("expected a string")
    if len(expression) > _MAX_FILTER:
        raise _bad(f"longer than {_MAX_FILTER} characters")
    if not expression.strip():
        return lambda e: True
    return _Parser(expression).parse()


def matches(entries: Iterable[Mapping[str, Any]], expression: str) -> list[Mapping[str, Any]]:
    pred = compile_filter(expression)
    return [e for e in entries if pred(e)]


# ====================================================================================== presentation
def log_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A stored audit entry as Cloud Logging shows it: with its monitored ``resource`` (derived from the
    audited resource's name when the record has none: ``project``, ``folder``, ``organization``,
    ``gcs_bucket``, ``service_account``, else ``audited_resource``)."""
    out = dict(entry)
    if "resource" not in out:
        p = entry.get("protoPayload") or {}
        name = str(p.get("resourceName") or "")
        service = str(p.get("serviceName") or "")
        parts = name.split("/")
        res: dict[str, Any]
        if len(parts) >= 4 and parts[0] == "projects" and parts[2] == "buckets":
            res = {"type": "gcs_bucket", "labels": {"bucket_name": parts[3]}}
        elif len(parts) >= 4 and parts[0] == "projects" and parts[2] == "serviceAccounts":
            res = {"type": "service_account", "labels": {"project_id": parts[1], "email_id": parts[3]}}
        elif len(parts) >= 2 and parts[0] == "projects":
            res = {"type": "project", "labels": {"project_id": parts[1]}}
        elif len(parts) >= 2 and parts[0] == "folders":
            res = {"type": "folder", "labels": {"folder_id": parts[1]}}
        elif len(parts) >= 2 and parts[0] == "organizations":
            res = {"type": "organization", "labels": {"organization_id": parts[1]}}
        else:
            res = {"type": "audited_resource", "labels": {"service": service,
                                                          "method": str(p.get("methodName") or "")}}
        out["resource"] = res
    return out
