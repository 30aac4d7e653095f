"""HTTP: the ASGI app, Google-style routing, one module of routes per Google API."""
