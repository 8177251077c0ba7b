"""Sweep options shared by the CLI, the flows and config files.

A ``--config FILE.toml`` may set any option (same names, ``archs`` as a list
or a comma-separated string); options given on the command line win.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace

from .errors import SpecError, WeightsimError
from .files import read_text
from .uris import remember

DEFAULT_STORE = "store"
LIMITS = {"problems": 100_000, "seeds": 1_000_000, "epochs": 100_000, "batch_size": 1 << 20,
          "permutations": 1_000_000, "seed_chunk": 1_000_000}  # largest values that make sense
_TYPE_WORDS = {"int": "a whole number", "float | None": "a finite number", "bool": "true or false",
               "str": "text"}


ALPHA = 0.01  # the level of every decision of the analysis (a p-value must reach it to reject H0)
GPU_SLOTS = "weightsim-gpu"  # the Prefect global concurrency limit CUDA trainings take a slot of by default
_LIMIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")
_POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class Options:
    dataset: str = "digits"
    archs: tuple[str, ...] = ("mlp", "cnn", "rnn", "gru")
    problems: int = 10
    seeds: int = 12
    epochs: int = 10
    store: str = ""
    device: str = "auto"
    checkpoints: str = "0,final"
    lr: float | None = None
    batch_size: int = 32
    classes_per_problem: int = 2
    problem_kind: str = "pairs"
    permutations: int = 200
    skip_bad: bool = False
    engine: str = "batched"
    precision: str = "fp32"
    sweep: str = ""
    runner: str = "local"
    seed_chunk: int = 16
    slot_limit: str = ""

    def __post_init__(self) -> None:
        # imported here: the command line builds its help and refuses bad options without torch
        from .arch_names import canonical_name
        from .datasets import check_source
        from .problems import PROBLEM_KINDS
        from .runs import PRECISIONS, parse_checkpoints
        from .catalog import check_sweep_name

        self._check_types()
        archs = self.archs.split(",") if isinstance(self.archs, str) else self.archs
        if not all(isinstance(a, str) for a in archs):
            raise SpecError(f"--archs must be arch names (got {list(archs)!r})")
        named = [a.strip() for a in archs if a.strip()]
        canonical = tuple(canonical_name(a) for a in named)
        twice = sorted({c for c in canonical if canonical.count(c) > 1})
        if twice:
            aliases = [f"{'/'.join(n for n, c in zip(named, canonical) if c == t)} are all {t}" for t in twice]
            raise SpecError(f"--archs names the same arch more than once: {'; '.join(aliases)}")
        object.__setattr__(self, "archs", canonical)
        object.__setattr__(self, "dataset", remember(self.dataset))  # credentials stay in this process
        check_source(self.dataset)
        object.__setattr__(self, "store", self.store or os.environ.get("WEIGHTSIM_STORE") or DEFAULT_STORE)
        for name, high in LIMITS.items():
            if not 1 <= getattr(self, name) <= high:
                raise SpecError(f"--{name.replace('_', '-')} must be between 1 and {high:,} "
                                f"(got {getattr(self, name)})")
        if self.problem_kind not in PROBLEM_KINDS:
            raise SpecError(f"--problem-kind must be pairs, groups or ovr (got {self.problem_kind!r})")
        if self.problem_kind != "groups" and self.classes_per_problem != 2:
            raise SpecError(f"--classes-per-problem {self.classes_per_problem} draws groups of classes: add "
                            f"--problem-kind groups ({self.problem_kind} problems have 2 classes)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise SpecError(f"--device must be auto, cpu or cuda (got {self.device!r})")
        if self.precision not in PRECISIONS:
            raise SpecError(f"--precision must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]} "
                            f"(got {self.precision!r})")
        if self.precision != "fp32" and self.engine != "batched":
            raise SpecError(f"--precision {self.precision} needs --engine batched (the loop is the fp32 reference)")
        if self.engine not in ("batched", "loop"):
            raise SpecError(f"--engine must be batched or loop (got {self.engine!r})")
        if self.lr is not None and not self.lr > 0:
            raise SpecError(f"--lr must be > 0 (got {self.lr})")
        if not self.archs:
            raise SpecError("--archs is empty")
        parse_checkpoints(self.checkpoints, self.epochs)
        if self.sweep:
            check_sweep_name(self.sweep)
        if self.slot_limit not in ("", "none"):
            check_limit_name(self.slot_limit, "--slot-limit")
        pool = self.runner.removeprefix("pool:") if self.runner.startswith("pool:") else None
        if pool is not None and not _POOL_NAME.fullmatch(pool):
            raise SpecError(f"--runner pool:NAME: {pool!r} is not a work pool name (letters, digits and . _ -, "
                            f"at most 100 characters)")
        if self.runner not in ("local", "dask") and pool is None and not self.runner.startswith(("tcp://", "tls://")):
            raise SpecError(f"unknown runner {self.runner!r}: use local, dask, pool:NAME (a Prefect work pool) or a "
                            f"Dask scheduler address tcp://host:port")

    def named(self, fingerprint: str) -> "Options":
        """These options with ``sweep`` set: ``--sweep``, or a readable name
        derived from what defines the sweep's runs,
        ``<archs>-p<problems>-s<seeds>-e<epochs>-<hash>``, where the hash
        covers the dataset's ``fingerprint`` and every other option that
        changes a run (so a changed dataset file gets a sweep of its own)."""
        if self.sweep:
            return self
        rest = {k: getattr(self, k) for k in ("lr", "batch_size", "checkpoints", "classes_per_problem", "precision")}
        if self.problem_kind == "ovr":  # pairs and groups keep the names they had before problem kinds
            rest["problem_kind"] = self.problem_kind
        rest["fingerprint"] = fingerprint
        digest = hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:6]
        return replace(self, sweep=f"{'+'.join(self.archs)}-p{self.problems}-s{self.seeds}-e{self.epochs}-{digest}")

    def _check_types(self) -> None:
        """Every value has its option's type, wherever it came from (command
        line, config file, flow parameters): whole numbers for counts (not
        floats or booleans), finite numbers, true/false for switches, text
        for names."""
        for f in fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            if kind == "int":
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif kind == "float | None":
                ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                       and math.isfinite(value))
            elif kind == "bool":
                ok = isinstance(value, bool)
            elif kind == "str":
                ok = isinstance(value, str)
            else:  # archs: a comma-separated string or a list of names (checked with the names)
                ok = isinstance(value, (str, list, tuple))
            if not ok:
                raise SpecError(f"option {f.name} must be {_TYPE_WORDS.get(kind, 'a list of arch names')} "
                                f"(got {value!r})")

    @classmethod
    def defaults(cls) -> dict:
        """Every option's default: the one place the CLI, the flows and
        config files take them from."""
        return {f.name: f.default for f in fields(cls)}

    @property
    def checkpoint_epochs(self) -> tuple[int, ...]:
        from .runs import parse_checkpoints

        return parse_checkpoints(self.checkpoints, self.epochs)

    def resolved_device(self) -> str:
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            raise WeightsimError("--device cuda: no CUDA device is available here")
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def training_slots(self, device: str) -> str | None:
        """The Prefect global concurrency limit every training batch holds one
        slot of while it trains: ``slot_limit``, else ``$WEIGHTSIM_SLOT_LIMIT``
        (set per GPU machine or work pool), else ``weightsim-gpu`` on CUDA and
        none on the CPU; ``none`` turns it off. A worker that owns its GPU
        (``weightsim worker``: one run at a time) needs none by default."""
        from .placement import DEVICE_ENV

        owned = device == "cuda" and os.environ.get(DEVICE_ENV)
        name = (self.slot_limit or os.environ.get("WEIGHTSIM_SLOT_LIMIT")
                or (GPU_SLOTS if device == "cuda" and not owned else ""))
        return None if name in ("", "none") else check_limit_name(name, "the slot limit")

    def engine_options(self):
        """The batched engine's options (None: the per-seed loop)."""
        from .engine import EngineOptions

        return EngineOptions(precision=self.precision) if self.engine == "batched" else None

    def train_config(self, arch: str):
        """The training config of one arch under these options."""
        from .sweep import default_config

        return default_config(arch, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                              checkpoints=self.checkpoint_epochs, precision=self.precision)

    def plan(self, archs: Sequence[str] | None = None, problems: Sequence[str] | None = None,
             seeds: Sequence[int] | None = None):
        """(dataset, run keys) of the sweep, optionally restricted to some
        archs, problems (by name) and seeds."""
        from .datasets import load_dataset
        from .problems import Problem, make_problems, one_vs_rest
        from .sweep import plan

        dataset = load_dataset(self.dataset)
        if problems is not None:
            chosen = [Problem.parse(n) for n in problems]
        elif self.problem_kind == "ovr":
            chosen = one_vs_rest(dataset, self.problems)
        else:
            chosen = make_problems(dataset, self.problems, k=self.classes_per_problem)
        keys = plan(dataset, archs or self.archs, chosen, range(self.seeds) if seeds is None else seeds,
                    self.train_config)
        return dataset, keys

    def fitted_to(self, classes: int) -> tuple["Options", list[str]]:
        """These options adapted to a dataset of ``classes`` classes where it
        cannot hold them (fewer classes than a problem needs, fewer problems
        possible than asked); the adapted options and one sentence per change."""
        from .problems import max_problems

        k, problems, changes = self.classes_per_problem, self.problems, []
        if k > classes:
            changes.append(f"classes per problem {k} → {classes}: the dataset has {classes} classes")
            k = classes
        limit = max_problems(classes, k, self.problem_kind)
        if problems > limit:
            what = "one-vs-rest problem(s)" if self.problem_kind == "ovr" else f"problem(s) of {k} classes"
            changes.append(f"problems {problems} → {limit}: a {classes}-class dataset holds {limit} {what}")
            problems = limit
        return replace(self, classes_per_problem=k, problems=problems), changes

    def check_analysable(self, design: bool = True) -> None:
        """Refuse, before anything is trained, a sweep whose analysis could
        not reject H0 whatever the networks do: fewer than 2 problems or 2
        seeds (each problem needs runs to fit the test on and runs to test
        it on), too few permutations for a p-value to reach α (the smallest
        is 1/(B+1)), or, with ``design``, a design whose binomial or
        labelling floor lies above α (``design_problem``)."""
        if self.problems < 2:
            raise SpecError(f"--problems {self.problems}: the hypothesis test tells problems apart, so a sweep "
                            f"needs at least 2")
        if self.seeds < 2:
            raise SpecError(f"--seeds {self.seeds}: each problem needs at least 2 runs (some to fit the test, "
                            f"some to test it)")
        need = math.ceil(1 / ALPHA) - 1
        if self.permutations < need:
            raise SpecError(f"--permutations {self.permutations}: the smallest p-value is 1/(B+1) = "
                            f"{1 / (self.permutations + 1):.3g}, above α = {ALPHA:g}; use at least {need}")
        problem = self.design_problem() if design else None
        if problem:
            raise SpecError(problem)

    def design_problem(self) -> str | None:
        """Why the sweep's design (problems × seeds, permutations) cannot
        reject H0 at α whatever the networks do (``weightsim.design``), in
        one line naming the fewest seeds per problem that can; None when
        it can."""
        from .design import design_floor, smallest_seeds

        floor = design_floor([self.seeds] * self.problems, self.permutations, ALPHA)
        if floor.can_reject:
            return None
        fewest = smallest_seeds(self.problems, self.permutations, ALPHA)
        need = (f"use at least --seeds {fewest} with {self.problems} problems" if fewest else
                f"no number of seeds can with {self.permutations} permutations")
        return (f"--problems {self.problems} --seeds {self.seeds} cannot reject H0 at α = {ALPHA:g}: its smallest "
                f"p-value is {floor.smallest:.3g} (binomial floor {floor.binomial:.3g}, {floor.labellings:.4g} "
                f"distinct training labellings for {self.permutations} permutations); {need}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["archs"] = list(self.archs)
        return d


def check_limit_name(name: str, what: str) -> str:
    """A concurrency-limit name: letters, digits, ``._:-``, at most 100."""
    if not _LIMIT_NAME.fullmatch(name) or name == "none":
        raise SpecError(f"{what} {name!r}: a limit name is letters, digits and . _ : - (at most 100 characters)")
    return name


PRESETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")


def preset_path(config: str) -> str:
    """A ``--config`` value: a TOML file, or the name of a preset shipped in
    ``weightsim/presets`` (e.g. ``digits-ovr``)."""
    if os.sep not in config and not config.endswith(".toml") and not os.path.exists(config):
        preset = os.path.join(PRESETS, f"{config}.toml")
        if os.path.isfile(preset):
            return preset
        names = sorted(n[:-5] for n in os.listdir(PRESETS) if n.endswith(".toml"))
        raise WeightsimError(f"no config file or preset named {config!r} (presets: {', '.join(names)})")
    return config


def given_options(cli: dict, config_file: str | None = None) -> dict:
    """The options a user gave: the config file's, then the command line's
    (``None`` values on the command line are unset); unknown names refused."""
    merged: dict = {}
    if config_file:
        config_file = preset_path(config_file)
        text = read_text(config_file, "config file")
        try:
            merged.update(tomllib.loads(text))
        except (tomllib.TOMLDecodeError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
            raise WeightsimError(f"config file {config_file} is not valid TOML: {reason}") from None
    merged.update({k: v for k, v in cli.items() if v is not None})
    unknown = sorted(set(merged) - {f.name for f in fields(Options)})
    if unknown:
        raise WeightsimError(f"unknown option(s) in {config_file or 'arguments'}: {', '.join(unknown)}")
    return merged


def parse_overrides(text: dict | str) -> dict:
    """Pipeline options as a JSON object or its text (``'{"seeds": 4}'``; empty: none),
    checked by name and value; ``dataset`` is not one (the announced dataset
    is the sweep's)."""
    try:
        extra = text if isinstance(text, dict) else json.loads(text) if text.strip() else {}
    except ValueError:
        raise WeightsimError(f"overrides {text[:80]!r} is not a JSON object of pipeline parameters") from None
    if not isinstance(extra, dict):
        raise WeightsimError(f"overrides must be a JSON object of pipeline parameters (got {type(extra).__name__})")
    if "dataset" in extra:
        raise WeightsimError("overrides cannot set dataset: the announced dataset is the sweep's")
    make_options(given_options(extra))
    return extra


def make_options(values: dict) -> Options:
    """``Options(**values)``, type errors as one ``WeightsimError``."""
    try:
        return Options(**values)
    except (TypeError, ValueError) as exc:
        raise WeightsimError(f"bad option value: {exc}") from None


def load_options(cli: dict, config_file: str | None = None) -> Options:
    """Merge defaults < config file < CLI (``None`` values on the CLI are unset)."""
    return make_options(given_options(cli, config_file))
