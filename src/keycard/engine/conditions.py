"""IAM Conditions: Google's CEL dialect for conditional role bindings.

Compile once, evaluate many::

    cond = compile_condition('request.time < timestamp("2030-01-01T00:00:00Z")')
    cond.evaluate(ConditionContext(request_time=now, resource_name="projects/p/models/m"))

The CEL runtime is Google's own C++ implementation (``cel-expr-python``), with
the attributes Google exposes to IAM Conditions declared as typed variables, so
unknown attributes, unknown functions, type errors and non-bool expressions are
rejected at compile time (``keycard.errors.InvalidArgument``). Google's
``extract()`` string extension is added as a member function on ``string``.

Evaluation follows CEL semantics, which Google inherits: a runtime error
(missing attribute, bad time zone, bad regular expression, bad template, ...)
makes the whole expression an error unless ``&&``/``||`` can decide without the
failing side. An expression that ends in an error raises ``ConditionError``;
callers treat that as "grants nothing" in allow policies.

See docs/conditions.md for the supported attributes, functions and the library
comparison behind the choice of runtime.
"""

from __future__ import annotations

import datetime
import functools
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final, NamedTuple

from cel_expr_python import cel  # type: ignore[import-untyped]

from keycard.errors import InvalidArgument

__all__ = [
    "ATTRIBUTES",
    "EXTRA_ATTRIBUTES",
    "MAX_LOGIC_OPERATORS",
    "CompiledCondition",
    "ConditionContext",
    "ConditionError",
    "compile_condition",
    "extract_template",
]

#: Google's documented limit of logical operators (``&&``, ``||``) per condition
#: expression. Not enforced here; ``CompiledCondition.logic_operators`` is
#: exposed so the policy layer can reject bindings that exceed it.
MAX_LOGIC_OPERATORS: Final = 12

#: Attributes always present in a ``ConditionContext`` (CEL name -> CEL type name).
ATTRIBUTES: Final[Mapping[str, str]] = {
    "request.time": "timestamp",
    "resource.name": "string",
    "resource.type": "string",
    "resource.service": "string",
}

#: Optional string attributes, read from ``ConditionContext.extra``; absent ones
#: make any evaluation that reaches them an error.
EXTRA_ATTRIBUTES: Final[frozenset[str]] = frozenset({"request.path", "request.host"})

_CACHE_SIZE: Final = 4096


_NO_EXTRA: Mapping[str, str] = MappingProxyType({})


class ConditionContext(NamedTuple):
    """The request attributes a condition is evaluated against (a NamedTuple: built per check, cheaply)."""

    request_time: datetime.datetime  # tz-aware
    resource_name: str = ""  # relative name, e.g. "projects/p/models/m"
    resource_type: str = ""  # e.g. "ml.googleapis.com/Model"
    resource_service: str = ""  # e.g. "ml.googleapis.com"
    extra: Mapping[str, str] = _NO_EXTRA  # e.g. {"request.path": "/predict"}


class ConditionError(Exception):
    """Evaluating a condition failed; the message says why, on one line."""


# --------------------------------------------------------------------------- extract()

_PLACEHOLDER: Final = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")


def extract_template(value: str, template: str) -> str:
    """Google's ``string.extract(template)``.

    ``template`` holds exactly one ``{name}`` placeholder. The text before it is
    searched for from the start of ``value``; the result is what follows, up to
    the first occurrence of the text after the placeholder (or to the end when
    nothing follows it). No match gives ``""``. A template without exactly one
    placeholder raises ``ValueError``.
    """
    match = _PLACEHOLDER.search(template)
    if match is None or template.count("{") != 1 or template.count("}") != 1:
        raise ValueError(f"extract() template must contain exactly one {{name}} placeholder: {template!r}")
    prefix, suffix = template[: match.start()], template[match.end() :]
    start = value.find(prefix)
    if start < 0:
        return ""
    start += len(prefix)
    if not suffix:
        return value[start:]
    end = value.find(suffix, start)
    if end < 0:
        return ""
    return value[start:end]


# --------------------------------------------------------------------------- lexical scan

# String and bytes literals (plain, triple-quoted, raw) and `//` comments, per the CEL lexer.
_RAW_LITERAL: Final = (
    r"""(?<!\w)(?:[rR][bB]?|[bB][rR])"""
    r"""(?:"{3}[\s\S]*?"{3}|'{3}[\s\S]*?'{3}|"[^"\n\r]*"|'[^'\n\r]*')"""
)
_LITERAL: Final = (
    r"""(?:(?<!\w)[bB])?(?:"{3}(?:\\[\s\S]|[^\\])*?"{3}|'{3}(?:\\[\s\S]|[^\\])*?'{3}"""
    r"""|"(?:\\.|[^\\"\n\r])*"|'(?:\\.|[^\\'\n\r])*')"""
)
_LITERAL_OR_COMMENT: Final = re.compile(f"{_RAW_LITERAL}|{_LITERAL}|//[^\n]*")
_WORD: Final = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")


