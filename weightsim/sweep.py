"""Solution sets: plan the runs of (dataset × arch × problem × seed) and train
the ones the store does not hold yet.

A run whose weight table exists and verifies is skipped; a missing or corrupt
one is (re)trained and written atomically under the same key. A run that
diverged is a result too: ``<run_id>.diverged.json`` beside where its table
would be records it (run id, epoch, loss), so it is never trained again
(training is deterministic: it would diverge again) and the analysis runs
on the others and names it.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager as ContextManager, nullcontext
from dataclasses import replace

from .archs import arch_spec
from .claims import DEFAULT_TTL, Claims
from .chunks import chunked
from .config import Options
from .datasets import Dataset, load_dataset
from .divergence import divergence_of, record_divergence
from .engine import EngineOptions, max_seeds, train_batch
from .errors import DivergenceError, SpecError, TableError, WeightsimError
from .placement import placement
from .problems import Problem, make_problems, max_problems, one_vs_rest
from .runs import RunKey, TrainConfig, parse_checkpoints
from .store import Store, open_store
from .tables import read_meta, read_run_epochs, write_many
from .training import TrainedRun, train_run

# Learning rates that train every built-in problem reliably in a few epochs;
# recurrent nets clip the gradient norm at 1 (the usual remedy for exploding
# gradients through time).
DEFAULT_LR = {"mlp": 0.05, "cnn": 0.05, "rnn": 0.05, "gru": 0.1}
GRAD_CLIP = {"rnn": 1.0, "gru": 1.0}


def default_config(arch: str, **overrides) -> TrainConfig:
    """The training config of an arch name, with CLI/config overrides."""
    kind = arch.split("-")[0]
    base = {"lr": DEFAULT_LR.get(kind, 0.05), "grad_clip": GRAD_CLIP.get(kind)}
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**base)


def plan(dataset: Dataset, archs: Sequence[str], problems: int | Sequence[Problem], seeds: Iterable[int],
         config: Callable[[str], TrainConfig] = default_config, k: int = 2) -> list[RunKey]:
    """All runs of a sweep, ordered arch → problem → seed."""
    if isinstance(problems, int):
        problems = make_problems(dataset, problems, k=k)
    seeds = list(seeds)
    if not archs or not seeds:
        raise SpecError("a sweep needs at least one arch and one seed")
    keys = []
    for arch in archs:
        for problem in problems:
            spec = arch_spec(arch, dataset.shape, problem.num_classes)
            cfg = config(arch)
            keys.extend(RunKey(dataset.name, dataset.fingerprint, problem, arch, spec, s, cfg) for s in seeds)
    return keys


def train_config(opts: Options, arch: str) -> TrainConfig:
    """The training config of one arch under ``opts``."""
    return default_config(arch, epochs=opts.epochs, lr=opts.lr, batch_size=opts.batch_size,
                          checkpoints=parse_checkpoints(opts.checkpoints, opts.epochs), precision=opts.precision)


def engine_options(opts: Options) -> EngineOptions | None:
    """The batched engine's options under ``opts`` (None: the per-seed loop)."""
    return EngineOptions(precision=opts.precision) if opts.engine == "batched" else None


def plan_sweep(opts: Options, archs: Sequence[str] | None = None, problems: Sequence[str] | None = None,
               seeds: Sequence[int] | None = None) -> tuple[Dataset, list[RunKey]]:
    """(dataset, run keys) of the sweep ``opts`` describe, optionally
    restricted to some archs, problems (by name) and seeds."""
    dataset = load_dataset(opts.dataset)
    if problems is not None:
        chosen = [Problem.parse(n) for n in problems]
    elif opts.problem_kind == "ovr":
        chosen = one_vs_rest(dataset, opts.problems)
    else:
        chosen = make_problems(dataset, opts.problems, k=opts.classes_per_problem)
    keys = plan(dataset, archs or opts.archs, chosen, range(opts.seeds) if seeds is None else seeds,
                lambda arch: train_config(opts, arch))
    return dataset, keys


def fitted_to(opts: Options, classes: int) -> tuple[Options, list[str]]:
    """``opts`` adapted to a dataset of ``classes`` classes where it cannot
    hold them (fewer classes than a problem needs, fewer problems possible
    than asked); the adapted options and one sentence per change."""
    k, problems, changes = opts.classes_per_problem, opts.problems, []
    if k > classes:
        changes.append(f"classes per problem {k} → {classes}: the dataset has {classes} classes")
        k = classes
    limit = max_problems(classes, k, opts.problem_kind)
    if problems > limit:
        what = "one-vs-rest problem(s)" if opts.problem_kind == "ovr" else f"problem(s) of {k} classes"
        changes.append(f"problems {problems} → {limit}: a {classes}-class dataset holds {limit} {what}")
        problems = limit
    return replace(opts, classes_per_problem=k, problems=problems), changes


def is_done(store: Store, key: RunKey, verify: bool = False) -> bool:
    """True when the run's table exists and is bound to this run: its
    footer (metadata and content checksum) reads, and its metadata describes
    exactly ``key`` (run id, dataset, arch, problem, seed, config). That
    costs one small read; ``verify`` also reads and verifies every row."""
    return done_meta(store, key, verify) is not None


def done_meta(store: Store, key: RunKey, verify: bool = False) -> dict | None:
    """The metadata of the run's table when ``is_done``, else None."""
    uri = store.key_uri(key.key)
    try:
        if verify:
            read_run_epochs(uri, [0, None], store)
        meta = read_meta(uri, store)
    except TableError:
        return None
    return meta if key.mismatch(meta) is None else None


