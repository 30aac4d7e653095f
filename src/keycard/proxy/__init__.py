"""keycard proxy: Identity-Aware Proxy for any HTTP service, deciding with keycard's IAM (docs/proxy.md)."""

from keycard.proxy.app import ProxyApp
from keycard.proxy.decisions import Credential, Decision, Decisions

__all__ = ["Credential", "Decision", "Decisions", "ProxyApp"]
