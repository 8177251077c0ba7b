"""Function-based representations: invariance of the activation Grams to the
hidden-unit symmetries, logits equal to the PyTorch modules', debiased CKA
and Procrustes against their textbook definitions, the matrix form of the
within/between test, and the paired comparison of two representations."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_chain import SETTINGS, outputs, random_net, rel, specs

from weightsim import activations, chain, htt, probes
from weightsim.similarity import cosine_matrix, within_between, within_between_matrix


@SETTINGS
@given(spec=specs(), seed=st.integers(0, 10_000), sym_seed=st.integers(0, 10_000))
def test_activation_features_are_invariant_and_logits_are_the_modules(spec, seed, sym_seed):
    sd = random_net(spec, seed)
    probes = torch.randn(9, *spec.input_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    both = chain.stack([sd, chain.random_symmetry(sd, spec, sym_seed)], spec)
    f = activations.activation_features(both, spec, probes)
    assert f.shape == (2, spec.depth * 9 * 10 // 2 + 9 * spec.num_classes)
    assert rel(f[1], f[0]) < 1e-9
    _, logits = activations.hidden_activations(chain.stack([sd], spec), spec, probes)
    assert rel(logits[0], outputs(spec, sd, probes)) < 1e-9


def _hsic_u(k: np.ndarray, l: np.ndarray) -> float:  # Song et al. 2012, eq. 5, written out
    n = len(k)
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ k @ l @ one) / (n * (n - 3))


def _procrustes(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(0), y - y.mean(0)
    x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
    return float(np.arccos(min(1.0, np.linalg.svd(x.T @ y, compute_uv=False).sum())))


def test_cka_and_procrustes_from_grams_match_their_definitions_and_invariances():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 7))
    q = np.linalg.qr(rng.standard_normal((7, 7)))[0]
    acts = [x, 3.0 * x @ q, rng.standard_normal((20, 5)), rng.standard_normal((20, 30))]  # widths differ
    k = torch.tensor(np.stack([a @ a.T for a in acts]))[:, None]
    cka, dist = activations.debiased_cka(k), activations.procrustes_distance(k)
    for i in range(4):
        for j in range(4):
            ref = _hsic_u(acts[i] @ acts[i].T, acts[j] @ acts[j].T) / np.sqrt(
                _hsic_u(acts[i] @ acts[i].T, acts[i] @ acts[i].T) * _hsic_u(acts[j] @ acts[j].T, acts[j] @ acts[j].T))
            assert cka[i, j] == pytest.approx(ref, abs=1e-10)
            assert dist[i, j] == pytest.approx(_procrustes(acts[i], acts[j]) if i != j else 0.0, abs=1e-6)
    assert cka[0, 1] == pytest.approx(1.0) and dist[0, 1] == pytest.approx(0.0, abs=1e-6)  # rotation and scale
    assert abs(cka[0, 2]) < 0.5 and dist[0, 2] > 0.5


def test_within_between_matrix_agrees_with_the_feature_form():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(5), 8)
    x = rng.standard_normal((40, 12)) + 0.7 * rng.standard_normal((5, 12))[y]
    a, b = within_between(x, y, 199, seed=3), within_between_matrix(cosine_matrix(x), y, 199, seed=3)
    assert (b.within_mean, b.between_mean) == pytest.approx((a.within_mean, a.between_mean))
    assert b.p_value == pytest.approx(1 / 200) and b.n_within_pairs == a.n_within_pairs
    d = within_between_matrix(2 - 2 * cosine_matrix(x), y, 199, seed=3, distance=True)  # a distance: lower within
    assert d.within_mean < d.between_mean and d.effect_size > 0 and d.p_value == pytest.approx(1 / 200)
    null = within_between_matrix(cosine_matrix(rng.standard_normal((40, 12))), y, 199, seed=3)
    assert null.p_value > 0.01


def test_paired_comparison_names_the_stronger_representation():
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(4), 30)
    strong = rng.standard_normal((120, 20)) + 3 * rng.standard_normal((4, 20))[y]
    noise = rng.standard_normal((120, 20))
    r = htt.paired_comparison(strong, noise, y)
    assert r["accuracy_a"] > 0.9 > r["accuracy_b"] and r["only_a"] > r["only_b"] and r["p_mcnemar"] < 1e-4
    same = htt.paired_comparison(strong, strong, y)
    assert same["only_a"] == same["only_b"] == 0 and same["p_mcnemar"] == 1.0
    assert r["accuracy_a"] == htt.hypothesis_training_testing(strong, y, n_permutations=0).accuracy


def test_probe_inputs_take_the_classes_in_turn():
    y = np.array([0] * 10 + [1] * 3 + [2] * 7)
    idx = probes.probe_indices(y, 9, seed=0)
    assert list(y[idx]) == [0, 1, 2] * 3 and len(set(idx)) == 9
    assert list(probes.probe_indices(y, 9, seed=0)) == list(idx)
    assert sorted(y[probes.probe_indices(y, 14)]) == [0] * 6 + [1] * 3 + [2] * 5


def test_probe_count_is_read_back_from_the_representation_length():
    for depth, p, classes in [(1, 64, 2), (2, 15, 3), (3, 1, 10), (2, 64, 10)]:
        assert activations.probe_count(depth * p * (p + 1) // 2 + p * classes, depth, classes) == p
    with pytest.raises(Exception, match="no activation representation"):
        activations.probe_count(1000, 2, 3)
