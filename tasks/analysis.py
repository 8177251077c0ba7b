"""Analysis and report tasks."""
from __future__ import annotations

from prefect import task
from prefect.tasks import exponential_backoff

from weightsim import analysis, report
from weightsim.config import Options
from weightsim.datasets import load_dataset

from .training import transient


@task(retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_condition_fn=transient)
def analyze_runs(options: dict, uris_by_arch: dict[str, list[str]]) -> str:
    """Similarity, hypothesis-training-testing and controls; returns the URI of summary.json."""
    opts = Options(**options)
    dataset = load_dataset(opts.dataset)
    return analysis.analyze(opts.store, dataset.name, dataset.fingerprint, uris_by_arch,
                            n_permutations=opts.permutations, skip_bad=opts.skip_bad,
                            device=opts.resolved_device())


@task(retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_condition_fn=transient)
def render_report(store: str, dataset: str) -> dict[str, str]:
    """report.md, report.html and figures next to summary.json; returns their URIs."""
    return report.render(store, dataset)
