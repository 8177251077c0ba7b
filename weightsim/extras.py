"""Optional dependencies: each feature that needs a package outside the core
names the extra that installs it (``pip install 'weightsim[dask]'``)."""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import WeightsimError


def check(module: str, extra: str, what: str) -> None:
    """``require`` without importing: that ``module`` is installed."""
    if importlib.util.find_spec(module) is None:
        raise _missing(extra, what)


def require(module: str, extra: str, what: str) -> ModuleType:
    """``module`` imported, or a ``WeightsimError`` (one line, exit 2 in the
    CLI) saying that ``what`` needs ``extra`` and how to install it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise _missing(extra, what) from None


def _missing(extra: str, what: str) -> WeightsimError:
    return WeightsimError(f"{what} needs the {extra} extra: pip install 'weightsim[{extra}]'")
