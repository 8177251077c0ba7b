"""Credentials in URIs: ``redact`` removes them before a URI is stored,
logged, used in a run name or passed as a Prefect parameter; the full URI
stays in this process only (``remember`` / ``resolve``), so a reader in the
same process can still use it.

Redaction is an allow-list and fails closed: of a URL it keeps the scheme,
the host and port, and the path (without ``;`` path parameters such as
``;jsessionid=``, except in object keys: ``KEYED``); it drops the user-info (``user:password@``), the fragment
(``#access_token=…``) and every query parameter but the few known to carry
no secret (``SAFE_PARAMS``). A URL it cannot take apart becomes its scheme
and ``<redacted>``.
"""
from __future__ import annotations

import threading
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

KEYED = frozenset({"s3", "gs", "gcs", "file"})  # schemes whose path is an object key: ";" is part of the name
SAFE_PARAMS = frozenset({"versionId", "generation"})  # object versions (S3, GCS): never credentials
_full: dict[str, str] = {}
_lock = threading.Lock()


def redact(uri: str) -> str:
    """``uri`` with nothing that could be a credential; text that is not a
    URL (no ``://``) is returned unchanged."""
    if not isinstance(uri, str) or "://" not in uri:
        return uri
    scheme = uri.partition("://")[0]
    try:
        parts = urlsplit(uri)
        host, port = parts.hostname or "", parts.port  # port: a ValueError when it is not a number
        if not scheme.isascii() or not scheme.replace("+", "").replace("-", "").replace(".", "").isalnum():
            raise ValueError(scheme)
        netloc = f"[{host}]" if ":" in host else host
        netloc += f":{port}" if port is not None else ""
        path = parts.path if parts.scheme in KEYED else "/".join(seg.partition(";")[0] for seg in parts.path.split("/"))
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k in SAFE_PARAMS])
    except ValueError:
        return f"{scheme if scheme.isalnum() else 'url'}://<redacted>"
    safe = urlunsplit((parts.scheme, netloc, path, query, ""))
    return safe if safe.isprintable() else f"{parts.scheme}://<redacted>"


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
