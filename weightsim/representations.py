"""Representations of runs: computed chunk by chunk from the weight tables,
cached in the store per run, assembled into one ``(N, D)`` matrix per name.

Names (``similarity`` documents each one's invariances): ``chain`` (chain
features of the final weights, all depths; ``chain_depth<d>`` is its block of
depth ``d``), ``untrained`` (chain features of the epoch-0 checkpoint: the
control), ``cka``, ``activation`` (what the network computes: activation
Grams and logits on the dataset's probe inputs, ``weightsim.activations``;
only when the plan names the dataset), ``canonical``, ``scale``, ``matched``
(every run matched to the solution set's reference run) and ``raw``. The chain features of the
other checkpoint epochs (``epoch_matrices``) are cached one file per run and
epoch, so analysing them costs those epochs' features only.

Bounded size: a chain depth block longer than ``Settings.max_block`` and
flattened weights longer than ``Settings.max_flat`` are count-sketched
(``sketch``: a fixed, seeded signed hashing of the coordinates, the same for
every run).
Inner products are kept in expectation, and invariance is kept exactly: the
sketch is one linear map applied after the invariant features. Computation
runs in float64 on chunks of runs (``chunk_size``): as many runs as fit an
*estimate* of ``CHUNK_BYTES`` of working memory (``_WORK_COPIES`` copies of a
run's parameters and, with the ``activation`` representation,
``_ACTIVATION_COPIES`` copies of its activations on the probe inputs), at
most 256 and at least one. The matrices and the cache hold float32. Peak
memory is the (N, D) float32 matrices plus one chunk's working memory; that
is near ``CHUNK_BYTES`` only as far as the estimate holds: a run whose own
estimate exceeds it is computed alone, over the budget, and temporaries the
estimate leaves out (e.g. of the forward pass on the probes) come on top.

Cache (``featurecache``):
``features/dataset=<d>/arch=<a>/problem=<p>/<run_id>-<key>.parquet`` beside
the weight tables (one row per name, the float32 values as bytes). The
``key`` hashes the table's content checksum, the settings, the reference run
and ``CODE_VERSION`` (a digest of the source of ``CODE_MODULES``, the code
that computes the numbers): a rerun reads what it has; a retrained table, other
settings or another reference miss and are recomputed, for those runs only.
A cache file is used only after its own checksum and the run, table checksum
and key it was written for match what is asked.
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch

from . import activations, archs, chain, featurecache, forward, similarity, sketch, streams
from .archs import RESIDUAL, ArchSpec, param_shapes
from .chunks import chunked
from .codedigest import code_digest
from .digest import json_digest
from .errors import SpecError, TableError, WeightsimError
from .runs import RunKey
from .store import Store, open_store, thread_map
from .tables import read_meta, read_run_epochs

# the modules whose code computes a representation's numbers: their source is part of every cache key
# the code that computes the cached numbers; the probe inputs' module by name (it is the dataset layer's, loaded
# only when activations are asked for)
CODE_MODULES = (activations, archs, chain, featurecache, forward, "weightsim.probes", similarity, sketch, streams,
                sys.modules[__name__])
CODE_VERSION = code_digest(*CODE_MODULES)
NAMES = ("chain", "untrained", "cka", "activation", "canonical", "scale", "matched", "raw")
# one sentence per representation, for readers of a report
MEANING = {
    "chain": "chain features: per hidden layer, the Gram matrix of the layer's linear map from the input (weights "
             "scale-normalized, chained from the input), and the output map; exactly invariant to the hidden-unit "
             "permutations and scalings/sign flips, with no sorting",
    "chain_depthN": "the chain features of depth N alone: where in the network the problem is written",
    "untrained": "chain features of the same runs at initialization (epoch 0): a leak control, at chance unless the "
                 "initialization carries the problem",
    "cka": "the chain Gram matrices centered, as linear CKA centers them: compares the layers' input geometry up to "
           "a shift",
    "activation": "what the network computes, not its weights: per hidden layer the Gram matrix of its "
                  "activations over a fixed probe set from the test split (the same inputs for every run), and its "
                  "logits; invariant to the hidden-unit symmetries (computed after scale normalization)",
    "canonical": "the weights brought to canonical form by the chain normalization rule (scaled, then units sorted "
                 "layer by layer), flattened",
    "scale": "the weights scale-normalized (ReLU) or sign-normalized (tanh, GRU) but not reordered: removes one "
             "symmetry of two",
    "matched": "the weights after weight matching: every network's units permuted to best fit one reference run",
    "raw": "the flattened weights as trained, no symmetry removed: the baseline",
}
CHUNK_BYTES = 512 << 20  # float64 working memory per chunk of runs (estimate)
_WORK_COPIES = 16  # working copies of a network's parameters while its representations are computed
_ACTIVATION_COPIES = 4  # of its activations on the probes (activations, normalized, Grams' operands)
READ_BATCH = 256  # cache files read before they are copied into the matrices


@dataclass(frozen=True)
class Settings:
    """What a representation depends on besides the weights."""

    max_axis: int = 512  # chain: input axes longer than this are projected ...
    proj_dim: int = 256  # ... to this many dimensions
    max_block: int = 4096  # chain depth blocks longer than this are sketched to it
    max_flat: int = 16384  # flattened weights longer than this are sketched to it
    probes: int = 64  # probe inputs of the activation representation

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SolutionSet:
    """The representations of the runs of one (dataset, arch)."""

    arch: str
    spec: ArchSpec
    runs: pd.DataFrame  # run_id, problem, seed, test_accuracy, uri; ordered by (problem, seed)
    matrices: dict[str, np.ndarray]  # name → (N, D) float32
    depths: list[int]  # sizes of the depth blocks of ``chain``, in order
    bad: list[str] = field(default_factory=list)  # tables left out (skip_bad)
    computed: int = 0  # runs whose representations were computed now (the rest came from the cache)
    training: dict = field(default_factory=dict)  # the runs' training config (of the first run), engine, device
    probes: int = 0  # probe inputs behind ``activation`` (0: none; fewer than asked in a small test split)

    def names(self) -> list[str]:
        """``chain``, ``chain_depth1``…, then the other ``NAMES`` it holds."""
        return ["chain", *(f"chain_depth{d}" for d in range(1, len(self.depths) + 1)),
                *(n for n in NAMES[1:] if n in self.matrices)]

    def get(self, name: str) -> np.ndarray:
        """(N, D) float32 matrix of representation ``name``."""
        if name.startswith("chain_depth"):
            d = int(name.removeprefix("chain_depth"))
            lo = sum(self.depths[:d - 1])
            return self.matrices["chain"][:, lo:lo + self.depths[d - 1]]
        return self.matrices[name]


@dataclass(frozen=True)
class Plan:
    """What ``load`` will read: the runs' table metadata, in (problem, seed)
    order, the cache key of each, and the tables that failed."""

    arch: str
    spec: ArchSpec
    metas: list[dict]
    uris: list[str]
    keys: list[str]  # cache store keys, aligned with ``uris``
    reference: str  # URI of the run every network is matched to
    settings: Settings
    bad: list[TableError]
    data: str | None = None  # the dataset (name or URI) the probe inputs come from
    data_error: str | None = None  # why the dataset asked for is not used (unreadable here, another version)

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        """The representations of its runs: ``NAMES``, without ``untrained``
        when the runs have no epoch-0 checkpoint (imported networks), without
        ``activation`` when the plan names no dataset."""
        drop = {*(() if 0 in checkpoint_epochs(self) else ("untrained",)), *(() if self.data else ("activation",)),
                *(("canonical",) if self.spec.kind in RESIDUAL else ())}
        return tuple(n for n in NAMES if n not in drop)

    def probe_inputs(self, device: str = "cpu") -> torch.Tensor | None:
        """(P, *input_shape) float64 probe inputs (None without ``data``)."""
        if not self.data:
            return None
        from .probes import probe_inputs  # the dataset layer, only when activations are asked for

        x = probe_inputs(self.data, self.metas[0]["dataset"]["fingerprint"], self.settings.probes)
        return torch.from_numpy(x).to(device, torch.float64).reshape(len(x), *self.spec.input_shape)


# --- computing -------------------------------------------------------------------

def _chain(s: chain.Stack, spec: ArchSpec, settings: Settings, centered: tuple[bool, ...] = (False,)
           ) -> list[list[torch.Tensor]]:
    """Per flag of ``centered``: the sketched chain feature blocks (one
    chain computation for all)."""
    m = chain.chain_matrices(s, spec, settings.max_axis, settings.proj_dim)
    return [[sketch.sketch(b, settings.max_block, f"chain-{d}")
             for d, b in enumerate(chain.feature_blocks(m, spec, c))]
            for c in centered]


def compute_stack(final: chain.Stack, init: chain.Stack | None, spec: ArchSpec, reference: chain.Stack,
                  settings: Settings = Settings(), probes: torch.Tensor | None = None
                  ) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Every representation of a stack of networks (final and epoch-0
    weights; no ``untrained`` without the latter, no ``activation`` without
    ``probes``), float64 on the stacks' device: (name → (N, D), chain depth
    block sizes). ``reference``: the one network ``matched`` aligns to."""
    blocks, centered = _chain(final, spec, settings, (False, True))
    out = {"chain": torch.cat(blocks, 1), "cka": torch.cat(centered, 1),
           "scale": similarity.scale_features(final, spec), "matched": similarity.matched_features(final, spec, reference),
           "raw": similarity.raw_features(final, spec)}
    if spec.kind not in RESIDUAL:  # the residual families have no canonical form
        out["canonical"] = similarity.canonical_features(final, spec)
    for name in ("canonical", "scale", "matched", "raw"):
        if name in out:
            out[name] = sketch.sketch(out[name], settings.max_flat, "flat")
    if init is not None:
        out["untrained"] = torch.cat(_chain(init, spec, settings)[0], 1)
    if probes is not None:
        out["activation"] = activations.activation_features(final, spec, probes)
    return out, [b.shape[1] for b in blocks]


