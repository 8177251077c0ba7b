"""The whole pipeline (``weightsim run``): train → analyze → report."""
from __future__ import annotations

from typing import Literal

from prefect import flow

from weightsim.config import Options
from weightsim.datasets import dataset_name, load_dataset
from weightsim.problems import PROBLEM_KINDS
from weightsim.runs import PRECISIONS

from .analyze import analyze, report
from .logs import one_line_errors
from .naming import own_tags, run_label, sweep_tags
from .train_sweep import task_runner, train_sweep


D = Options.defaults()


@flow(name="weightsim-pipeline", flow_run_name=lambda: f"pipeline-{run_label()}")
def pipeline(dataset: str = D["dataset"], archs: str = ",".join(D["archs"]), problems: int = D["problems"],
             seeds: int = D["seeds"], epochs: int = D["epochs"], store: str = D["store"],
             device: Literal["auto", "cpu", "cuda"] = D["device"], checkpoints: str = D["checkpoints"],
             lr: float | None = D["lr"], batch_size: int = D["batch_size"],
             classes_per_problem: int = D["classes_per_problem"],
             problem_kind: Literal[PROBLEM_KINDS] = D["problem_kind"], permutations: int = D["permutations"],
             skip_bad: bool = D["skip_bad"], engine: Literal["batched", "loop"] = D["engine"],
             precision: Literal[PRECISIONS] = D["precision"], runner: str = D["runner"],
             seed_chunk: int = D["seed_chunk"], sweep: str = D["sweep"], slot_limit: str = D["slot_limit"],
             adaptations: list[str] | None = None) -> dict[str, str]:
    """Train the solution sets of a dataset (archs × problems × seeds),
    analyze them and publish the report; returns the report URIs.

    Args:
        dataset: built-in name (digits, mnist1d, synthetic[:opts]) or a path/URI of a dataset file.
        archs: comma-separated arch names, e.g. mlp,cnn,rnn-tanh,gru.
        problems: number of problems (class pairs or groups; one per class for ovr).
        seeds: seeds per problem.
        epochs: training epochs.
        store: the store root, a local folder or s3://bucket/prefix (default $WEIGHTSIM_STORE, else ./store).
        device: where training and analysis run (auto: CUDA when there is a GPU).
        checkpoints: epochs to keep besides 0 and the final one, e.g. 0,10,final.
        lr: learning rate (default: per arch).
        batch_size: mini-batch size.
        classes_per_problem: classes per problem of problem_kind groups.
        problem_kind: pairs (class pairs), groups (classes_per_problem classes each) or ovr (one class
            against all others).
        permutations: label permutations per hypothesis test (at least 99, so a p-value reaches 0.01).
        skip_bad: leave unreadable weight tables out of the analysis (listed in the report) instead of failing.
        engine: batched (all seeds of a chunk at once) or loop (the per-seed reference loop).
        precision: fp32, tf32 (TF32 matmuls on CUDA) or bf16 (bfloat16 autocast of the forward pass).
        runner: where training chunks run: local, dask, a Dask scheduler tcp://host:port, or pool:NAME
            (flow runs on the workers of work pool NAME).
        seed_chunk: seeds per training chunk.
        sweep: the sweep's name (default: derived from the options).
        slot_limit: Prefect global concurrency limit each training batch holds a slot of (default
            weightsim-gpu on CUDA; none: off).
        adaptations: how a sweep template was fitted to the dataset, recorded with the sweep."""
    one_line_errors()  # a worker runs this flow from its deployment: nothing of ours ran before
    opts = Options(dataset=dataset, archs=archs, problems=problems, seeds=seeds, epochs=epochs, store=store,
                   device=device, checkpoints=checkpoints, lr=lr, batch_size=batch_size,
                   classes_per_problem=classes_per_problem, problem_kind=problem_kind, permutations=permutations,
                   skip_bad=skip_bad, engine=engine, precision=precision, sweep=sweep, runner=runner,
                   seed_chunk=seed_chunk, slot_limit=slot_limit)
    opts.check_analysable()
    options = opts.to_dict()
    named = opts.sweep or opts.named(load_dataset(opts.dataset).fingerprint).sweep  # the dataset version's
    with own_tags(), sweep_tags(dataset_name(opts.dataset), named):
        trained = train_sweep.with_options(task_runner=task_runner(runner))(options, adaptations=adaptations)
        options = {**options, "sweep": trained["sweep"]}  # the name train_sweep recorded, dataset version included
        analyze(options, trained["runs"])
        return report(options)
