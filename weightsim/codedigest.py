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
    files = dict(map(_source, modules))
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0")
        with open(files[name], "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def _source(module: ModuleType | str) -> tuple[str, str]:
    """(dotted name, source file) of a module or of a module's name."""
    if isinstance(module, str):
        return module, importlib.util.find_spec(module).origin
    return module.__name__, module.__file__