def _strip_literals(expression: str) -> str:
    """The expression with string/bytes literals and comments replaced by a space.

    Only used on expressions the CEL parser has accepted.
    """
    return _LITERAL_OR_COMMENT.sub(" ", expression)


def _count_logic_operators(code: str) -> int:
    return code.count("&&") + code.count("||")


def _referenced(code: str, names: Iterable[str]) -> tuple[str, ...]:
    """Attributes whose last segment appears as a word in ``code`` (a safe superset)."""
    words = set(_WORD.findall(code))
    return tuple(sorted(name for name in names if name.rsplit(".", 1)[1] in words))


# --------------------------------------------------------------------------- CEL environment

_T: Any = cel.Type
_ENV: Any = cel.NewEnv(
    variables={
        "request.time": _T.TIMESTAMP,
        "resource.name": _T.STRING,
        "resource.type": _T.STRING,
        "resource.service": _T.STRING,
        **{name: _T.STRING for name in sorted(EXTRA_ATTRIBUTES)},
    },
    functions=[
        cel.FunctionDecl(
            "extract",
            [
                cel.Overload(
                    "string_extract_string",
                    _T.STRING,
                    [_T.STRING, _T.STRING],
                    is_member=True,
                    impl=extract_template,
                )
            ],
        )
    ],
)
_BOOL: Any = _T.BOOL
_DYN: Any = _T.DYN
_ERROR: Any = _T.ERROR


_MISSING: Final = re.compile(r'No value with name "([^"]+)" found')
_STATUS_PREFIXES: Final = (
    "INVALID_ARGUMENT:", "OUT_OF_RANGE:", "CANCELLED:", "UNKNOWN:", "ERROR:", "<input>:",
)
_STATUS_SUFFIX: Final = re.compile(r"\s*\[[A-Z_]+\]$")


def _one_line(message: str) -> str:
    """First meaningful line of a CEL status message, without the status prefixes."""
    missing = _MISSING.search(message)
    if missing:
        return f"attribute {missing.group(1)} is not available in this request"
    line = next((part.strip() for part in message.splitlines() if part.strip()), "")
    for prefix in _STATUS_PREFIXES:
        line = line.removeprefix(prefix).strip()
    line = _STATUS_SUFFIX.sub("", line.replace(" (in container '')", ""))
    return line or "invalid expression"


_FAST_ATOM = re.compile(
    r'\s*(?:request\.time\s*(?P<top><=|>=|==|!=|<|>)\s*timestamp\(\s*"(?P<ts>[0-9T:.+\-Zz]{10,40})"\s*\)'
    r'|resource\.(?P<attr>name|type|service)\s*(?P<sop>==|!=)\s*"(?P<lit>[^"\\]*)"'
    r'|resource\.name\.(?P<fn>startsWith|endsWith)\(\s*"(?P<arg>[^"\\]*)"\s*\))\s*')
_FAST_OPS: Final = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
                    "==": operator.eq, "!=": operator.ne}
FastPath = Callable[["ConditionContext"], bool]


def _fast_atom(text: str) -> FastPath | None:
    m = _FAST_ATOM.fullmatch(text)
    if m is None:
        return None
    if m.group("top"):
        try:
            when = datetime.datetime.fromisoformat(m.group("ts").replace("z", "Z").replace("Z", "+00:00"))
        except ValueError:
            return None
        if when.tzinfo is None or not 1 <= when.year <= 9999:
            return None
        op = _FAST_OPS[m.group("top")]

        def time_cmp(ctx: ConditionContext) -> bool:
            now = ctx.request_time
            if now.tzinfo is None:
                raise ConditionError("request.time must be a timezone-aware datetime")
            return bool(op(now, when))
        return time_cmp
    if m.group("attr"):
        attr, lit, equal = "resource_" + m.group("attr"), m.group("lit"), m.group("sop") == "=="
        return lambda ctx: (getattr(ctx, attr) == lit) is equal
    arg = m.group("arg")
    if m.group("fn") == "startsWith":
        return lambda ctx: ctx.resource_name.startswith(arg)
    return lambda ctx: ctx.resource_name.endswith(arg)


def _fast_path(expression: str, code: str) -> FastPath | None:
    """Plain-Python evaluation of the shapes most conditions take (time windows, name prefixes):
    one atom, or atoms joined by only ``&&`` or only ``||``. Anything else runs in CEL. The result
    is the same as CEL's for these shapes: none of their atoms can error."""
    if "&&" in code and "||" in code:
        return None
    joiner = "&&" if "&&" in code else "||"
    if expression.count(joiner) != code.count(joiner) or "//" in code or "(" in code.replace("timestamp(", "") \
            .replace("startsWith(", "").replace("endsWith(", ""):
        return None                      # a joiner inside a string literal, a comment or parentheses
    parts = [_fast_atom(p) for p in expression.split(joiner)]
    if not parts or any(p is None for p in parts):
        return None
    atoms: list[FastPath] = [p for p in parts if p is not None]
    if len(atoms) == 1:
        return atoms[0]
    if joiner == "&&":
        return lambda ctx: all(a(ctx) for a in atoms)
    return lambda ctx: any(a(ctx) for a in atoms)


