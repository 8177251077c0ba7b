"""weightsim: weight similarity of neural-network solution sets.

The science lives here (datasets, problems, archs, training, tables, chain,
similarity, htt, report); orchestration lives in the ``tasks`` and ``flows``
packages, which wrap these functions for Prefect.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("weightsim")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+source"
