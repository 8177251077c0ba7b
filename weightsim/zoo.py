"""Import a solution set trained elsewhere (a "zoo") into the store.

Inputs:

- a CSV manifest with columns ``file`` (a ``.safetensors`` file, relative to
  the manifest), ``problem`` (a problem name of the dataset: ``3v5``,
  ``2v7v9``, ``4vrest``), optionally ``seed`` (default: the file's position
  among its problem's files) and ``init`` (the network's weights at
  initialization, for every network or none);
- the arch spec as JSON (the fields of ``ArchSpec``);
- optionally a JSON mapping from the files' tensor names onto the project's
  parameter names (``archs`` documents them); a name mapped to ``null`` is
  left out (e.g. a counter buffer the project does not keep).

Files are read with ``safetensors`` (a JSON header and raw buffers: no
pickle, nothing executed). Each network becomes a weight table like a trained
run's: its weights as the checkpoint of epoch 1 and, with ``init``, its
initialization as epoch 0 (the untrained control; without it the analysis
has none, and says so). Its metadata holds ``imported``: the tensors'
checksum (part of the run id: an imported network never shares an id with
one trained here), the files' paths relative to the manifest and their
checksums, and the tensor names they were mapped from. Its test
accuracy is measured here on the problem's test split, which also shows a
wrong name mapping (chance-level accuracy). The sweep is recorded in the
catalog, so ``weightsim analyze --sweep NAME`` needs nothing else.

Every file is read and checked before anything is written: a bad manifest,
spec, mapping or tensor is one ``WeightsimError`` and leaves the store as it
was. Memory holds ``WRITE_BATCH`` networks at a time: the files are read once
to check them and once more to write them (a file changed in between is an
error, not a table of other weights).
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import __version__, catalog
from .archs import ArchSpec, build, canonical_name, finite, param_shapes
from .chunks import chunked
from .datasets import Dataset, load_dataset
from .errors import SpecError, WeightsimError
from .extras import require
from .files import read_file, read_json, read_text
from .problems import Problem
from .runs import RunKey
from .store import Store, open_store, thread_map
from .tables import write_many
from .training import accuracy
from .uris import remember

EPOCH = 1  # the checkpoint epoch an imported network is stored at
MAX_FILE_BYTES = 4 << 30
MAX_SEED = (1 << 63) - 1  # seeds are stored as int64
WRITE_BATCH = 64  # networks read, converted and written at a time


@dataclass(frozen=True)
class Member:
    """One network of the manifest."""

    file: str  # as written in the manifest (relative to it)
    path: str  # on this machine
    problem: Problem
    seed: int
    init: str | None = None  # the initialization's file, as written in the manifest
    init_path: str | None = None


def arch_name(spec: ArchSpec) -> str:
    """The arch name of a spec: its kind and the options that change its
    symmetries (``mlp-tanh``, ``cnn-bn``, ...)."""
    bn = spec.batchnorm and spec.kind == "cnn"  # resnet always has BatchNorm: no option
    tokens = [spec.kind] + (["tanh"] if spec.activation == "tanh" else []) + (["bn"] if bn else [])
    return canonical_name("-".join(tokens))


def read_spec(path: str) -> ArchSpec:
    """The arch spec of a JSON file (the fields of ``ArchSpec``)."""
    d = read_json(path, "spec")
    if not isinstance(d, dict):
        raise WeightsimError(f"spec {path} must be a JSON object with the fields of ArchSpec")
    try:
        return ArchSpec.from_dict(d)
    except (SpecError, TypeError, ValueError) as exc:
        raise WeightsimError(f"spec {path}: {exc}") from None


def read_names(path: str | None) -> dict[str, str | None]:
    """The tensor-name mapping of a JSON file (``{}`` without one)."""
    if path is None:
        return {}
    d = read_json(path, "name mapping")
    if not isinstance(d, dict) or not all(isinstance(v, str) or v is None for v in d.values()):
        raise WeightsimError(f"name mapping {path} must be a JSON object of tensor name → parameter name (or null)")
    return d


def read_manifest(path: str) -> list[Member]:
    """The manifest's networks, in its order; seeds default to the file's
    position among its problem's files."""
    text = read_text(path, "manifest")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
        columns = set(reader.fieldnames or [])
    except csv.Error as exc:
        raise WeightsimError(f"manifest {path} is not a readable CSV file ({exc})") from None
    twice = sorted({c for c in reader.fieldnames or [] if (reader.fieldnames or []).count(c) > 1})
    if twice:
        raise WeightsimError(f"manifest {path} has the column {twice[0]!r} more than once")
    if not {"file", "problem"} <= columns:
        raise WeightsimError(f"manifest {path} needs the columns file and problem (optional: seed); "
                             f"it has {', '.join(sorted(c for c in columns if c)) or 'none'}")
    if not rows:
        raise WeightsimError(f"manifest {path} lists no networks")
    base = os.path.dirname(os.path.abspath(path))
    members, counts, seen, files, orders = [], {}, {}, {}, {}
    for line, row in enumerate(rows, 2):
        where = f"manifest {path} line {line}"
        file, name = (row.get("file") or "").strip(), (row.get("problem") or "").strip()
        init = (row.get("init") or "").strip() or None
        if not file or not name:
            raise WeightsimError(f"{where}: file and problem must not be empty")
        if ("init" in columns) and init is None:
            raise WeightsimError(f"{where}: init is empty; give every network's initialization or drop the column")
        real = [_inside(base, f, where) for f in filter(None, (file, init))]
        for f, r in zip(filter(None, (file, init)), real):
            if r in files:
                raise WeightsimError(f"{where}: file {f!r} is listed twice (also line {files[r]}): one file "
                                     f"is one network")
            files[r] = line
        try:
            problem = Problem.parse(name)
        except WeightsimError as exc:
            raise WeightsimError(f"{where}: {exc}") from None
        same = orders.setdefault((frozenset(problem.classes), problem.rest), problem)
        if same != problem:
            raise WeightsimError(f"{where}: problem {problem.name} has the classes of problem {same.name} in "
                                 f"another order: name each problem one way")
        seed_text = (row.get("seed") or "").strip()
        if seed_text and not (seed_text.isascii() and seed_text.isdigit() and int(seed_text) <= MAX_SEED):
            raise WeightsimError(f"{where}: seed {seed_text[:40]!r} is not a whole number from 0 to {MAX_SEED}")
        seed = int(seed_text) if seed_text else counts.get(problem, 0)
        counts[problem] = counts.get(problem, 0) + 1
        if (problem, seed) in seen:
            raise WeightsimError(f"{where}: problem {problem.name} seed {seed} is listed twice (also line "
                                 f"{seen[problem, seed]})")
        seen[problem, seed] = line
        members.append(Member(file, real[0], problem, seed, init, real[1] if init else None))
    if len(counts) < 2 or min(counts.values()) < 2:
        few = min(counts, key=counts.get)
        raise WeightsimError(f"manifest {path}: the analysis needs at least 2 problems with at least 2 networks "
                             f"each (it has {len(counts)} problem(s); {few.name} has {counts[few]})")
    return members


