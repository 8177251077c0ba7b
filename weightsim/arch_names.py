"""Arch names: the names a user gives an arch (``mlp``, ``cnn-bn``,
``rnn-tanh``, …) and their one canonical form. Free of torch, so a command
refuses an unknown arch before torch loads; ``weightsim.archs`` turns a
name into a spec."""
from __future__ import annotations

from .errors import SpecError

KINDS = ("mlp", "cnn", "rnn", "gru", "resmlp", "resnet", "transformer")
RESIDUAL = ("resmlp", "resnet", "transformer")  # the families with a residual stream (see streams.py)
_OPTIONS = ("tanh", "relu", "bn", "paper")  # in the order a canonical name lists them


def canonical_name(name: str) -> str:
    """The one name of an arch: options in a fixed order, the default
    activation dropped (``mlp-relu`` → ``mlp``, ``gru-tanh`` → ``gru``,
    ``cnn-paper-bn`` → ``cnn-bn-paper``); contradictions (``mlp-tanh-relu``,
    ``gru-relu``) and unknown options are ``SpecError``s."""
    kind, *tokens = str(name).strip().split("-")
    if kind not in KINDS:
        raise SpecError(f"unknown arch {name!r}: use {', '.join(KINDS)} (optionally -tanh, -relu, -bn, -paper)")
    unknown = set(tokens) - set(_OPTIONS)
    if unknown or len(tokens) != len(set(tokens)):
        raise SpecError(f"unknown arch {name!r}: options are -tanh, -relu, -bn, -paper, each at most once")
    if {"tanh", "relu"} <= set(tokens):
        raise SpecError(f"arch {name!r} asks for two activations")
    if kind == "gru" and "relu" in tokens:
        raise SpecError("gru has no relu variant")
    if kind in RESIDUAL and "tanh" in tokens:
        raise SpecError(f"{kind} has no tanh variant")
    if "bn" in tokens and kind != "cnn":
        raise SpecError(f"arch {name!r}: -bn (BatchNorm) exists for cnn only")
    default = "tanh" if kind == "gru" else "relu"
    return "-".join([kind, *(t for t in _OPTIONS if t in tokens and t != default)])
