"""How weightsim's processes log: errors weightsim raises on purpose (bad
data, divergence, an unusable store) are one line, since their message says
everything and a traceback only hides it.

``one_line_errors()`` is called explicitly where a process starts its work:
the CLI's ``main``, ``weightsim worker``, and the top of every flow a worker
runs from a deployment (a worker's flow-run process imports the flow's
module by its entrypoint and calls the flow: nothing else of ours runs
first)."""
from __future__ import annotations

import logging

from weightsim.errors import WeightsimError


def one_line_errors() -> None:
    """From now on in this process, log records of a ``WeightsimError`` carry
    no traceback (Prefect's "Finished in state Failed" and "Encountered
    exception" lines included). Idempotent: installed once per process."""
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "weightsim", False):
        return

    def factory(name, level, fn, lno, msg, args, exc_info, *rest, **kwargs):
        if exc_info and isinstance(exc_info, tuple) and isinstance(exc_info[1], WeightsimError):
            exc_info = None
        return make_record(name, level, fn, lno, msg, args, exc_info, *rest, **kwargs)

    factory.weightsim = True
    logging.setLogRecordFactory(factory)
