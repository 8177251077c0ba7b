"""Analyze a sweep's runs and publish the report."""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.futures import as_completed, wait

from tasks.analysis import analyze_arch, compute_representations, plan_representations, render_report, summarize
from tasks.artifacts import publish_report, start_progress, update_progress
from tasks.datasets import fingerprint
from weightsim import catalog, loader
from weightsim.placement import resolved_device
from weightsim.sweep import locate, plan_sweep

from .naming import run_label
from .progress import show
from .train_sweep import task_runner


@flow(name="analyze", flow_run_name=lambda: f"analyze-{run_label()}", task_runner=task_runner("local"))
def analyze(options: dict, uris_by_arch: dict[str, list[str]] | None = None, dataset: dict | None = None) -> str:
    """Similarity, hypothesis-training-testing and controls of the sweep's
    runs (all of them must be in the store); returns the summary URI.
    ``dataset``: the dataset's description as recorded with the sweep
    (else the dataset is loaded from ``options``).

    Fan-out: representations of every chunk of runs (cached in the store),
    then one analysis task per arch (a failed arch retries alone), then the
    summary. Progress goes to the log and a progress artifact."""
    opts = loader.load(options)
    logger = get_run_logger()
    if uris_by_arch is None:
        uris_by_arch = locate(opts.store, plan_sweep(opts)[1])
    info = dataset or fingerprint(opts.dataset)
    device, sweep = resolved_device(opts.device), catalog.named(opts, info["fingerprint"]).sweep
    plans = {arch: plan_representations.submit(opts.store, arch, uris) for arch, uris in uris_by_arch.items()}
    chunks = {compute_representations.with_options(task_run_name=f"representations-{arch}-{i}").submit(
                  opts.store, arch, chunk, p.result()["reference"], device, opts.dataset): len(chunk)
              for arch, p in plans.items() for i, chunk in enumerate(p.result()["chunks"])}
    steps, runs = len(chunks) + len(uris_by_arch), sum(chunks.values())
    progress = start_progress("analysis", info["name"], sweep, steps)
    done = represented = 0
    show("representations", 0, runs, "runs")
    for fut in as_completed(list(chunks)):
        fut.result()
        done, represented = done + 1, represented + chunks[fut]
        update_progress(progress, "analysis", info["name"], sweep, done, steps, "steps")
        show("representations", represented, runs, "runs")
    records = {}
    futures = {analyze_arch.with_options(task_run_name=f"analyze-{arch}").submit(
                   opts.to_dict(), info["name"], sweep, arch, uris, device): arch
               for arch, uris in uris_by_arch.items()}
    show("tests", 0, len(futures), "archs")
    for fut in as_completed(list(futures)):
        records[futures[fut]] = fut.result()
        done += 1
        update_progress(progress, "analysis", info["name"], sweep, done, steps, "steps")
        show("tests", len(records), len(futures), "archs")
        logger.info("%s: %s", futures[fut], records[futures[fut]]["entry"]["decision"])
    wait(list(futures))
    return summarize(opts.store, info["name"], info["fingerprint"], sweep,
                     {a: records[a] for a in uris_by_arch}, uris_by_arch, opts.skip_bad, device)


@flow(name="report", flow_run_name=lambda: f"report-{run_label()}")
def report(options: dict, dataset: dict | None = None) -> dict[str, str]:
    """Render report.md / report.html from the analysis and publish the
    artifacts (markdown report, HTT table, link to report.html); ``dataset``
    as in ``analyze``."""
    opts = loader.load(options)
    info = dataset or fingerprint(opts.dataset)
    name, sweep = info["name"], catalog.named(opts, info["fingerprint"]).sweep
    show("report", 0, 1, "reports")
    uris = render_report(opts.store, name, sweep, list(opts.archs), info["fingerprint"])
    publish_report(opts.store, name, sweep, uris)
    show("report", 1, 1, "reports")
    get_run_logger().info("report of %s sweep %s: %s", name, sweep, uris["html"])
    return uris
