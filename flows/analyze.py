"""Analyze a sweep's runs and publish the report."""
from __future__ import annotations

from prefect import flow

from tasks.analysis import analyze_runs, render_report
from tasks.artifacts import publish_report
from weightsim.config import Options
from weightsim.sweep import locate

from .naming import run_label


@flow(name="analyze", flow_run_name=lambda: f"analyze-{run_label()}")
def analyze(options: dict, uris_by_arch: dict[str, list[str]] | None = None) -> str:
    """Similarity, hypothesis-training-testing and controls of the sweep's
    runs (all of them must be in the store); returns the summary URI."""
    opts = Options(**options)
    if uris_by_arch is None:
        uris_by_arch = locate(opts.store, opts.plan()[1])
    return analyze_runs(opts.to_dict(), uris_by_arch)


@flow(name="report", flow_run_name=lambda: f"report-{run_label()}")
def report(options: dict) -> dict[str, str]:
    """Render report.md / report.html from the analysis and publish the
    artifacts (markdown report, HTT table, link to report.html)."""
    from weightsim.datasets import load_dataset

    opts = Options(**options)
    name = load_dataset(opts.dataset).name
    uris = render_report(opts.store, name)
    publish_report(opts.store, name, uris)
    return uris
