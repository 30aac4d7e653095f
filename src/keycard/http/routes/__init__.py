"""Every API's routes, registered on one router."""

from __future__ import annotations

from typing import Any

from keycard.http.routing import Route, Router


def register(router: Router) -> None:
    from keycard.http.routes import (
        cloudidentity,
        iam_roles,
        iam_v2,
        iamcredentials,
        oauth,
        orgpolicy,
        resourcemanager,
        service_accounts,
        troubleshooter,
    )

    for module in (resourcemanager, iam_roles, iam_v2, cloudidentity, orgpolicy, troubleshooter, service_accounts,
                   oauth):
        module.register(router)
    iamcredentials.register(router)

    from keycard.http.routes import attachments
    attachments.register(router)

    from keycard.http.routes import workload_identity
    workload_identity.register(router)

    from keycard.http.routes import identity_providers
    identity_providers.register(router)

    from keycard.http.routes import storage
    storage.register(router)

    from keycard.http.routes import ml
    ml.register(router)

    from keycard.http.routes import iap
    iap.register(router)

    from keycard.http.routes import recommender, simulator
    recommender.register(router)
    simulator.register(router)

    from keycard.http.routes import iam_bindings
    iam_bindings.register(router)

    from keycard.http.routes import logging as logging_routes
    logging_routes.register(router)

    from keycard.http.routes import cloudasset
    cloudasset.register(router)

    def jwks(app: Any, ctx: Any) -> Any:
        return app.keys().jwks()

    router.add(Route("GET", "/.well-known/jwks.json", jwks, "keycard.jwks", public=True,
                     summary="The server's token-signing public keys (JWKS)."))