def _inside(base: str, file: str, where: str) -> str:
    """The real path of a manifest's ``file``, refused unless it lies in the
    manifest's folder ``base`` (absolute paths, ``..`` and links that lead
    out are refused) and is a printable name."""
    if not file.isprintable():
        raise WeightsimError(f"{where}: file {file!r} holds control characters")
    if os.path.isabs(file) or ".." in file.replace("\\", "/").split("/"):
        raise WeightsimError(f"{where}: file {file!r} must be a path inside the manifest's folder")
    real, root = os.path.realpath(os.path.join(base, file)), os.path.realpath(base)
    if os.path.commonpath([real, root]) != root:
        raise WeightsimError(f"{where}: file {file!r} is a link that leads out of the manifest's folder")
    return real


def load_tensors(path: str, spec: ArchSpec, names: dict[str, str | None]) -> tuple[dict[str, torch.Tensor], str]:
    """A network's parameters, named as the project names them and checked
    against ``spec`` (names, shapes, finite values), and the sha256 of the
    file's bytes."""
    load_safetensors = require("safetensors.torch", "zoo", "weightsim import").load
    from safetensors import SafetensorError

    data = read_file(path, MAX_FILE_BYTES, "network file")
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError, TypeError) as exc:
        raise WeightsimError(f"{path} is not a safetensors file ({str(exc)[:200]})") from None
    expected = param_shapes(spec)
    source: dict[str, str] = {}  # parameter → the file's tensor name
    for name in sorted(tensors):
        target = names.get(name, name)
        if target is None:
            continue
        if target not in expected:
            raise WeightsimError(f"{path}: tensor {name!r} cannot be mapped onto a parameter of the spec "
                                 f"(give --names a mapping; parameters: {', '.join(expected)})")
        if target in source:
            raise WeightsimError(f"{path}: tensors {source[target]!r} and {name!r} both map onto {target!r}")
        source[target] = name
    missing = [k for k in expected if k not in source]
    if missing:
        raise WeightsimError(f"{path}: no tensor for parameter(s) {', '.join(missing)} of the spec")
    for target, shape in expected.items():  # in the spec's order: the first layer that does not fit is named
        if tuple(tensors[source[target]].shape) != shape:
            raise WeightsimError(f"{path}: tensor {source[target]!r} has shape {tuple(tensors[source[target]].shape)}, "
                                 f"the spec's {target!r} has {shape}")
    state = {k: tensors[source[k]] for k in expected}
    with torch.device("meta"):  # the dtype kind of each parameter (a BatchNorm counter is whole numbers)
        kinds = {k: v.is_floating_point() for k, v in build(spec).state_dict().items()}
    wrong = next((k for k in expected if state[k].is_floating_point() != kinds[k]), None)
    if wrong is not None:
        raise WeightsimError(f"{path}: tensor {source[wrong]!r} holds {state[wrong].dtype}, the spec's {wrong!r} "
                             f"holds {'floating-point' if kinds[wrong] else 'whole'} numbers")
    if not finite(state):
        raise WeightsimError(f"{path}: non-finite weights")
    return {k: v.contiguous() for k, v in state.items()}, hashlib.sha256(data).hexdigest()


