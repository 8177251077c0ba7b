"""Credentials in URIs: ``redact`` removes them before a URI is stored,
logged or passed as a Prefect parameter; the full URI stays in this process
only (``remember`` / ``resolve``), so a reader in the same process can still
use it.

Removed: the user-info part (``user:password@``) and query parameters that
carry signatures, tokens or keys (presigned S3 URLs, SAS tokens).
"""
from __future__ import annotations

import re
import threading
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SECRET_PARAM = re.compile(r"(signature|credential|token|secret|password|passwd|key|sig|auth|session)",
                           re.IGNORECASE)
_full: dict[str, str] = {}
_lock = threading.Lock()


def redact(uri: str) -> str:
    """``uri`` without credentials; other text is returned unchanged."""
    if not isinstance(uri, str) or "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    netloc = parts.netloc.rpartition("@")[2]
    query = parts.query
    if query:
        kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if not _SECRET_PARAM.search(k)]
        query = urlencode(kept)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def remember(uri: str) -> str:
    """The redacted form of ``uri``; ``resolve`` gives the full one back in
    this process."""
    safe = redact(uri)
    if safe != uri:
        with _lock:
            _full[safe] = uri
    return safe


def resolve(uri: str) -> str:
    """The full URI this process was given for a redacted one (else ``uri``)."""
    with _lock:
        return _full.get(uri, uri)
