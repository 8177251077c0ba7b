import numpy as np
import pytest
import torch

from weightsim import chain, query, similarity, tables
from weightsim.archs import ArchSpec, build
from flows.cli import main


@pytest.mark.parametrize("spec", [ArchSpec("mlp", (6,), (8, 5), 3), ArchSpec("cnn", (2, 6, 6), (6, 4), 2),
                                  ArchSpec("cnn", (1, 8, 8), (5, 4), 2, batchnorm=True),
                                  ArchSpec("rnn", (4, 3), (5,), 2), ArchSpec("gru", (4, 3), (5, 4), 2, "tanh")])
def test_weight_matching_recovers_planted_permutation(spec):
    torch.manual_seed(0)
    a = {k: v.double() for k, v in build(spec).state_dict().items()}
    s = chain.stack([a], spec)
    g = torch.Generator().manual_seed(1)
    for l, h in enumerate(spec.widths):
        s = chain.transform_layer(s, spec, l, torch.randperm(h, generator=g)[None], torch.ones(1, h, dtype=torch.float64))
    b = chain.unstack(s, a)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    back = similarity.weight_matching(a, b, spec)
    ref = chain.unstack(chain._prepare(chain.stack([a], spec), spec), a)
    for k in a:
        assert torch.equal(back[k], ref[k]), k


def test_cosine_and_cka_are_plain_linear_algebra():
    x = np.random.default_rng(0).standard_normal((5, 7))
    s = similarity.cosine_matrix(x)
    np.testing.assert_allclose(np.diag(s), 1.0)
    np.testing.assert_allclose(s, s.T)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(s, xn @ xn.T)
    # linear CKA of two networks' chain matrices equals the cosine of their centred Gram features
    spec = ArchSpec("mlp", (5,), (4,), 2)
    torch.manual_seed(3)
    sds = [{k: v.double() for k, v in build(spec).state_dict().items()} for _ in range(2)]
    f = np.stack([chain.features(sd, spec, depth=1, centered=True) for sd in sds])
    c = []
    for sd in sds:
        s_n = chain.scale_normalize_stack(chain.stack([sd], spec), spec)
        w = torch.cat([s_n["layers.0.weight"][0], s_n["layers.0.bias"][0][:, None]], 1)  # units × (inputs+1)
        c.append(w.T.numpy())  # examples (input axis) × features (units)
    hx, hy = (m - m.mean(0) for m in c)
    cka = np.linalg.norm(hy.T @ hx) ** 2 / (np.linalg.norm(hx.T @ hx) * np.linalg.norm(hy.T @ hy))
    assert similarity.cosine_matrix(f)[0, 1] == pytest.approx(cka, rel=1e-10)


def test_within_between_known_answers():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 6)
    centers = rng.standard_normal((4, 20)) * 3
    x = centers[labels] + rng.standard_normal((24, 20))
    wb = similarity.within_between(x, labels, n_permutations=199)
    assert wb.within_mean > wb.between_mean and wb.p_value == pytest.approx(1 / 200)
    noise = rng.standard_normal((24, 20))
    ps = [similarity.within_between(rng.standard_normal((24, 20)), labels,
                                    n_permutations=99, seed=i).p_value for i in range(40)]
    assert min(ps) >= 1 / 100 and np.mean(np.array(ps) <= 0.05) <= 0.2
    assert similarity.within_between(noise, labels, 99).n_within_pairs == 4 * 15


@pytest.mark.parametrize("d", [12, 4])  # N ≤ 2D: through the Gram; N > 2D: through class sums
def test_within_between_matches_the_pairwise_definition(d):
    """Means, Cohen's d and the permutation p-value equal the brute-force
    statistics over the (N, N) similarity matrix, for uneven problem sizes."""
    rng = np.random.default_rng(7)
    labels = np.repeat(["a", "b", "c"], [5, 9, 4])
    x = rng.standard_normal((3, d))[np.unique(labels, return_inverse=True)[1]] + rng.standard_normal((18, d))
    sim = similarity.cosine_matrix(x)
    iu = np.triu_indices(18, 1)
    same = (labels[:, None] == labels[None, :])[iu]
    w, b = sim[iu][same], sim[iu][~same]
    d = (w.mean() - b.mean()) / np.sqrt((w.var(ddof=1) + b.var(ddof=1)) / 2)
    wb = similarity.within_between(x, labels, n_permutations=99, seed=3)
    perm = np.random.default_rng(3)
    codes = np.unique(labels, return_inverse=True)[1]

    def diff(c):
        same_c = (c[:, None] == c[None, :])[iu]
        return sim[iu][same_c].mean() - sim[iu][~same_c].mean()

    exceed = sum(diff(perm.permutation(codes)) >= diff(codes) - 1e-9 for _ in range(99))
    assert wb.p_value == pytest.approx((1 + exceed) / 100)
    assert wb.within_mean == pytest.approx(w.mean(), rel=1e-12) and wb.between_mean == pytest.approx(b.mean(), rel=1e-12)
    assert wb.effect_size == pytest.approx(d, rel=1e-5)  # pair variances from float32 products
    assert (wb.n_within_pairs, wb.n_between_pairs) == (len(w), len(b))


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_digits_mlp_solution_set_within_beats_between(tmp_path):
    store = str(tmp_path)
    assert main(["train", "--dataset", "digits", "--archs", "mlp", "--problems", "5", "--seeds", "8",
                 "--epochs", "10", "--store", store]) == 0
    df = query.query(store).sort_values(["problem", "seed"])
    runs = [tables.read_run(u) for u in df.uri]
    s = chain.stack([r.state_dict for r in runs], runs[0].spec)
    result = {}
    for rep in similarity.REPRESENTATIONS:
        result[rep] = similarity.within_between(similarity.representation(s, runs[0].spec, rep),
                                                df.problem.values, 999)
    assert result["chain"].p_value <= 0.01 and result["chain"].within_mean > result["chain"].between_mean
    assert result["cka"].p_value <= 0.01
    assert result["raw"].p_value > 0.01  # raw weights do not see it
    # two differently seeded trained networks have different features
    f = similarity.representation(s, runs[0].spec, "chain")
    assert not torch.allclose(f[0], f[1])


@pytest.mark.parametrize("problems,seeds", [(10, 12), (61, 3), (70, 3), (1000, 2)])
def test_pairwise_sample_keeps_two_runs_per_problem_at_any_scale(problems, seeds):
    """The pairwise (function-side) sample is stratified with >= 2 runs of
    every sampled problem, bounded in size, and within_between_matrix runs
    on it (above 60 problems it used to keep 1 run each and fail)."""
    y = np.repeat([f"p{i}" for i in range(problems)], seeds)
    sample = similarity.subsample_per_problem(y, 120, 2)
    _, counts = np.unique(y[sample], return_counts=True)
    assert counts.min() >= 2 and len(sample) <= 120 and len(counts) >= min(problems, 60)
    s = np.random.default_rng(0).standard_normal((len(sample), len(sample)))
    assert similarity.within_between_matrix(s + s.T, y[sample], 9).n_within_pairs > 0
    assert similarity.describe_sample(y, sample).startswith(f"{counts.min()} runs of each of {len(counts)} of "
                                                           f"{problems} problems")
