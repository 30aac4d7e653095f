"""keycard: Google Cloud IAM semantics, runnable anywhere.

    from keycard import Engine
    engine = Engine.load("assets.json", groups={...}, roles=[...], deny_policies=[...])
    decision = engine.check("user:alice@example.com", "ml.models.get", "//ml.googleapis.com/projects/p/models/m")
    decision.allowed; print(decision)
"""

from keycard.engine.engine import Access, Engine
from keycard.engine.explain import Decision, Explanation
from keycard.errors import InvalidArgument, KeycardError

__all__ = ["Access", "Decision", "Engine", "Explanation", "InvalidArgument", "KeycardError"]
__version__ = "0.1.0"