@functools.lru_cache(maxsize=64)
def activation_values(spec: ArchSpec) -> int:
    """Values the network's modules output for one input (every layer's
    activations; shapes only, computed on the meta device)."""
    with torch.device("meta"):
        model = archs.build(spec)
    total = 0

    def count(_module, _inputs, out) -> None:
        nonlocal total
        total += sum(t.numel() for t in (out if isinstance(out, tuple) else (out,)) if torch.is_tensor(t))

    for m in model.modules():
        if m is not model:
            m.register_forward_hook(count)
    model(torch.empty(1, *spec.input_shape, device="meta"))
    return total


def chunk_size(spec: ArchSpec, probes: int = 0) -> int:
    """Runs per chunk: ``CHUNK_BYTES`` of float64 working memory, 1..256:
    the working copies of each run's parameters and, with ``probes`` probe
    inputs, those of its activations on them."""
    params = sum(int(np.prod(s)) for s in param_shapes(spec).values())
    per_run = _WORK_COPIES * 8 * params + _ACTIVATION_COPIES * 8 * probes * activation_values(spec)
    return int(min(256, max(1, CHUNK_BYTES // per_run)))


# --- planning, computing and loading a solution set --------------------------------

def _meta(st: Store, uri: str) -> dict | TableError:
    """A table's metadata, if the table is bound to its path: the run its
    metadata describes (``RunKey.from_meta``) has this run id and this key."""
    try:
        meta = read_meta(uri, st)
        key = RunKey.from_meta(meta)
    except TableError as exc:
        return exc
    except SpecError as exc:
        return TableError(uri, str(exc))
    if key.run_id != meta.get("run_id") or st.key_of(uri) != key.key:
        return TableError(uri, f"is not bound to its path: it holds run {meta.get('run_id')} ({key.dataset}, "
                               f"{key.arch}, {key.problem.name}, seed {key.seed}), stored at {key.key}")
    return meta


def plan(store: str | Store, arch: str, uris: Sequence[str], settings: Settings = Settings(),
         reference: str | None = None, data: str | None = None) -> Plan:
    """Read the metadata of every table (footers only) and the cache keys.
    ``reference`` (default: the first readable run in (problem, seed)
    order) is the run that ``matched`` aligns every network to; ``data``:
    the runs' dataset (name or URI), for the ``activation`` representation.
    A dataset that cannot be read here, or is not the runs' version, leaves
    ``activation`` out and says why in ``data_error``."""
    st = open_store(store)
    found = thread_map(lambda u: _meta(st, u), uris, st.read_workers(16))
    bad = [m for m in found if isinstance(m, TableError)]
    good = [(u, m) for u, m in zip(uris, found) if not isinstance(m, TableError)]
    if not good:
        raise WeightsimError(f"no readable runs for arch {arch}" + (f" ({bad[0]})" if bad else ""))
    try:
        specs = {ArchSpec.from_dict(m["spec"]) for _, m in good}
    except (KeyError, TypeError, WeightsimError) as exc:
        raise WeightsimError(f"runs of arch {arch} have a bad spec: {exc}") from None
    if len(specs) > 1:
        raise WeightsimError(f"runs of arch {arch} have {len(specs)} different specs; analyze one spec at a time")
    good.sort(key=lambda um: (um[1]["problem"]["name"], um[1]["seed"]))
    ref_uri, ref_meta = good[0] if reference is None else (reference, dict(good).get(reference) or _meta(st, reference))
    if isinstance(ref_meta, TableError):
        raise WeightsimError(f"the reference run of {arch} is unreadable: {ref_meta}")
    keys = [featurecache.store_key(st, u, m, featurecache.cache_key(CODE_VERSION, m, settings.to_dict(), ref_meta))
            for u, m in good]
    data_error = None
    if data:
        from .probes import probe_inputs  # the dataset layer, only when activations are asked for

        try:
            probe_inputs(data, good[0][1]["dataset"]["fingerprint"], settings.probes)
        except WeightsimError as exc:
            data, data_error = None, str(exc)
    return Plan(arch, specs.pop(), [m for _, m in good], [u for u, _ in good], keys, ref_uri, settings, bad, data,
                data_error)


def reference_of(store: str | Store, arch: str, uris: Sequence[str]) -> str:
    """The default reference run of a solution set (see ``plan``), so that
    chunks planned apart agree on it."""
    return plan(store, arch, uris).reference


def _compute_chunk(st: Store, p: Plan, idx: Sequence[int], reference: chain.Stack,
                   device: str) -> tuple[list[int], dict[str, torch.Tensor], list[int], list[TableError]]:
    """Representations of runs ``idx`` of the plan: (the indices that read
    correctly, their representations as float32 on the CPU, chain depth block
    sizes, the tables that failed); the cache files are written."""
    epochs = [None, 0] if "untrained" in p.names else [None]
    read = thread_map(lambda i: _read_epochs(st, p.uris[i], epochs), idx, st.read_workers(8))
    ok = [i for i, r in zip(idx, read) if not isinstance(r, TableError)]
    failed = [r for r in read if isinstance(r, TableError)]
    if not ok:
        return [], {}, [], failed
    runs = [r for r in read if not isinstance(r, TableError)]
    final = chain.stack([r[0].state_dict for r in runs], p.spec, device)
    init = chain.stack([r[1].state_dict for r in runs], p.spec, device) if len(epochs) == 2 else None
    reps, depths = compute_stack(final, init, p.spec, {k: v.to(device) for k, v in reference.items()}, p.settings,
                                 p.probe_inputs(device))
    reps = {k: v.to("cpu", torch.float32) for k, v in reps.items()}
    st.put_many((p.keys[i], featurecache.encode(CODE_VERSION, {n: v[j].numpy() for n, v in reps.items()}, depths,
                                                p.metas[i], p.keys[i], p.settings.to_dict()))
                for j, i in enumerate(ok))
    return ok, reps, depths, failed


def _read_epochs(st: Store, uri: str, epochs: Sequence[int | None]):
    try:
        return read_run_epochs(uri, epochs, st)
    except TableError as exc:
        return exc


def _reference(st: Store, p: Plan, device: str = "cpu") -> chain.Stack:
    return chain.stack([read_run_epochs(p.reference, [None], st)[0].state_dict], p.spec, device)


def _computed(st: Store, p: Plan, todo: Sequence[int], device: str,
              on_chunk: Callable[[int, int], None] | None) -> Iterator[tuple]:
    """``_compute_chunk`` over ``todo``, a chunk at a time (reporting
    progress): yields (chunk, its ``_compute_chunk`` result)."""
    if not todo:
        return
    reference = _reference(st, p, device)
    done = 0
    for chunk in chunked(todo, chunk_size(p.spec, p.settings.probes if p.data else 0)):
        yield chunk, _compute_chunk(st, p, chunk, reference, device)
        done += len(chunk)
        if on_chunk:
            on_chunk(done, len(todo))


def compute(store: str | Store, p: Plan, device: str = "cpu",
            on_chunk: Callable[[int, int], None] | None = None) -> dict:
    """Compute and cache the representations of the plan's runs that have no
    cache file yet; ``{"computed", "cached", "bad"}`` (bad: table URIs)."""
    st = open_store(store)
    exists = thread_map(st.exists, p.keys, st.read_workers(16))
    todo = [i for i, e in enumerate(exists) if not e]
    failed = [e for _, result in _computed(st, p, todo, device, on_chunk) for e in result[3]]
    return {"computed": len(todo) - len(failed), "cached": len(p.keys) - len(todo),
            "bad": [e.uri for e in [*p.bad, *failed]]}


def bad_tables_error(errors: Sequence[TableError], what: str) -> WeightsimError:
    return WeightsimError(f"{len(errors)} bad weight table(s) for {what} (use --skip-bad to leave them out): "
                          + "; ".join(str(e) for e in errors))


def load(store: str | Store, p: Plan, skip_bad: bool = False, device: str = "cpu",
         on_chunk: Callable[[int, int], None] | None = None, names: Sequence[str] | None = None) -> SolutionSet:
    """The solution set's representation matrices (``names`` of them, by
    default all of the plan's):
    cached runs are read, the others computed chunk by chunk (and cached).
    Bad tables raise one ``WeightsimError`` naming them all, or are left out
    and listed in ``.bad`` with ``skip_bad``."""
    st = open_store(store)
    if p.bad and not skip_bad:
        raise bad_tables_error(p.bad, p.arch)
    n = len(p.uris)
    expected = p.names
    names = expected if names is None else names
    matrices: dict[str, np.ndarray] = {}
    depths: list[int] = []
    good = np.ones(n, bool)
    bad = list(p.bad)

    def fill(rows: Sequence[int], reps: dict[str, np.ndarray] | dict[str, torch.Tensor]) -> None:
        for name in names:
            v = reps[name]
            if name not in matrices:
                matrices[name] = np.zeros((n, v.shape[-1]), np.float32)
            matrices[name][rows] = np.asarray(v)

    todo = []
    for batch in chunked(range(n), READ_BATCH):  # cached runs straight into the matrices, a batch at a time
        for i, c in zip(batch, thread_map(lambda i: featurecache.read_cached(CODE_VERSION, st, p.keys[i], p.metas[i], expected), batch,
                                          st.read_workers(16))):
            if c is None:
                todo.append(i)
            else:
                fill([i], {k: v[None] for k, v in c[0].items()})
                depths = c[1]
    for chunk, (ok, reps, depths_now, failed) in _computed(st, p, todo, device, on_chunk):
        if ok:
            fill(ok, reps)
            depths = depths_now
        good[[i for i in chunk if i not in ok]] = False
        bad += failed
    if len(bad) > len(p.bad) and not skip_bad:
        raise bad_tables_error(bad[len(p.bad):], p.arch)
    if not good.any():
        raise WeightsimError(f"no readable runs for arch {p.arch}")
    if not good.all():
        matrices = {k: v[good] for k, v in matrices.items()}
    metas = [m for m, g in zip(p.metas, good) if g]
    runs = pd.DataFrame({"run_id": [m["run_id"] for m in metas], "problem": [m["problem"]["name"] for m in metas],
                         "seed": [int(m["seed"]) for m in metas],
                         "test_accuracy": [float(m.get("metrics", {}).get("test_accuracy", np.nan)) for m in metas],
                         "uri": [u for u, g in zip(p.uris, good) if g]})
    first = metas[0]
    training = {**first.get("config", {}), "engine": first.get("metrics", {}).get("engine"),
                "device": first.get("device")}
    return SolutionSet(p.arch, p.spec, runs, matrices, depths, [e.uri for e in bad], len(todo), training,
                       activations.probe_count(matrices["activation"].shape[1], p.spec.depth, p.spec.num_classes)
                       if "activation" in matrices else 0)


# --- the other checkpoint epochs ------------------------------------------------------

def checkpoint_epochs(p: Plan) -> list[int]:
    """The checkpoint epochs that every run of the plan holds, in order."""
    return sorted(set.intersection(*(set(map(int, m.get("checkpoints") or [])) for m in p.metas)))


def _epoch_key(st: Store, p: Plan, i: int, epoch: int) -> str:
    m = p.metas[i]
    digest = json_digest({"code": CODE_VERSION, "run_id": m["run_id"], "table": m["checksum"],
                          "settings": p.settings.to_dict(), "epoch": epoch}, 24)
    return featurecache.store_key(st, p.uris[i], m, f"e{epoch}-{digest}")


def _epoch_features(st: Store, p: Plan, keys: dict[int, list[str]], rows: Sequence[int], device: str) -> None:
    """Chain features of epochs ``keys`` of runs ``rows`` from one read of
    each table, written to the cache."""
    epochs = list(keys)
    read = thread_map(lambda i: read_run_epochs(p.uris[i], epochs, st), rows, st.read_workers(8))
    for j, epoch in enumerate(epochs):
        blocks = _chain(chain.stack([r[j].state_dict for r in read], p.spec, device), p.spec, p.settings)[0]
        x = torch.cat(blocks, 1).to("cpu", torch.float32)
        depths = [b.shape[1] for b in blocks]
        st.put_many((keys[epoch][i], featurecache.encode(CODE_VERSION, {"chain": x[k].numpy()}, depths, p.metas[i], keys[epoch][i],
                                                     p.settings.to_dict()))
                    for k, i in enumerate(rows))


def epoch_matrices(store: str | Store, p: Plan, epochs: Sequence[int], rows: Sequence[int], device: str = "cpu",
                   on_chunk: Callable[[int, int], None] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(epoch, ``(len(rows), D)`` float32 chain features) for each of
    ``epochs``, one epoch in memory at a time; ``rows``: indices of the
    plan's runs (e.g. those a ``SolutionSet`` kept). Runs missing a cache
    file are computed first, all their missing epochs from one table read."""
    st = open_store(store)
    keys = {e: {i: _epoch_key(st, p, i, e) for i in rows} for e in epochs}
    pairs = [(e, i) for e in epochs for i in rows]
    exists = dict(zip(pairs, thread_map(lambda ei: st.exists(keys[ei[0]][ei[1]]), pairs, st.read_workers(16))))
    todo = [i for i in rows if not all(exists[e, i] for e in epochs)]
    done = 0
    for chunk in chunked(todo, chunk_size(p.spec)):
        _epoch_features(st, p, keys, chunk, device)
        done += len(chunk)
        if on_chunk:
            on_chunk(done, len(todo))

    def cached(epoch: int) -> list:
        return thread_map(lambda i: featurecache.read_cached(CODE_VERSION, st, keys[epoch][i], p.metas[i], ("chain",)), rows,
                          st.read_workers(16))

    for epoch in epochs:
        found = cached(epoch)
        damaged = [i for i, c in zip(rows, found) if c is None]
        if damaged:  # a cache file damaged since it was written: recomputed from its table
            _epoch_features(st, p, {epoch: keys[epoch]}, damaged, device)
            found = cached(epoch)
        yield epoch, np.stack([c[0]["chain"] for c in found])
