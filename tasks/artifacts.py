"""Prefect artifacts: progress of a sweep, the report, HTT tables, a link to report.html.

Keys are stable per dataset (``weightsim-report-<dataset>`` ...), so the UI
keeps the history of every rerun."""
from __future__ import annotations

import re
from uuid import UUID

from prefect import task
from prefect.artifacts import (create_link_artifact, create_markdown_artifact, create_progress_artifact,
                               create_table_artifact, update_progress_artifact)

from weightsim.analysis import load_summary
from weightsim.report import build_blocks, to_markdown


def artifact_key(kind: str, dataset: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return f"weightsim-{kind}-" + (re.sub(r"[^a-z0-9-]+", "-", dataset.lower()).strip("-") or "dataset")


def start_progress(dataset: str, total: int) -> UUID:
    return create_progress_artifact(0.0, key=artifact_key("progress", dataset),
                                    description=f"weightsim sweep of {dataset}: 0 of {total} runs")


def update_progress(artifact_id: UUID, done: int, total: int, trained: int, dataset: str) -> None:
    update_progress_artifact(artifact_id, 100.0 * done / max(total, 1),
                             description=f"weightsim sweep of {dataset}: {done} of {total} runs "
                                         f"({trained} trained now, {done - trained} already in the store)")


@task
def publish_report(store: str, dataset: str, uris: dict[str, str]) -> dict[str, str]:
    """Markdown report (figures embedded, so it shows without any other
    server), one table artifact of every HTT result, and a link to report.html."""
    summary, arrays = load_summary(store, dataset)
    md = to_markdown(build_blocks(summary, arrays), embed=True)
    ids = {"report": create_markdown_artifact(md, key=artifact_key("report", dataset),
                                              description=f"weightsim report of {dataset}")}
    rows = [{"arch": arch, "representation": rep, "accuracy": round(r["accuracy"], 4), "chance": round(r["chance"], 4),
             "ci_low": round(r["ci_low"], 4), "ci_high": round(r["ci_high"], 4), "p_binomial": r["p_binomial"],
             "p_permutation": r["p_permutation"], "n_train": r["n_train"], "n_test": r["n_test"]}
            for arch, e in summary["archs"].items() for rep, r in e["htt"].items()]
    ids["htt"] = create_table_artifact(rows, key=artifact_key("htt", dataset),
                                       description=f"hypothesis-training-testing results of {dataset}")
    link = uris["html"] if "://" in uris["html"] else "file://" + uris["html"]
    ids["link"] = create_link_artifact(link, link_text=f"report.html of {dataset}", key=artifact_key("link", dataset),
                                       description="the full report in the store")
    return {k: str(v) for k, v in ids.items()}
