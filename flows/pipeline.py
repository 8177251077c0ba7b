"""The whole pipeline (``weightsim run``): train → analyze → report."""
from __future__ import annotations

from prefect import flow

from weightsim.config import Options

from .analyze import analyze, report
from .naming import own_tags, run_label
from .train_sweep import task_runner, train_sweep


D = Options.defaults()


@flow(name="weightsim-pipeline", flow_run_name=lambda: f"pipeline-{run_label()}")
def pipeline(dataset: str = D["dataset"], archs: str = ",".join(D["archs"]), problems: int = D["problems"],
             seeds: int = D["seeds"], epochs: int = D["epochs"], store: str = D["store"], device: str = D["device"],
             checkpoints: str = D["checkpoints"], lr: float | None = D["lr"], batch_size: int = D["batch_size"],
             classes_per_problem: int = D["classes_per_problem"], problem_kind: str = D["problem_kind"],
             permutations: int = D["permutations"],
             skip_bad: bool = D["skip_bad"], engine: str = D["engine"], precision: str = D["precision"],
             runner: str = D["runner"], seed_chunk: int = D["seed_chunk"], sweep: str = D["sweep"],
             slot_limit: str = D["slot_limit"], adaptations: list[str] | None = None) -> dict[str, str]:
    """Train the solution sets of ``dataset`` (archs × problems × seeds), analyze
    them and publish the report; returns the report URIs. ``store`` defaults
    to ``$WEIGHTSIM_STORE``, else ``./store``; ``sweep`` names the sweep
    (default: derived from the options); ``slot_limit`` names the
    Prefect global concurrency limit training batches take a slot of
    (default: ``weightsim-gpu`` on CUDA); ``adaptations`` are recorded with
    it (how a template was fitted to the dataset)."""
    opts = Options(dataset=dataset, archs=archs, problems=problems, seeds=seeds, epochs=epochs, store=store,
                   device=device, checkpoints=checkpoints, lr=lr, batch_size=batch_size,
                   classes_per_problem=classes_per_problem, problem_kind=problem_kind, permutations=permutations,
                   skip_bad=skip_bad, engine=engine, precision=precision, sweep=sweep, runner=runner,
                   seed_chunk=seed_chunk, slot_limit=slot_limit)
    opts.check_analysable()
    options = opts.to_dict()
    with own_tags():
        trained = train_sweep.with_options(task_runner=task_runner(runner))(options, adaptations=adaptations)
        options = {**options, "sweep": trained["sweep"]}  # the name train_sweep recorded, dataset version included
        analyze(options, trained["runs"])
        return report(options)