def table_meta(run: TrainedRun, dataset: Dataset) -> dict:
    """A trained run's table metadata; its metrics also say where it was
    trained (worker, host, device index: ``weightsim.placement``)."""
    k = run.key
    return {"run_id": k.run_id, "seed": k.seed, "arch": k.arch, "spec": k.spec.to_dict(),
            "config": k.config.to_dict(), "metrics": {**run.metrics, **placement(run.device)},
            "device": run.device,
            "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint, "source": dataset.source},
            "problem": {"name": k.problem.name, **k.problem.to_dict()}}


def _batches(keys: Sequence[RunKey], device: str) -> list[list[RunKey]]:
    """Runs grouped by everything but the seed, in order, cut to the number
    of seeds the device's memory holds."""
    groups: dict[tuple, list[RunKey]] = {}
    for k in keys:
        groups.setdefault((k.problem, k.arch, k.spec, k.config), []).append(k)
    out = []
    for group in groups.values():
        size = max_seeds(group[0].spec, group[0].config.batch_size, device)
        out.extend(chunked(group, size))
    return out


def _train(keys: list[RunKey], dataset: Dataset, device: str,
           engine: EngineOptions | None) -> list[TrainedRun | DivergenceError]:
    """Train ``keys`` (one batch): with the batched engine (at the
    precision the runs' config names), a single run too, so a run retrained
    alone gets the bits it got beside other seeds; with the per-seed
    reference loop when ``engine`` is None."""
    precision = keys[0].config.precision
    if engine is not None:
        return train_batch(keys, dataset, device, replace(engine, precision=precision))
    if precision != "fp32":
        raise SpecError(f"precision {precision} needs the batched engine (the loop is the fp32 reference)")
    out: list[TrainedRun | DivergenceError] = []
    for key in keys:
        try:
            out.append(train_run(key, dataset, device))
        except DivergenceError as exc:
            out.append(exc)
    return out


def train_missing(store: str | Store, keys: Sequence[RunKey], dataset: Dataset, device: str = "cpu",
                  on_run: Callable[[RunKey, str, bool, dict], None] | None = None,
                  engine: EngineOptions | None = EngineOptions(), claim_ttl: float = DEFAULT_TTL,
                  poll: float = 2.0, slot: Callable[[], ContextManager] | None = None,
                  on_diverged: Callable[[RunKey, dict], None] | None = None) -> list[str]:
    """Train and write every run of ``keys`` not yet in the store.

    Runs that differ only in their seed train together through the batched
    engine (``engine=None``: one at a time with the per-seed loop). Each run
    is claimed first (``weightsim.claims``), so concurrent sweeps on one
    store train it once: runs another trainer holds are waited for (checked
    every ``poll`` seconds) and taken over if their claim expires. Returns
    the URIs of the tables of ``keys`` (trained now or before), in order.
    ``on_run(key, uri, trained, metrics)`` is called once per run with a
    table, e.g. for progress reporting. ``slot()`` is held while each batch
    trains (e.g. a slot of a concurrency limit per GPU): never while waiting
    for other trainers or writing tables. A run that diverges (now or
    before) has no table: its divergence is recorded (``record_divergence``)
    and ``on_diverged(key, record)`` called; it is not trained again.
    """
    st = open_store(store)
    for key in keys:
        if key.fingerprint != dataset.fingerprint:
            raise SpecError(f"run {key.run_id} belongs to another version of dataset {key.dataset}")
    uris: dict[RunKey, str] = {}

    def found(key: RunKey, uri: str, trained: bool, metrics: dict) -> None:
        uris[key] = uri
        if on_run:
            on_run(key, uri, trained, metrics)

    def missing(candidates: Iterable[RunKey]) -> list[RunKey]:
        out = []
        for key in candidates:
            meta = done_meta(st, key)
            if meta is not None:
                found(key, st.key_uri(key.key), False, meta.get("metrics") or {})
                continue
            record = divergence_of(st, key.key)
            if record is not None:
                if on_diverged:
                    on_diverged(key, record)
            else:
                out.append(key)
        return out

    pending = missing(keys)
    with Claims(st, claim_ttl) as claims:
        while pending:
            mine = set(claims.take(k.key for k in pending))
            ours = [k for k in pending if k.key in mine]
            todo = missing(ours)  # another trainer may have written some just before we claimed them
            claims.release(k.key for k in ours if k not in todo)
            for batch in _batches(todo, device):
                trained = []
                with slot() if slot else nullcontext():
                    results = _train(batch, dataset, device, engine)
                for key, run in zip(batch, results):
                    if isinstance(run, DivergenceError):
                        record_divergence(st, key, run)
                        if on_diverged:
                            on_diverged(key, divergence_of(st, key.key))
                    else:
                        trained.append(run)
                written = write_many(st, ((r.key.key, r.checkpoints, table_meta(r, dataset)) for r in trained))
                claims.release(k.key for k in batch)
                for run, uri in zip(trained, written):
                    found(run.key, uri, True, run.metrics)
            pending = missing(k for k in pending if k.key not in mine)
            if pending and not mine:
                time.sleep(poll)
    return [uris[k] for k in keys if k in uris]


def locate(store: str | Store, keys: Sequence[RunKey]) -> dict[str, list[str]]:
    """Weight-table URIs of ``keys`` per arch (runs that diverged have
    none); a ``WeightsimError`` if any other is missing."""
    st = open_store(store)
    missing = [k for k in keys if not st.exists(k.key) and divergence_of(st, k.key) is None]
    if missing:
        k = missing[0]
        raise WeightsimError(f"{len(missing)} of {len(keys)} runs are not in {st.uri} (e.g. {k.arch} "
                             f"{k.problem.name} seed {k.seed}): run 'weightsim train' with the same options first")
    by_arch: dict[str, list[str]] = {}
    for k in keys:
        if st.exists(k.key):
            by_arch.setdefault(k.arch, []).append(st.key_uri(k.key))
    return by_arch
