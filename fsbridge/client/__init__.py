"""The host side of the API: a client of `fsbridge serve` and the path-or-upload decision.

Host-side code: imports nothing Linux-only (runs on macOS and Windows).
"""

from fsbridge.client.api import ApiClient, default_url
from fsbridge.client.load import LoadOutcome, load_archive

__all__ = ["ApiClient", "LoadOutcome", "default_url", "load_archive"]