def tensors_checksum(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the parameters in order: name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for name, t in state.items():
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_fit(spec: ArchSpec, problems: Sequence[Problem], dataset: Dataset) -> None:
    classes = {int(c) for c in dataset.classes}
    for p in problems:
        unknown = sorted(set(p.classes) - classes)
        if unknown:
            raise WeightsimError(f"problem {p.name}: dataset {dataset.name} has no class {unknown[0]}")
        if p.num_classes != spec.num_classes:
            raise WeightsimError(f"problem {p.name} has {p.num_classes} classes, the spec's output has "
                                 f"{spec.num_classes}")
    if int(np.prod(spec.input_shape)) != int(np.prod(dataset.shape)):
        raise WeightsimError(f"the spec's input shape {spec.input_shape} does not hold dataset {dataset.name}'s "
                             f"examples of shape {dataset.shape}")


def _test_accuracy(state: dict[str, torch.Tensor], spec: ArchSpec, x: np.ndarray, y: np.ndarray) -> float:
    model = build(spec)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return accuracy(model, torch.from_numpy(x.reshape(len(x), *spec.input_shape)), torch.from_numpy(y))


def import_zoo(store: str | Store, manifest: str, spec_path: str, dataset: str, sweep: str,
               names_path: str | None = None) -> dict:
    """Import the networks of ``manifest`` as sweep ``sweep`` of ``dataset``;
    returns ``{"sweep", "arch", "runs", "written", "record"}`` (written: the
    tables not already in the store)."""
    st = open_store(store)
    st.check()
    spec, names = read_spec(spec_path), read_names(names_path)
    members = read_manifest(manifest)
    data = load_dataset(dataset)
    problems = list(dict.fromkeys(m.problem for m in members))
    _check_fit(spec, problems, data)
    arch = arch_name(spec)
    tests = {p: p.select(data, "test") for p in problems}

    def network(m: Member) -> tuple[RunKey, dict[int, dict[str, torch.Tensor]], dict]:
        """(run key, checkpoints, table metadata) of one network."""
        state, file_sha = load_tensors(m.path, spec, names)
        init, init_sha = load_tensors(m.init_path, spec, names) if m.init_path else (None, None)
        checksum = tensors_checksum(state) if init is None else \
            hashlib.sha256(f"{tensors_checksum(init)}|{tensors_checksum(state)}".encode()).hexdigest()
        key = RunKey(data.name, data.fingerprint, m.problem, arch, spec, m.seed, None, checksum)
        meta = {"run_id": key.run_id, "seed": m.seed, "arch": arch, "spec": spec.to_dict(),
                "config": {"epochs": EPOCH},
                "metrics": {"test_accuracy": _test_accuracy(state, spec, *tests[m.problem]), "engine": "imported"},
                "device": None,
                "dataset": {"name": data.name, "fingerprint": data.fingerprint, "source": data.source},
                "problem": {"name": m.problem.name, **m.problem.to_dict()},
                "imported": {"sha256": key.imported, "file": m.file, "file_sha256": file_sha,
                             **({"init": m.init, "init_sha256": init_sha} if m.init else {}),
                             "manifest": os.path.basename(manifest),
                             "names": {k: v for k, v in names.items() if v is not None}},
                "library_version": __version__}
        return key, {**({0: init} if init is not None else {}), EPOCH: state}, meta

    keys = [k for batch in chunked(members, WRITE_BATCH)  # all checked first
            for k, _, _ in thread_map(network, batch, 4)]
    first: dict[str, Member] = {}
    for m, k in zip(members, keys):
        twin = first.setdefault(k.imported, m)
        if twin is not m:
            raise WeightsimError(f"{m.file} holds the same network as {twin.file}: each network must be listed once")
    kind = "ovr" if all(p.rest for p in problems) else "pairs" if spec.num_classes == 2 else "groups"
    options = {"dataset": remember(dataset), "archs": [arch], "problems": len(problems),
               "seeds": min(sum(m.problem == p for m in members) for p in problems), "epochs": EPOCH,
               "checkpoints": "final", "problem_kind": kind,
               "classes_per_problem": spec.num_classes if kind == "groups" else 2}
    provenance = {"manifest": os.path.basename(manifest), "spec": spec.to_dict()}
    catalog.save(st, sweep, options, data, keys, imported=provenance, dry_run=True)  # a name in use: refused now
    there = thread_map(lambda k: st.exists(k.key), keys, st.read_workers(16))
    todo = [m for m, t in zip(members, there) if not t]
    fresh = [k for k, t in zip(keys, there) if not t]
    for batch, first in zip(chunked(todo, WRITE_BATCH), chunked(fresh, WRITE_BATCH)):
        runs = thread_map(network, batch, 4)
        changed = [m.file for m, (k, _, _), old in zip(batch, runs, first) if k != old]
        if changed:
            raise WeightsimError(f"{changed[0]} changed while it was imported: import again")
        write_many(st, ((k.key, checkpoints, meta) for k, checkpoints, meta in runs))
    record = catalog.save(st, sweep, options, data, keys, imported=provenance)  # last: the sweep is whole
    return {"sweep": sweep, "arch": arch, "runs": len(keys), "written": len(todo), "record": record}
