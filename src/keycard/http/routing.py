"""Google-style routes over the raw request path.

Google's clients encode paths differently (discovery leaves ``@`` raw and passes ``%2F``
through; GAPIC sends ``%40`` and ``%252F``), and ASGI servers decode ``%2F`` in ``path``. So
routes match ``raw_path`` segment by segment and decode each captured value once.
Templates: ``/v3/projects/{project}:getIamPolicy``; ``{name=**}`` captures several segments.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

__all__ = ["Route", "Router"]

Handler = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    template: str
    handler: Handler
    operation_id: str
    permission: str = ""            # the permission Google checks (documentation and the BOLA matrix)
    summary: str = ""
    body: bool = False
    query: tuple[str, ...] = ()
    public: bool = False            # no authentication (health, discovery of keys)
    read_log: str | None = None     # Data Access log type of a read: ADMIN_READ or DATA_READ (None: infer)
    inline: bool = False            # run on the event loop (in-memory work only; may return an awaitable)
    raw_body: bool = False          # pass the body as bytes (media uploads), up to MAX_UPLOAD
    regex: re.Pattern[str] = field(init=False, compare=False, repr=False)
    needle: str = field(init=False, compare=False, repr=False)   # longest literal piece: a cheap pre-test

    def __post_init__(self) -> None:
        parts = []
        pos = 0
        for m in re.finditer(r"\{([a-zA-Z_]+)(=\*\*)?\}", self.template):
            parts.append(re.escape(self.template[pos:m.start()]))
            parts.append(f"(?P<{m.group(1)}>.+)" if m.group(2) else f"(?P<{m.group(1)}>[^/:]+)")
            pos = m.end()
        parts.append(re.escape(self.template[pos:]))
        object.__setattr__(self, "regex", re.compile("^" + "".join(parts) + "$"))
        pieces = re.split(r"\{[a-zA-Z_]+(?:=\*\*)?\}", self.template)
        # the first piece is what Router.candidates already compared; a later one tells siblings apart
        object.__setattr__(self, "needle", max(pieces[1:] or pieces, key=len))
        if self.read_log is None:
            verb = self.operation_id.rsplit(".", 1)[-1]
            is_read = self.method == "GET" or verb in ("getIamPolicy", "testIamPermissions", "search", "lookup")
            object.__setattr__(self, "read_log", "ADMIN_READ" if is_read else "")


_HEAD_SEGMENTS = 2          # candidates are indexed by a path's first two segments (/v1/projects, /storage/v1)
_MAX_HEADS = 4096           # distinct heads remembered (client-chosen paths must not grow memory)


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []
        self._candidates: dict[str, list[Route]] = {}

    def add(self, route: Route) -> None:
        self.routes.append(route)
        self._candidates.clear()

    def candidates(self, raw_path: str) -> list[Route]:
        """The routes, in order, whose literal start is compatible with the path's first two segments: a
        superset of those whose template can match, so matching tries a few regexes instead of all."""
        head = "/".join(raw_path.split("/", _HEAD_SEGMENTS + 1)[:_HEAD_SEGMENTS + 1])
        found = self._candidates.get(head)
        if found is None:
            found = [r for r in self.routes if _compatible(r.template, head)]
            if len(self._candidates) < _MAX_HEADS:
                self._candidates[head] = found
        return found

    def match(self, method: str, raw_path: str) -> tuple[Route | None, dict[str, str], bool]:
        """(route, decoded params, path_matched_other_method)."""
        path_hit = False
        for r in self.candidates(raw_path):
            if r.needle not in raw_path:
                continue
            m = r.regex.match(raw_path)
            if m is None:
                continue
            if r.method != method:
                path_hit = True
                continue
            return r, {k: unquote(v) for k, v in m.groupdict().items()}, False
        return None, {}, path_hit


def _compatible(template: str, head: str) -> bool:
    """Can a path that starts with ``head`` match ``template``? Compares the template's literal start (up to
    its first variable) with the head, over the shorter of the two."""
    brace = template.find("{")
    literal = template if brace < 0 else template[:brace]
    n = min(len(literal), len(head))
    return literal[:n] == head[:n]
