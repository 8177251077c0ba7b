import numpy as np
import pytest
import torch

from weightsim.errors import SpecError
from weightsim.htt import (_principal, cross_test, hypothesis_training_testing, retrieval,
                           split_per_problem)


def test_random_features_false_positive_rate_near_alpha():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 10)
    res = [hypothesis_training_testing(rng.standard_normal((40, 25)), y, n_permutations=99, seed=s)
           for s in range(100)]
    p_perm = np.array([r.p_permutation for r in res])
    p_binom = np.array([r.p_binomial for r in res])
    assert p_perm.min() >= 1 / 100
    assert np.mean(p_perm <= 0.05) <= 0.12 and np.mean(p_binom <= 0.05) <= 0.12
    assert np.mean(p_perm >= 0.05) >= 0.85


def test_separable_features_reach_the_minimum_p():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(5), 10)
    x = np.eye(5)[y] * 10 + rng.standard_normal((50, 5)) * 0.1
    x = np.concatenate([x, rng.standard_normal((50, 20))], 1)
    r = hypothesis_training_testing(x, y, n_permutations=199)
    assert r.accuracy == 1.0 and r.p_permutation == pytest.approx(1 / 200) and r.p_binomial < 1e-10
    assert r.chance == pytest.approx(0.2) and r.n_train + r.n_test == 50 and r.n_test == 20
    assert sum(map(sum, r.confusion)) == r.n_test and np.trace(np.array(r.confusion)) == r.n_test
    assert r.ci_low <= r.accuracy <= r.ci_high and r.significant()


def test_split_per_problem_and_train_only_standardization():
    y = np.repeat(np.arange(3), [5, 7, 2])
    train, test = split_per_problem(y, 0.6, 0)
    assert not (train & test).any() and (train | test).all()
    for c in range(3):
        assert train[y == c].sum() >= 1 and test[y == c].sum() >= 1
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((6, 4)), rng.standard_normal((3, 4))
    za1, _ = _principal(a, b)
    za2, _ = _principal(a, b * 100 + 5)
    assert torch.allclose(za1, za2)  # the test side never influences the fit


def test_retrieval_on_unseen_problems():
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(8), 8)
    x = rng.standard_normal((8, 30))[y] * 5 + rng.standard_normal((64, 30)) * 0.1
    r = retrieval(x, y)
    assert not set(r.train_problems) & set(r.test_problems)
    assert r.cmc[1] == 1.0 and r.mean_ap == pytest.approx(1.0) and r.chance_cmc[1] < 0.5 and r.chance_map < 0.5
    noise = retrieval(rng.standard_normal((64, 30)), y)
    assert noise.cmc[1] < 0.7


def test_cross_test_and_errors():
    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(3), 6)
    c = rng.standard_normal((3, 10)) * 4
    r = cross_test(c[y] + rng.standard_normal((18, 10)), y, c[y] + rng.standard_normal((18, 10)), y)
    assert r["accuracy"] > 0.9 and r["p_binomial"] < 0.01
    with pytest.raises(SpecError):
        cross_test(np.zeros((4, 3)), [0, 0, 1, 1], np.zeros((4, 2)), [0, 0, 1, 1])
    with pytest.raises(SpecError):
        hypothesis_training_testing(np.zeros((4, 3)), [0, 0, 0, 0])
    with pytest.raises(SpecError):
        hypothesis_training_testing(np.full((4, 3), np.nan), [0, 0, 1, 1])
    with pytest.raises(SpecError):
        hypothesis_training_testing(np.zeros((3, 3)), [0, 1, 1])
