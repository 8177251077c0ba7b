"""Analysis and report tasks: representations of a chunk of runs, the
analysis of one arch, the summary of a sweep, the report. They move URIs;
the representations travel through the store's feature cache."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.tasks import exponential_backoff

from weightsim import analysis, report, representations
from weightsim.chunks import chunked

from .training import transient

RETRY = dict(retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_condition_fn=transient)
TASK_RUNS = 512  # runs per representation task


@task(**RETRY)
def plan_representations(store: str, arch: str, uris: list[str]) -> dict:
    """The arch's reference run and its runs cut into chunks for
    ``compute_representations`` (table footers only)."""
    return {"reference": representations.reference_of(store, arch, uris),
            "chunks": chunked(uris, TASK_RUNS)}


@task(**RETRY)
def compute_representations(store: str, arch: str, uris: list[str], reference: str, device: str,
                            data: str | None = None) -> dict:
    """Compute and cache the representations of ``uris`` that are not in the
    feature cache yet (``data``: their dataset, for the function-based
    one); ``{"computed", "cached", "bad"}``."""
    logger = get_run_logger()
    p = representations.plan(store, arch, uris, reference=reference, data=data)
    done = representations.compute(store, p, device, lambda k, n: logger.info("%s: %d/%d runs computed", arch, k, n))
    logger.info("%s: %d runs computed, %d already cached, %d bad tables", arch, done["computed"], done["cached"],
                len(done["bad"]))
    return done


@task(**RETRY)
def analyze_arch(options: dict, dataset: str, sweep: str, arch: str, uris: list[str], device: str) -> dict:
    """Hypothesis-training-testing, similarity and retrieval of one arch;
    returns its record (summary entry, arrays reference)."""
    logger = get_run_logger()
    return analysis.analyze_arch(options["store"], dataset, sweep, arch, uris, options["permutations"],
                                 options["skip_bad"], device=device, on_progress=logger.info,
                                 data=options["dataset"])


@task(**RETRY)
def summarize(store: str, dataset: str, fingerprint: str, sweep: str, records: dict[str, dict],
              uris_by_arch: dict[str, list[str]], skip_bad: bool, device: str) -> str:
    """Cross tests and summary.json; returns its URI."""
    return analysis.summarize(store, dataset, fingerprint, sweep, records, uris_by_arch, skip_bad, device=device)


@task(**RETRY)
def render_report(store: str, dataset: str, sweep: str, archs: list[str], fingerprint: str) -> dict[str, str]:
    """report.md, report.html and figures next to summary.json (which must
    cover ``archs`` of dataset version ``fingerprint``), and the dataset's
    index of sweeps; returns their URIs."""
    return report.render(store, dataset, sweep, archs, fingerprint)
