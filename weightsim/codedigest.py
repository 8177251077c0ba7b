"""Digests of the code that defines a result, for cache keys that cannot go
stale: a key holds the digest of the source of every module whose code
computes the cached numbers, so any change to that code (a new sample
size, another statistic) is a new key, with no version constant to bump by
hand. A change that does not touch the numbers (a comment) also makes a
new key: recomputing is the price of never serving a stale result.
"""
from __future__ import annotations

import hashlib
from types import ModuleType


def code_digest(*modules: ModuleType) -> str:
    """SHA-256 (first 16 hex digits) of the modules' names and source files."""
    h = hashlib.sha256()
    for m in sorted(modules, key=lambda m: m.__name__):
        h.update(m.__name__.encode() + b"\0")
        with open(m.__file__, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]
