"""Designs that can reject H0 (docs/method.md §6): the smallest p-values a
hypothesis-training-testing design can give, known before anything trains.

A design is its runs per problem and the number B of label permutations.
Its held-out accuracy is tested twice (``htt.hypothesis_training_testing``):
against chance with a binomial test, whose floor is chance^n_test, and
against B random relabellings of the training split. The permutation
p-value cannot go below 1/(B+1), and a relabelling that equals the
observed labelling ties it: a split with few distinct labellings (n_train!
/ Π n_c!) gives ties often. A design whose floors lie above α cannot
reject whatever the networks do, and is refused. Pure Python (no torch):
the command line checks it before anything heavy loads.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import SpecError

ALPHA = 0.01  # the level of every decision of the analysis (a p-value must reach it to reject H0)


def split_sizes(runs: int, train_fraction: float = 0.6) -> tuple[int, int]:
    """(training, held-out) runs of a problem with ``runs`` runs under
    ``htt.split_per_problem``."""
    k = min(max(1, int(round(train_fraction * runs))), runs - 1)
    return k, runs - k


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) ≤ k)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    return min(1.0, sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                                 + i * log_p + (n - i) * log_q) for i in range(k + 1)))


@dataclass(frozen=True)
class DesignFloor:
    """The smallest p-values a design (runs per problem, B permutations)
    can give, reached only when every held-out run is classified right.

    ``binomial``: chance^n_test (chance: the test side's majority rate).
    ``labellings``: distinct labellings of the training split, n_train! /
    Π n_c!; each of the B random relabellings equals the observed one, and
    ties it, with chance 1/labellings. ``permutation``: the permutation
    p-value expected then, (1 + B/labellings)/(B+1) ≥ 1/(B+1). ``power``:
    the chance that it reaches α, P(Binomial(B, 1/labellings) ≤ ⌊α(B+1)⌋ −
    1). The design can reject when ``binomial`` ≤ α and ``power`` ≥ 1 − α."""

    binomial: float
    labellings: float
    permutation: float
    power: float
    alpha: float

    @property
    def can_reject(self) -> bool:
        return self.binomial <= self.alpha and self.power >= 1 - self.alpha

    @property
    def smallest(self) -> float:
        """The smallest p-value the design can give (both tests must reject)."""
        return max(self.binomial, self.permutation)


def design_floor(runs_per_problem: Sequence[int], n_permutations: int, alpha: float,
                 train_fraction: float = 0.6) -> DesignFloor:
    """The ``DesignFloor`` of ``hypothesis_training_testing`` on problems
    with these numbers of runs (each at least 2)."""
    sizes = [split_sizes(int(n), train_fraction) for n in runs_per_problem]
    return split_floor([[a for a, _ in sizes]], [b for _, b in sizes], n_permutations, alpha)


def split_floor(train: Sequence[Sequence[int]], test: Sequence[int], n_permutations: int,
                alpha: float) -> DesignFloor:
    """The ``DesignFloor`` of one split: ``train`` per permutation block
    (training runs whose labels the null shuffles among themselves; one
    block unless runs share initializations, ``htt.split_blocks``) the
    number of runs of each problem, ``test`` per problem its held-out
    runs. Distinct labellings: Π over blocks of n_b! / Π_c n_bc!."""
    n_test = sum(test)
    binomial = (max(test) / n_test) ** n_test
    log_labellings = sum(math.lgamma(sum(b) + 1) - sum(math.lgamma(n + 1) for n in b) for b in train)
    labellings = math.exp(min(log_labellings, 700.0))
    hits = math.floor(alpha * (n_permutations + 1) + 1e-9) - 1  # relabellings that may tie, p-value still ≤ α
    power = _binomial_cdf(hits, n_permutations, 1 / labellings)
    return DesignFloor(binomial, labellings, (1 + n_permutations / labellings) / (n_permutations + 1), power, alpha)


def smallest_seeds(problems: int, n_permutations: int, alpha: float, limit: int = 1000) -> int | None:
    """The fewest runs per problem (the same for all ``problems``) whose
    design can reject at ``alpha`` with ``n_permutations``; None when none
    up to ``limit`` can (too few permutations)."""
    if math.floor(alpha * (n_permutations + 1) + 1e-9) < 1:  # 1/(B+1) > α: no number of seeds helps
        return None
    return next((s for s in range(2, limit + 1)
                 if design_floor([s] * problems, n_permutations, alpha).can_reject), None)


def check_analysable(problems: int, seeds: int, permutations: int, design: bool = True) -> None:
    """Refuse, before anything is trained, a sweep whose analysis could
    not reject H0 whatever the networks do: fewer than 2 problems or 2
    seeds (each problem needs runs to fit the test on and runs to test
    it on), too few permutations for a p-value to reach α (the smallest
    is 1/(B+1)), or, with ``design``, a design whose binomial or
    labelling floor lies above α (``design_problem``)."""
    if problems < 2:
        raise SpecError(f"--problems {problems}: the hypothesis test tells problems apart, so a sweep needs at "
                        f"least 2")
    if seeds < 2:
        raise SpecError(f"--seeds {seeds}: each problem needs at least 2 runs (some to fit the test, some to test it)")
    need = math.ceil(1 / ALPHA) - 1
    if permutations < need:
        raise SpecError(f"--permutations {permutations}: the smallest p-value is 1/(B+1) = "
                        f"{1 / (permutations + 1):.3g}, above α = {ALPHA:g}; use at least {need}")
    problem = design_problem(problems, seeds, permutations) if design else None
    if problem:
        raise SpecError(problem)


def design_problem(problems: int, seeds: int, permutations: int) -> str | None:
    """Why ``problems`` × ``seeds`` with ``permutations`` cannot reject H0
    at α whatever the networks do, in one line naming the fewest seeds per
    problem that can; None when it can."""
    floor = design_floor([seeds] * problems, permutations, ALPHA)
    if floor.can_reject:
        return None
    fewest = smallest_seeds(problems, permutations, ALPHA)
    need = (f"use at least --seeds {fewest} with {problems} problems" if fewest else
            f"no number of seeds can with {permutations} permutations")
    return (f"--problems {problems} --seeds {seeds} cannot reject H0 at α = {ALPHA:g}: its smallest p-value is "
            f"{floor.smallest:.3g} (binomial floor {floor.binomial:.3g}, {floor.labellings:.4g} distinct training "
            f"labellings for {permutations} permutations); {need}")
