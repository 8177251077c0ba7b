"""Prefect flows: compose the tasks into the pipeline a user runs or deploys.

Errors weightsim raises on purpose are logged as one line: ``flows.logs``
(``one_line_errors``, called by the CLI, the workers and every deployed flow).
"""
import os

# A transient server error (a 500 or 504 under load) is retried like the 502/503 and connection resets Prefect's
# client retries already: one failed request must not fail a sweep. This one import-time line stays on purpose:
# Prefect reads its settings once, when it is first imported, and this package's __init__ runs before any flows.*
# module imports prefect, whatever the way in (the CLI, ``from flows.pipeline import pipeline`` in Python or a
# test, ``prefect deploy`` loading an entrypoint). An explicit function would have to be called at each of those
# before anything imports prefect. It only sets a default in the environment (a value given outside wins) and
# installs nothing in Python. A worker's flow-run process imports prefect before any code of ours: ``weightsim
# worker`` sets the same default in each worker's environment (``flows.worker.worker_env``), which its flow runs
# inherit.
os.environ.setdefault("PREFECT_CLIENT_RETRY_EXTRA_CODES", "500,504")
