"""Prefect flows: compose the tasks into the pipeline a user runs or deploys.

Errors weightsim raises on purpose are logged as one line: ``flows.logs``
(``one_line_errors``, called by the CLI, the workers and every deployed flow).
"""
import os

# A transient server error (a 500 or 504 under load) is retried like the 502/503 and connection resets Prefect's
# client retries already: one failed request must not fail a sweep. This one import-time line stays on purpose:
# Prefect reads its settings once, when it is first imported, and the package's __init__ is the only code of ours
# that runs before any flows.* module imports prefect (the CLI's own imports included), so an explicit call in
# main() would come too late. It only sets a default in the environment (a value given outside wins) and installs
# nothing in Python. A worker's flow-run process imports prefect before our code: ``weightsim worker`` sets the
# same default in each worker's environment (``flows.worker.worker_env``), which its flow runs inherit.
os.environ.setdefault("PREFECT_CLIENT_RETRY_EXTRA_CODES", "500,504")
