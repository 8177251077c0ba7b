"""Prefect flows: compose the tasks into the pipeline a user runs or deploys.

Importing the package (as the CLI and every worker do) makes Prefect log
errors weightsim raises on purpose (bad data, divergence, an unusable store)
as one line: their message says everything, a traceback only hides it.
"""
import logging

from weightsim.errors import WeightsimError


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
