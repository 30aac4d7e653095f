"""Policy Simulator v1 routes: replays of recorded accesses under a proposed allow policy.

``/v1/{projects|folders|organizations}/{id}/locations/{location}/replays`` (create),
``…/replays/{replay}`` (get), ``…/replays/{replay}/results`` (list), ``…/replays/{replay}/operations[/{op}]``.
See keycard.services.simulator.
"""

from __future__ import annotations

from typing import Any

from keycard.http.app import App, RequestContext
from keycard.http.routing import Route, Router
from keycard.services import simulator as sim
from keycard.services.recommender import resolve_node

_P = "/v1/{kind}/{ident}/locations/{location}/replays"


def register(router: Router) -> None:
    def create(app: App, ctx: RequestContext, kind: str, ident: str, location: str) -> Any:
        node = resolve_node(app.services, kind, ident)
        return sim.create_replay(app.services, ctx.caller, node, location, ctx.body)

    def get(app: App, ctx: RequestContext, kind: str, ident: str, location: str, replay: str) -> Any:
        return sim.get_replay(app.services, ctx.caller, resolve_node(app.services, kind, ident, "name"), location,
                              replay)

    def results(app: App, ctx: RequestContext, kind: str, ident: str, location: str, replay: str) -> Any:
        return sim.list_results(app.services, ctx.caller, resolve_node(app.services, kind, ident, "parent"),
                                location, replay, ctx.query)

    def op_get(app: App, ctx: RequestContext, kind: str, ident: str, location: str, replay: str, op: str) -> Any:
        return sim.get_operation(app.services, ctx.caller, resolve_node(app.services, kind, ident, "name"),
                                 location, replay, op)

    def op_list(app: App, ctx: RequestContext, kind: str, ident: str, location: str, replay: str) -> Any:
        return sim.list_operations(app.services, ctx.caller, resolve_node(app.services, kind, ident, "name"),
                                   location, replay)

    router.add(Route("POST", _P, create, "policysimulator.replays.create", "policysimulator.replays.create",
                     body=True, summary="Replay the last 90 days of recorded accesses under a proposed allow "
                                        "policy (also needs getIamPolicy on the overlay's resource)."))
    router.add(Route("GET", _P + "/{replay}", get, "policysimulator.replays.get", "policysimulator.replays.get",
                     summary="A replay: its state and results summary."))
    router.add(Route("GET", _P + "/{replay}/results", results, "policysimulator.replays.results.list",
                     "policysimulator.replayResults.list", query=("pageSize", "pageToken"),
                     summary="The accesses whose state the proposed policy changes."))
    router.add(Route("GET", _P + "/{replay}/operations/{op}", op_get, "policysimulator.replays.operations.get",
                     "policysimulator.replays.get", summary="The replay's long-running operation."))
    router.add(Route("GET", _P + "/{replay}/operations", op_list, "policysimulator.replays.operations.list",
                     "policysimulator.replays.get", query=("filter", "pageSize", "pageToken"),
                     summary="The replay's operations (one)."))
