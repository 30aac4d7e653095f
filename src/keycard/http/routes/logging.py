"""Cloud Logging v2 routes: ``POST /v2/entries:list`` over the audit log (keycard.services.logging_entries)."""

from __future__ import annotations

from typing import Any

from keycard.http.app import App, RequestContext
from keycard.http.routing import Route, Router
from keycard.services import logging_entries


def register(router: Router) -> None:
    def entries_list(app: App, ctx: RequestContext) -> dict[str, Any]:
        return logging_entries.list_entries(app.services, ctx.caller, ctx.body)

    router.add(Route("POST", "/v2/entries:list", entries_list, "logging.entries.list", "logging.logEntries.list",
                     body=True, read_log="DATA_READ",
                     summary="Audit log entries of projects, folders or the organization, filtered with Cloud "
                             "Logging's query language. Data Access logs also need "
                             "logging.privateLogEntries.list."))
