"""Content digests of JSON-able values: the one recipe behind run ids,
sweep names, cache keys and dataset signatures.

The text hashed is ``json.dumps(obj, sort_keys=True, default=default)`` with
``json``'s default separators, exactly as every id derived from it has been
computed: stores written before this module existed keep their ids.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any


def json_digest(obj: Any, n: int | None = None, *, default: Callable[[Any], Any] | None = None) -> str:
    """Hex sha256 of ``obj`` as canonical JSON (keys sorted), its first ``n``
    characters (all 64 if None); ``default`` as in ``json.dumps`` (e.g. ``str``
    for values JSON has no type for)."""
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True, default=default).encode()).hexdigest()
    return digest if n is None else digest[:n]
