"""Runs: one trained network = (dataset, problem, arch, seed, training config).

A run's id is a content hash of exactly those inputs (the dataset by its
content fingerprint; the training config includes the numeric precision), so
the same run is never trained twice, a changed dataset file yields new runs,
and a bf16 run is never taken for an fp32 one. Choices that agree only to
float rounding (engine, device, seeds trained together) are not in the id:
each table records them. Its weight table lives at
``weights/dataset=<name>/arch=<arch>/problem=<problem>/<run_id>.parquet``
(hive-style partitions, queryable with pyarrow.dataset or DuckDB).

A network imported from elsewhere (``weightsim.zoo``) has no training config:
its id hashes the dataset, problem, spec, seed and the checksum of its
tensors instead, marked ``imported``, so it never shares an id with a run
trained here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from .config import PRECISIONS
from .digest import json_digest
from .errors import SpecError
from .problems import Problem
from .store import check_name

if TYPE_CHECKING:  # torch loads with archs: options are checked without it
    from .archs import ArchSpec



@dataclass(frozen=True)
class TrainConfig:
    """SGD with momentum; the learning rate is multiplied by ``gamma`` at each
    epoch listed in ``milestones``; recurrent archs clip the gradient norm.
    ``checkpoints`` lists the epochs whose weights are kept: the
    initialization (epoch 0) and the final epoch always are."""

    epochs: int = 10
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 32
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    checkpoints: tuple[int, ...] = (0,)
    grad_clip: float | None = None  # max global gradient norm per step (None: no clipping)
    precision: str = "fp32"  # fp32, tf32 (CUDA matmuls) or bf16 (autocast forward pass)

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        cps = sorted({int(c) for c in self.checkpoints} | {0, int(self.epochs)})
        object.__setattr__(self, "checkpoints", tuple(cps))
        if self.epochs < 1 or self.batch_size < 1:
            raise SpecError(f"epochs and batch size must be >= 1 (got {self.epochs}, {self.batch_size})")
        if not (self.lr > 0 and 0 <= self.momentum < 1 and self.weight_decay >= 0 and self.gamma > 0):
            raise SpecError("need lr > 0, 0 <= momentum < 1, weight_decay >= 0, gamma > 0")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise SpecError(f"grad_clip must be > 0 (got {self.grad_clip})")
        if cps[0] < 0 or cps[-1] > self.epochs:
            raise SpecError(f"checkpoints must lie in 0..{self.epochs} (got {list(self.checkpoints)})")
        if self.precision not in PRECISIONS:
            raise SpecError(f"precision must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]} (got {self.precision!r})")

    def lr_at(self, epoch: int) -> float:
        """Learning rate used during epoch ``epoch`` (0-based)."""
        return self.lr * self.gamma ** sum(epoch >= m for m in self.milestones)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["milestones"], d["checkpoints"] = list(self.milestones), list(self.checkpoints)
        return d


def parse_checkpoints(text: str, epochs: int) -> tuple[int, ...]:
    """``"0,10,final"`` → ``(0, 10, epochs)``."""
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        if item == "final":
            out.append(epochs)
        elif item.isdigit():
            out.append(int(item))
        else:
            raise SpecError(f"bad checkpoint {item!r}: use epoch numbers and 'final'")
    return tuple(out)


@dataclass(frozen=True)
class RunKey:
    """Everything that determines a run's weights: its training config, or
    for an imported network (``config`` None) the checksum of its tensors."""

    dataset: str
    fingerprint: str
    problem: Problem
    arch: str
    spec: ArchSpec
    seed: int
    config: TrainConfig | None = field(default_factory=TrainConfig)
    imported: str | None = None  # sha256 of an imported network's tensors

    def __post_init__(self) -> None:
        if (self.config is None) == (self.imported is None):
            raise SpecError("a run is either trained here (a training config) or imported (a tensor checksum)")
        check_name(self.dataset, "dataset name")
        check_name(self.arch, "arch name")
        check_name(f"problem={self.problem.name}", "problem folder")
        if self.seed < 0:
            raise SpecError(f"seed must be >= 0 (got {self.seed})")

    @property
    def run_id(self) -> str:
        if self.imported is not None:
            payload = {"dataset": self.fingerprint, "problem": self.problem.to_dict(), "spec": self.spec.to_dict(),
                       "seed": self.seed, "imported": self.imported}
            return json_digest(payload, 20)
        config = self.config.to_dict()
        if config["precision"] == "fp32":  # fp32 runs keep the ids they had before precision joined the key
            del config["precision"]
        problem = self.problem.to_dict() if self.problem.rest else list(self.problem.classes)  # pairs keep old ids
        payload = {"dataset": self.fingerprint, "problem": problem, "spec": self.spec.to_dict(),
                   "seed": self.seed, "config": config}
        return json_digest(payload, 20)

    @classmethod
    def from_meta(cls, meta: dict) -> "RunKey":
        """The run a weight table's metadata describes; ``SpecError`` if it
        describes none. A table is bound to its run when this key's
        ``run_id`` and ``key`` are the ones it is read for."""
        from .archs import ArchSpec

        try:
            imported = meta["imported"]["sha256"] if "imported" in meta else None
            if imported is not None and not isinstance(imported, str):
                raise TypeError("the imported tensors' checksum is not text")
            return cls(meta["dataset"]["name"], meta["dataset"]["fingerprint"],
                       Problem.from_dict(meta["problem"]), meta["arch"], ArchSpec.from_dict(meta["spec"]),
                       int(meta["seed"]), None if imported else TrainConfig(**meta["config"]), imported)
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"metadata describes no run ({type(exc).__name__}: {exc})") from None

    def mismatch(self, meta: dict) -> str | None:
        """Why a table with metadata ``meta`` is not this run's (None if it is)."""
        try:
            other = RunKey.from_meta(meta)
        except SpecError as exc:
            return str(exc)
        if other != self or meta.get("run_id") != self.run_id:
            return (f"holds run {meta.get('run_id')} ({other.dataset}, {other.arch}, {other.problem.name}, seed "
                    f"{other.seed}), not run {self.run_id} ({self.dataset}, {self.arch}, {self.problem.name}, "
                    f"seed {self.seed})")
        return None

    @property
    def key(self) -> str:
        """Store key of the run's weight table."""
        return (f"weights/dataset={self.dataset}/arch={self.arch}/problem={self.problem.name}/"
                f"{self.run_id}.parquet")
