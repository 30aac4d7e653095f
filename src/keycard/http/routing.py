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

    def __post_init__(self) -> None:
        parts = []
        pos = 0
        for m in re.finditer(r"\{([a-zA-Z_]+)(=\*\*)?\}", self.template):
            parts.append(re.escape(self.template[pos:m.start()]))
            parts.append(f"(?P<{m.group(1)}>.+)" if m.group(2) else f"(?P<{m.group(1)}>[^/:]+)")
            pos = m.end()
        parts.append(re.escape(self.template[pos:]))
        object.__setattr__(self, "regex", re.compile("^" + "".join(parts) + "$"))
        if self.read_log is None:
            verb = self.operation_id.rsplit(".", 1)[-1]
            is_read = self.method == "GET" or verb in ("getIamPolicy", "testIamPermissions", "search", "lookup")
            object.__setattr__(self, "read_log", "ADMIN_READ" if is_read else "")


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, route: Route) -> None:
        self.routes.append(route)

    def match(self, method: str, raw_path: str) -> tuple[Route | None, dict[str, str], bool]:
        """(route, decoded params, path_matched_other_method)."""
        path_hit = False
        for r in self.routes:
            m = r.regex.match(raw_path)
            if m is None:
                continue
            if r.method != method:
                path_hit = True
                continue
            return r, {k: unquote(v) for k, v in m.groupdict().items()}, False
        return None, {}, path_hit
