"""Digests of the code that defines a result, for cache keys that cannot go
stale: a key holds the digest of the source of every module whose code
computes the cached numbers, so any change to that code (a new sample
size, another statistic) is a new key, with no version constant to bump by
hand. A change that does not touch the numbers (a comment) also makes a
new key: recomputing is the price of never serving a stale result.
"""
from __future__ import annotations

import hashlib
import importlib.util
from types import ModuleType


def code_digest(*modules: ModuleType | str) -> str:
    """SHA-256 (first 16 hex digits) of the modules' names and source files;
    a module given by its dotted name is read without being imported (code
    that a layer runs only on demand, e.g. ``weightsim.probes``)."""
    files = {m if isinstance(m, str) else m.__name__: importlib.util.find_spec(m).origin if isinstance(m, str)
             else m.__file__ for m in modules}
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0")
        with open(files[name], "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]
