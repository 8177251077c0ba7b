"""Sweep options: one frozen value and its schema.

Each field of ``Options`` declares its default, its help text and what it
allows (``choices``, an upper bound ``high`` for counts, which are ≥ 1): the
one place the command line's flags and help, the flows' parameters (names,
types, allowed values, descriptions in Prefect's form) and config files take
them from. Validation is declarative and structural (types, ranges,
choices, the rules between fields) and imports nothing but ``errors``, so a
refused value answers before anything heavy loads. What needs other
modules (arch names, dataset sources, checkpoints, sweep names) and every
source of options (command line, TOML file, preset, template, environment)
is ``weightsim.loader``'s.
"""
from __future__ import annotations

import math
import re
from dataclasses import Field, asdict, dataclass, field, fields
from typing import Any

from .errors import SpecError

PROBLEM_KINDS = ("pairs", "groups", "ovr")
PRECISIONS = ("fp32", "tf32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
ENGINES = ("batched", "loop")
_LIMIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")
_POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_TYPE_WORDS = {"int": "a whole number", "float | None": "a finite number", "bool": "true or false",
               "str": "text", "tuple[str, ...]": "a list of arch names"}


def option(default: Any, help: str, *, choices: tuple[str, ...] = (), high: int | None = None) -> Any:
    """A field of ``Options``: its default, its help (one sentence, without
    the default), the values it allows (``choices``) and, for a count, its
    largest sensible value (``high``; counts are at least 1)."""
    return field(default=default, metadata={"help": help, "choices": choices, "high": high})


@dataclass(frozen=True)
class Options:
    """The options of a sweep and of the commands that train, analyze and
    report it. ``archs`` given as text is split at commas."""

    dataset: str = option("digits", "built-in name (digits, mnist1d, synthetic[:opts]) or a path/URI of a dataset "
                          "file")
    archs: tuple[str, ...] = option(("mlp", "cnn", "rnn", "gru"), "comma-separated arch names, e.g. "
                                    "mlp,cnn,rnn-tanh,gru")
    problems: int = option(10, "number of problems (class pairs or groups; one per class for ovr)", high=100_000)
    seeds: int = option(12, "seeds per problem", high=1_000_000)
    epochs: int = option(10, "training epochs", high=100_000)
    store: str = option("", "store root: a local folder or s3://bucket/prefix (default $WEIGHTSIM_STORE, else "
                        "./store)")
    device: str = option("auto", "where training and analysis run (auto: CUDA when there is a GPU)",
                         choices=DEVICES)
    checkpoints: str = option("0,final", "epochs to keep besides 0 and the final one, e.g. 0,10,final")
    lr: float | None = option(None, "learning rate (default: per arch)")
    batch_size: int = option(32, "mini-batch size", high=1 << 20)
    classes_per_problem: int = option(2, "classes per problem of problem kind groups", high=100_000)
    problem_kind: str = option("pairs", "pairs (class pairs), groups (classes-per-problem classes each) or ovr "
                               "(one class against all others, balanced; one problem per class)",
                               choices=PROBLEM_KINDS)
    permutations: int = option(200, "label permutations per hypothesis test (at least 99, so that a p-value can "
                               "reach 0.01)", high=1_000_000)
    skip_bad: bool = option(False, "analyze: leave unreadable weight tables out (listed in the report) instead of "
                            "failing")
    engine: str = option("batched", "training engine: batched (all seeds of a chunk at once) or loop (the "
                         "per-seed reference loop)", choices=ENGINES)
    precision: str = option("fp32", "fp32, tf32 (CUDA: TF32 matmuls) or bf16 (bfloat16 autocast of the forward "
                            "pass); batched engine only; part of the run id", choices=PRECISIONS)
    sweep: str = option("", "the sweep's name (default: derived from the options, e.g. mlp-p10-s12-e10-<hash>)")
    runner: str = option("local", "where training chunks run: local (this process), dask (a local cluster), a Dask "
                         "scheduler tcp://host:port, or pool:NAME (flow runs on the workers of Prefect work pool "
                         "NAME, see weightsim worker)")
    seed_chunk: int = option(16, "seeds per training chunk", high=1_000_000)
    slot_limit: str = option("", "Prefect global concurrency limit each training batch holds a slot of (default "
                             "$WEIGHTSIM_SLOT_LIMIT, else weightsim-gpu on CUDA, none on the CPU; none: off)")

    def __post_init__(self) -> None:
        archs = self.archs.split(",") if isinstance(self.archs, str) else self.archs
        if isinstance(archs, (list, tuple)):  # names stripped, blanks dropped (text, TOML lists, flow parameters)
            object.__setattr__(self, "archs", tuple(a.strip() if isinstance(a, str) else a for a in archs
                                                    if not isinstance(a, str) or a.strip()))
        for f in fields(self):
            _check_field(f, getattr(self, f.name))
        self._check_rules()

    def _check_rules(self) -> None:
        """The rules between fields, and the forms of names."""
        if not self.archs:
            raise SpecError("--archs is empty")
        if self.problem_kind != "groups" and self.classes_per_problem != 2:
            raise SpecError(f"--classes-per-problem {self.classes_per_problem} draws groups of classes: add "
                            f"--problem-kind groups ({self.problem_kind} problems have 2 classes)")
        if self.precision != "fp32" and self.engine != "batched":
            raise SpecError(f"--precision {self.precision} needs --engine batched (the loop is the fp32 reference)")
        if self.lr is not None and not self.lr > 0:
            raise SpecError(f"--lr must be > 0 (got {self.lr})")
        if self.slot_limit not in ("", "none"):
            check_limit_name(self.slot_limit, "--slot-limit")
        pool = self.runner.removeprefix("pool:") if self.runner.startswith("pool:") else None
        if pool is not None and not _POOL_NAME.fullmatch(pool):
            raise SpecError(f"--runner pool:NAME: {pool!r} is not a work pool name (letters, digits and . _ -, "
                            f"at most 100 characters)")
        if self.runner not in ("local", "dask") and pool is None and not self.runner.startswith(("tcp://", "tls://")):
            raise SpecError(f"unknown runner {self.runner!r}: use local, dask, pool:NAME (a Prefect work pool) or a "
                            f"Dask scheduler address tcp://host:port")

    @classmethod
    def defaults(cls) -> dict:
        """Every option's default."""
        return {f.name: f.default for f in fields(cls)}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["archs"] = list(self.archs)
        return d


def schema() -> list[tuple[str, str, Any, str, tuple[str, ...]]]:
    """(name, type, default, help, choices) of every option, in order."""
    return [(f.name, str(f.type), f.default, f.metadata["help"], f.metadata["choices"]) for f in fields(Options)]


def _check_field(f: Field, value: Any) -> None:
    """``value`` has the field's type (whole numbers for counts, not floats
    or booleans; finite numbers; true/false for switches; text for names),
    lies in its range and is one of its choices."""
    kind, flag = str(f.type), "--" + f.name.replace("_", "-")
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float | None":
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "str":
        ok = isinstance(value, str)
    else:  # archs, split into names above
        ok = isinstance(value, tuple)
        if ok and not all(isinstance(a, str) for a in value):
            raise SpecError(f"--archs must be arch names (got {list(value)!r})")
    if not ok:
        raise SpecError(f"option {f.name} must be {_TYPE_WORDS[kind]} (got {value!r})")
    high, choices = f.metadata["high"], f.metadata["choices"]
    if high is not None and not 1 <= value <= high:
        raise SpecError(f"{flag} must be between 1 and {high:,} (got {value})")
    if choices and value not in choices:
        raise SpecError(f"{flag} must be {', '.join(choices[:-1])} or {choices[-1]} (got {value!r})")


def check_limit_name(name: str, what: str) -> str:
    """A concurrency-limit name: letters, digits, ``._:-``, at most 100."""
    if not _LIMIT_NAME.fullmatch(name) or name == "none":
        raise SpecError(f"{what} {name!r}: a limit name is letters, digits and . _ : - (at most 100 characters)")
    return name
