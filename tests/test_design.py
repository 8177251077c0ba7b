"""Designs that can reject: the floors of weightsim.design against what
hypothesis_training_testing does on perfectly separated features."""
import math

import numpy as np
import pytest

from weightsim.design import ALPHA, check_analysable
from weightsim.design import design_floor, smallest_seeds, split_sizes
from weightsim.errors import SpecError
from weightsim.htt import hypothesis_training_testing, split_per_problem


def _separated(problems: int, seeds: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(problems), seeds)
    return np.eye(problems)[y] * 10 + 0.01 * rng.standard_normal((len(y), problems)), y


def test_floors_of_small_designs():
    f = design_floor([4, 4], 199, ALPHA)  # 2 problems × 4 seeds: 2 held out each → 0.5^4
    assert f.binomial == pytest.approx(0.5 ** 4) and f.labellings == pytest.approx(math.comb(4, 2))
    assert not f.can_reject and f.smallest >= 0.0625
    f = design_floor([4, 4, 4], 199, ALPHA)  # 3 × 4: binomial fine, but 6!/(2!)^3 = 90 labellings
    assert f.binomial < ALPHA and f.labellings == pytest.approx(90) and not f.can_reject
    assert f.permutation == pytest.approx((1 + 199 / 90) / 200)
    assert design_floor([12] * 10, 199, ALPHA).smallest == pytest.approx(1 / 200)
    assert [split_sizes(n) for n in (2, 3, 4, 5)] == [(1, 1), (2, 1), (2, 2), (3, 2)]
    y = np.repeat(np.arange(3), [2, 3, 5])
    train, _ = split_per_problem(y, 0.6, 0)
    assert [int(train[y == c].sum()) for c in range(3)] == [split_sizes(n)[0] for n in (2, 3, 5)]
    assert smallest_seeds(3, 199, ALPHA) == 5 and smallest_seeds(70, 199, ALPHA) == 2
    assert smallest_seeds(10, 50, ALPHA) is None  # 1/(B+1) > α: no number of seeds helps


@pytest.mark.parametrize("problems,seeds", [(2, 4), (3, 4), (3, 3), (4, 2)])
def test_refused_designs_are_named_with_the_seeds_that_can(problems, seeds):
    with pytest.raises(SpecError) as err:
        check_analysable(problems, seeds, 200)
    need = smallest_seeds(problems, 200, ALPHA)
    assert f"--problems {problems} --seeds {seeds} cannot reject H0" in str(err.value)
    assert f"use at least --seeds {need} with {problems} problems" in str(err.value) and "\n" not in str(err.value)
    check_analysable(problems, need, 200)


def test_every_accepted_design_rejects_on_separated_features():
    """Over a grid of small designs: accepted ⇔ the floors allow it, and every
    accepted one rejects H0 on perfectly separated features (several splits)."""
    accepted = 0
    for problems in range(2, 9):
        for seeds in (2, 3, 4, 5, 6, 11):
            for b in (99, 199):
                if not design_floor([seeds] * problems, b, ALPHA).can_reject:
                    continue
                accepted += 1
                x, y = _separated(problems, seeds)
                for s in range(2):
                    r = hypothesis_training_testing(x, y, n_permutations=b, seed=s)
                    assert r.accuracy == 1.0 and r.significant(ALPHA), (problems, seeds, b, s, r.p_permutation)
    assert accepted >= 30


def _twins(problems: int, seeds: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A zoo whose problems share initializations (seed s of every problem
    starts from init s), with no problem signal: each run is its init plus
    a little noise. (X (N, 8), problems (N,), inits (N,))."""
    rng = np.random.default_rng(seed)
    y, init = np.repeat(np.arange(problems), seeds), np.tile(np.arange(seeds), problems)
    return rng.standard_normal((seeds, 8))[init] + 0.05 * rng.standard_normal((len(y), 8)), y, init


def test_shared_inits_stay_on_one_side_and_change_nothing_without_them():
    """Runs of a shared initialization are never split; the permutation null
    shuffles labels within them and the floor counts those labellings;
    initialization labels that share nothing change no number."""
    from weightsim.htt import init_blocks, split_floor

    x, y, init = _twins(4, 10)
    train, test = split_per_problem(y, 0.6, 0, init_blocks(init))
    assert all(len(set(train[init == g])) == 1 for g in range(10))  # no group straddles the split
    assert [int(train[y == c].sum()) for c in range(4)] == [6] * 4 and (train ^ test).all()
    grouped = hypothesis_training_testing(x, y, n_permutations=199, inits=init)
    free = hypothesis_training_testing(x, y, n_permutations=199)
    assert grouped.chance == 0.25 and grouped.accuracy == 0.25  # no problem signal: at chance
    assert free.accuracy <= 0.0625  # a held-out run looks like its twins of the other problems: below chance
    f = split_floor(y, inits=init, n_permutations=199)
    assert f.labellings == pytest.approx(24.0 ** 6) and f.binomial == pytest.approx(0.25 ** 16) and f.can_reject
    _, y3, init3 = _twins(3, 5)
    assert not split_floor(y3, inits=init3, n_permutations=199).can_reject  # 6^3 labellings, not 9!/(3!)^3
    assert design_floor([5] * 3, 199, ALPHA).labellings == pytest.approx(1680)
    xs, ys = _separated(4, 6)
    for s in range(3):  # every run its own initialization: the ungrouped result, bit for bit
        assert hypothesis_training_testing(xs, ys, n_permutations=99, seed=s, inits=np.arange(len(ys))) == \
            hypothesis_training_testing(xs, ys, n_permutations=99, seed=s)
    with pytest.raises(SpecError, match="no split keeps the shared inits together"):
        split_per_problem(np.array([0, 0, 1, 1]), 0.6, 0, np.ones(4, int))  # one init for all
