"""Prefect flows: compose the tasks into the pipeline a user runs or deploys.

Importing the package (as the CLI and every worker do) makes Prefect log
errors weightsim raises on purpose (bad data, divergence, an unusable store)
as one line: their message says everything, a traceback only hides it.
"""
import logging
import os

from weightsim.errors import WeightsimError

# A transient server error (a 500 or 504 under load) is retried like the 502/503 and connection resets Prefect's
# client retries already: one failed request must not fail a sweep. Set before Prefect is imported (it reads its
# settings once); workers pass it on to the flow runs they start.
os.environ.setdefault("PREFECT_CLIENT_RETRY_EXTRA_CODES", "500,504")


def _one_line_weightsim_errors() -> None:
    """Installed once per process: log records of a ``WeightsimError`` carry
    no traceback."""
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "weightsim", False):
        return

    def factory(name, level, fn, lno, msg, args, exc_info, *rest, **kwargs):
        if exc_info and isinstance(exc_info, tuple) and isinstance(exc_info[1], WeightsimError):
            exc_info = None
        return make_record(name, level, fn, lno, msg, args, exc_info, *rest, **kwargs)

    factory.weightsim = True
    logging.setLogRecordFactory(factory)


_one_line_weightsim_errors()
