"""Prefect artifacts: progress of a sweep's training and analysis, the
report, HTT tables, a link to report.html.

Keys are stable per dataset and sweep (``weightsim-report-<dataset>-<sweep>``
...), so the UI keeps the history of every rerun of a sweep and two sweeps of
one dataset keep theirs apart."""
from __future__ import annotations

import re
from uuid import UUID

from prefect import task
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)

from weightsim.analysis import load_summary, report_prefix
from weightsim.report import embed_figures
from weightsim.store import open_store


def artifact_key(kind: str, dataset: str, sweep: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return "-".join(["weightsim", kind, re.sub(r"[^a-z0-9-]+", "-", f"{dataset}-{sweep}".lower()).strip("-")])


def start_progress(stage: str, dataset: str, sweep: str, total: int, unit: str = "runs") -> UUID:
    return create_progress_artifact(0.0, key=artifact_key("progress", dataset, sweep),
                                    description=f"weightsim {stage} of {dataset} sweep {sweep}: 0 of {total} {unit}")


def update_progress(artifact_id: UUID, stage: str, dataset: str, sweep: str, done: int, total: int, unit: str = "runs",
                    detail: str = "") -> None:
    update_progress_artifact(artifact_id, 100.0 * done / max(total, 1),
                             description=f"weightsim {stage} of {dataset} sweep {sweep}: {done} of {total} {unit}"
                                         + (f" ({detail})" if detail else ""))


def publish_runs(dataset: str, sweep: str, rows: list[dict]) -> None:
    """A table artifact of the sweep's runs (run id, arch, problem, seed,
    test accuracy, final loss, table URI)."""
    create_table_artifact(rows, key=artifact_key("runs", dataset, sweep),
                          description=f"the {len(rows)} runs of {dataset} sweep {sweep}")


@task
def publish_report(store: str, dataset: str, sweep: str, uris: dict[str, str]) -> dict[str, str]:
    """Markdown report (figures embedded, so it shows without any other
    server), one table artifact of every HTT result, and a link to report.html."""
    st = open_store(store)
    prefix = report_prefix(dataset, sweep)
    summary, _ = load_summary(st, dataset, sweep)
    md = embed_figures(st.get_bytes(f"{prefix}/report.md").decode(), lambda name: st.get_bytes(f"{prefix}/{name}"))
    ids = {"report": create_markdown_artifact(md, key=artifact_key("report", dataset, sweep),
                                              description=f"weightsim report of {dataset}, sweep {sweep}")}
    rows = [{"arch": arch, "representation": rep, "accuracy": round(r["accuracy"], 3), "chance": round(r["chance"], 3),
             "ci_low": round(r["ci_low"], 3), "ci_high": round(r["ci_high"], 3),
             "p_binomial": float(f"{r['p_binomial']:.3g}"), "p_permutation": float(f"{r['p_permutation']:.3g}"),
             "n_train": r["n_train"], "n_test": r["n_test"]}
            for arch, e in summary["archs"].items() for rep, r in e["htt"].items()]
    ids["htt"] = create_table_artifact(rows, key=artifact_key("htt", dataset, sweep),
                                       description=f"hypothesis-training-testing results of {dataset}, sweep {sweep}")
    # where report.html lies, as text: a browser cannot open file:// links from the UI, and a presigned S3
    # URL would put an access key id into Prefect's database; the report artifact shows the same report
    ids["link"] = create_markdown_artifact(
        f"**report.html** of {dataset}, sweep {sweep}: `{uris['html']}`\n\n"
        f"(in the store, next to report.md and summary.json; the *report* artifact of this run shows the same "
        f"report with its figures)", key=artifact_key("link", dataset, sweep),
        description="where the full report lies in the store")
    return {k: str(v) for k, v in ids.items()}
