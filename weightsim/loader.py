"""Options from every source: a ``--config`` TOML file or a preset shipped
in ``weightsim/presets``, a template, flow parameters, the command line
(later sources win; ``None`` is unset) and the environment
(``$WEIGHTSIM_STORE``). ``load`` also checks what ``Options`` alone cannot:
arch names (made canonical), the dataset source (its credentials stay in
this process), checkpoints and the sweep name. Nothing here imports torch.
"""
from __future__ import annotations

import json
import os
import tomllib
from dataclasses import fields, replace

from .arch_names import canonical_name
from . import catalog
from .catalog import check_sweep_name
from .config import Options
from .datasets import check_source
from .errors import SpecError, SweepNotFound, WeightsimError
from .files import read_text
from .runs import parse_checkpoints
from .uris import remember

DEFAULT_STORE = "store"
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


def given(values: dict, config_file: str | None = None) -> dict:
    """The options a user gave: the config file's, then ``values``'
    (``None`` values are unset); unknown names refused."""
    merged: dict = {}
    if config_file:
        config_file = preset_path(config_file)
        text = read_text(config_file, "config file")
        try:
            merged.update(tomllib.loads(text))
        except (tomllib.TOMLDecodeError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
            raise WeightsimError(f"config file {config_file} is not valid TOML: {reason}") from None
    merged.update({k: v for k, v in values.items() if v is not None})
    unknown = sorted(set(merged) - {f.name for f in fields(Options)})
    if unknown:
        raise WeightsimError(f"unknown option(s) in {config_file or 'arguments'}: {', '.join(unknown)}")
    return merged


def load(values: dict, config_file: str | None = None) -> Options:
    """Defaults < config file < ``values``, checked whole: ``Options`` with
    canonical arch names, a known kind of dataset source, valid checkpoints
    and sweep name, and the store from the environment when none is given.
    A bad value is one ``WeightsimError``."""
    try:
        opts = Options(**given(values, config_file))
    except TypeError as exc:
        raise WeightsimError(f"bad option value: {exc}") from None
    canonical = tuple(canonical_name(a) for a in opts.archs)
    twice = sorted({c for c in canonical if canonical.count(c) > 1})
    if twice:
        aliases = [f"{'/'.join(n for n, c in zip(opts.archs, canonical) if c == t)} are all {t}" for t in twice]
        raise SpecError(f"--archs names the same arch more than once: {'; '.join(aliases)}")
    check_source(opts.dataset)
    parse_checkpoints(opts.checkpoints, opts.epochs)
    if opts.sweep:
        check_sweep_name(opts.sweep)
    return replace(opts, archs=canonical, dataset=remember(opts.dataset),  # credentials stay in this process
                   store=opts.store or os.environ.get("WEIGHTSIM_STORE") or DEFAULT_STORE)


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
    load(extra)
    return extra


# options that may differ between a sweep's training and its analysis
ANALYSIS_OPTIONS = ("permutations", "skip_bad", "device", "store", "runner", "seed_chunk", "slot_limit")


def with_record(given_: dict, recorded: bool = False) -> tuple[Options, dict | None]:
    """The options ``given_`` (``given``'s result) describe and the record
    of their sweep when ``sweep`` names one the store records (None
    otherwise). A recorded sweep brings its training options: ``given_`` may
    set only the analysis options beside its name, and a training option
    that differs from the record is refused. ``recorded``: the sweep must be
    recorded when ``given_`` names nothing but the sweep and analysis
    options (``analyze`` and ``report`` then read everything from the
    record)."""
    opts = load(given_)
    if not given_.get("sweep"):
        return opts, None
    try:
        record = catalog.load(opts.store, opts.sweep, given_.get("dataset"))
    except SweepNotFound:
        if recorded and not set(given_) - {"sweep", *ANALYSIS_OPTIONS}:
            raise
        return opts, None
    kept = {**record["options"], "sweep": record["name"]}
    merged = load({**kept, **{k: getattr(opts, k) for k in ANALYSIS_OPTIONS if k in given_ or k not in kept}})
    differ = [k for k, v in given_.items() if k not in (*ANALYSIS_OPTIONS, "sweep")
              and getattr(load({**kept, k: v}), k) != getattr(merged, k)]
    if differ:
        raise WeightsimError(f"sweep {record['name']} was recorded with other {', '.join(differ)}: leave "
                             f"{'them' if len(differ) > 1 else 'it'} out, or name another --sweep")
    return merged, record
