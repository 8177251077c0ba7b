"""Optional dependencies: each feature that needs a package outside the core
names the extra that installs it (``pip install 'weightsim[dask]'``)."""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import WeightsimError


def require(module: str, extra: str, what: str) -> ModuleType:
    """``module`` imported, or a ``WeightsimError`` (one line, exit 2 in the
    CLI) saying that ``what`` needs ``extra`` and how to install it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise WeightsimError(f"{what} needs the {extra} extra: pip install 'weightsim[{extra}]'") from None
