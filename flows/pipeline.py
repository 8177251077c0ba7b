"""The whole pipeline (``weightsim run``): train → analyze → report."""
from __future__ import annotations

from prefect import flow

from weightsim.config import Options

from .analyze import analyze, report
from .naming import run_label
from .train_sweep import task_runner, train_sweep


@flow(name="weightsim-pipeline", flow_run_name=lambda: f"pipeline-{run_label()}")
def pipeline(dataset: str = "digits", archs: str = "mlp,cnn,rnn,gru", problems: int = 10, seeds: int = 12,
             epochs: int = 10, store: str = "", device: str = "auto", checkpoints: str = "0,final",
             lr: float | None = None, batch_size: int = 32, classes_per_problem: int = 2, permutations: int = 200,
             skip_bad: bool = False, engine: str = "batched", precision: str = "fp32", runner: str = "local",
             seed_chunk: int = 16, sweep: str = "") -> dict[str, str]:
    """Train the solution sets of ``dataset`` (archs × problems × seeds), analyze
    them and publish the report; returns the report URIs. ``store`` defaults
    to ``$WEIGHTSIM_STORE``, else ``./store``; ``sweep`` names the sweep
    (default: derived from the options)."""
    options = Options(dataset=dataset, archs=archs, problems=problems, seeds=seeds, epochs=epochs, store=store,
                      device=device, checkpoints=checkpoints, lr=lr, batch_size=batch_size,
                      classes_per_problem=classes_per_problem, permutations=permutations,
                      skip_bad=skip_bad, engine=engine, precision=precision, sweep=sweep).to_dict()
    trained = train_sweep.with_options(task_runner=task_runner(runner))(options, runner=runner, seed_chunk=seed_chunk)
    analyze(options, trained["runs"])
    return report(options)