class _CompileFailure(Exception):
    """Internal: compile failed; ``str(self)`` is the reason (no field name yet)."""


class CompiledCondition:
    """A checked, ready-to-run condition expression. Immutable; safe to share."""

    __slots__ = ("_extras", "_fast", "_program", "_uses_name", "_uses_service", "_uses_time", "_uses_type",
                 "expression", "logic_operators")

    expression: str
    logic_operators: int
    _fast: FastPath | None
    _program: Any
    _uses_time: bool
    _uses_name: bool
    _uses_type: bool
    _uses_service: bool
    _extras: tuple[str, ...]

    def __init__(self, expression: str, program: Any, code: str) -> None:
        used = _referenced(code, ATTRIBUTES)
        sets = object.__setattr__
        sets(self, "expression", expression)
        sets(self, "logic_operators", _count_logic_operators(code))
        sets(self, "_program", program)
        sets(self, "_uses_time", "request.time" in used)
        sets(self, "_uses_name", "resource.name" in used)
        sets(self, "_uses_type", "resource.type" in used)
        sets(self, "_uses_service", "resource.service" in used)
        sets(self, "_extras", _referenced(code, EXTRA_ATTRIBUTES))
        sets(self, "_fast", _fast_path(expression, code))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"CompiledCondition is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"CompiledCondition is immutable (cannot delete {name!r})")

    def __repr__(self) -> str:
        return f"CompiledCondition({self.expression!r})"

    def evaluate(self, ctx: ConditionContext) -> bool:
        """True or False; raises ``ConditionError`` if the expression ends in an error."""
        if self._fast is not None:
            return self._fast(ctx)
        try:
            data: dict[str, object] = {}
            if self._uses_time:
                when = ctx.request_time
                if getattr(when, "tzinfo", None) is None:
                    raise ConditionError("request.time must be a timezone-aware datetime")
                data["request.time"] = when
            if self._uses_name:
                data["resource.name"] = ctx.resource_name
            if self._uses_type:
                data["resource.type"] = ctx.resource_type
            if self._uses_service:
                data["resource.service"] = ctx.resource_service
            for key in self._extras:
                value = ctx.extra.get(key)
                if value is not None:
                    data[key] = value
            result = self._program.eval(data=data)
            value = result.value()
            if value is True or value is False:
                return value
            kind = result.type()
            if kind == _ERROR:
                reason = _one_line(str(value))
            else:
                reason = f"expression returned {str(kind.name()).lower()}, not bool"
        except ConditionError:
            raise
        except Exception as exc:  # the runtime's own errors (conversion, bad context, ...)
            raise ConditionError(f"condition evaluation failed: {_one_line(str(exc))}") from exc
        raise ConditionError(f"condition evaluation failed: {reason}")


def _compile(expression: str) -> CompiledCondition:
    """Uncached compile; raises ``_CompileFailure`` only."""
    if not expression.strip():
        raise _CompileFailure("must not be empty")
    try:
        expression.encode("utf-8")
    except UnicodeEncodeError:
        raise _CompileFailure("must be valid Unicode text (no lone surrogates)") from None
    try:
        program = _ENV.compile(expression)
        return_type = program.return_type()
        is_bool = return_type in (_BOOL, _DYN)
        type_name = "" if is_bool else str(return_type.name()).lower()
    except Exception as exc:
        raise _CompileFailure(f"is not a valid condition: {_one_line(str(exc))}") from None
    if not is_bool:
        raise _CompileFailure(f"must evaluate to bool, not {type_name}")
    return CompiledCondition(expression, program, _strip_literals(expression))


_compile_cached = functools.lru_cache(maxsize=_CACHE_SIZE)(_compile)


def compile_condition(expression: str, *, field: str = "condition.expression") -> CompiledCondition:
    """Parse and type-check ``expression``; the same string gives the same object (bounded cache).

    Raises ``InvalidArgument`` (naming ``field``) for anything that is not a
    well-typed bool CEL expression over the supported attributes and functions.
    """
    if not isinstance(expression, str):
        raise InvalidArgument(f"{field} must be a string", field=field)
    try:
        return _compile_cached(expression)
    except _CompileFailure as failure:
        raise InvalidArgument(f"{field} {failure}", field=field) from None
    except Exception as exc:  # belt and braces: nothing else may escape
        raise InvalidArgument(f"{field} is not a valid condition: {_one_line(str(exc))}",
                              field=field) from None
