"""Flow parameters generated from the options schema (``weightsim.config``):
names, types, defaults, allowed values and descriptions, so that Prefect's
parameter form shows what the command line's help shows."""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Literal

from weightsim.config import schema

_TYPES = {"int": int, "str": str, "bool": bool, "float | None": float | None, "tuple[str, ...]": str}
_KW = inspect.Parameter.KEYWORD_ONLY


def option_parameters(**own: str) -> Callable:
    """Decorate a flow function ``fn(<own parameters>, **options)`` (under
    ``@flow``): its signature gets one keyword parameter per option (``archs``
    as comma-separated text, choices as ``Literal``) before its own, and its
    docstring an ``Args:`` section from the options' help and ``own``
    (parameter name → description)."""
    def wrap(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        params, lines = [], []
        for name, kind, default, text, choices in schema():
            annotation = Literal[choices] if choices else _TYPES[kind]
            params.append(inspect.Parameter(name, _KW, default=",".join(default) if name == "archs" else default,
                                            annotation=annotation))
            lines.append(f"    {name}: {text}.")
        for p in sig.parameters.values():
            if p.kind is not inspect.Parameter.VAR_KEYWORD:
                params.append(p.replace(kind=_KW))
                lines.append(f"    {p.name}: {own[p.name]}")
        fn.__signature__ = sig.replace(parameters=params)
        fn.__doc__ = f"{inspect.cleandoc(fn.__doc__ or '')}\n\nArgs:\n" + "\n".join(lines)
        return fn

    return wrap
