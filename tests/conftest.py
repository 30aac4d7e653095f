"""Test-wide set-up: Google's client libraries must never reach past loopback.

The environment of ../shared/design/API.md §6–§7 is set here, before any test module imports
google.auth (GCE_METADATA_HOST is read at import time): no metadata-server ping to
169.254.169.254, no gcloud ADC file, no mTLS endpoint switching, no CRM lookup for
external-account credentials.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

os.environ.update({
    "GOOGLE_API_USE_CLIENT_CERTIFICATE": "false",
    "GOOGLE_API_USE_MTLS_ENDPOINT": "never",
    "CLOUDSDK_CONFIG": tempfile.mkdtemp(prefix="kc-gcloud-"),
    "GOOGLE_CLOUD_PROJECT": "kc-test-project",
    "NO_GCE_CHECK": "true",
    "GCE_METADATA_HOST": "127.0.0.1:9",
    "GCE_METADATA_IP": "127.0.0.1:9",
})
os.environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
os.environ.pop("GOOGLE_CLOUD_UNIVERSE_DOMAIN", None)
