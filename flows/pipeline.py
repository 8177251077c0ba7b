"""The whole pipeline (``weightsim run``): train → analyze → report."""
from __future__ import annotations

from prefect import flow

from weightsim import catalog, design, loader
from weightsim.datasets import dataset_name, load_dataset

from .analyze import analyze, report
from .logs import one_line_errors
from .naming import own_tags, run_label, sweep_tags
from .parameters import option_parameters
from .train_sweep import task_runner, train_sweep


@flow(name="weightsim-pipeline", flow_run_name=lambda: f"pipeline-{run_label()}")
@option_parameters(adaptations="how a sweep template was fitted to the dataset, recorded with the sweep.")
def pipeline(adaptations: list[str] | None = None, **options) -> dict[str, str]:
    """Train the solution sets of a dataset (archs × problems × seeds),
    analyze them and publish the report; returns the report URIs."""
    one_line_errors()  # a worker runs this flow from its deployment: nothing of ours ran before
    opts = loader.load(options)
    design.check_analysable(opts.problems, opts.seeds, opts.permutations)
    named = opts.sweep or catalog.named(opts, load_dataset(opts.dataset).fingerprint).sweep  # the dataset version's
    with own_tags(), sweep_tags(dataset_name(opts.dataset), named):
        trained = train_sweep.with_options(task_runner=task_runner(opts.runner))(opts.to_dict(),
                                                                                  adaptations=adaptations)
        options = {**opts.to_dict(), "sweep": trained["sweep"]}  # the name train_sweep recorded, dataset version's
        analyze(options, trained["runs"])
        return report(options)
