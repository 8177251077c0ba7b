"""Property-based tests of the symmetries, the chain normalization rule and
the chain features over random architectures and random group elements."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weightsim import chain
from weightsim.archs import ArchSpec, build
from weightsim.errors import SpecError

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def specs(draw):
    kind = draw(st.sampled_from(["mlp", "cnn", "rnn", "gru"]))
    widths = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    bias = draw(st.booleans())
    classes = draw(st.integers(2, 4))
    if kind == "mlp":
        return ArchSpec("mlp", (draw(st.integers(1, 7)),), widths, classes, draw(st.sampled_from(["relu", "tanh"])),
                        bias=bias)
    if kind == "cnn":
        act = draw(st.sampled_from(["relu", "tanh"]))
        two_d = draw(st.booleans())
        shape = (draw(st.integers(1, 3)), *(draw(st.integers(2, 6)) for _ in range(2 if two_d else 1)))
        return ArchSpec("cnn", shape, widths[:2], classes, act, batchnorm=draw(st.booleans()), bias=bias,
                        pool=act == "relu" and draw(st.booleans()), kernel_size=draw(st.sampled_from([1, 3])))
    shape = (draw(st.integers(1, 5)), draw(st.integers(1, 4)))
    act = "tanh" if kind == "gru" else draw(st.sampled_from(["relu", "tanh"]))
    return ArchSpec(kind, shape, widths, classes, act, bias=bias)


def random_net(spec: ArchSpec, seed: int) -> dict:
    torch.manual_seed(seed)
    model = build(spec).double()
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if "running_var" in name:
                p.uniform_(0.5, 2.0)
            elif p.is_floating_point() and ("running_mean" in name or name.startswith("norms")):
                p.normal_()
    return model.state_dict()


def outputs(spec, sd, x):
    model = build(spec).to(next(iter(sd.values())).dtype)
    model.load_state_dict(sd)
    model.eval()
    with torch.no_grad():
        return model(x.to(next(iter(sd.values())).dtype)).double()


def rel(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def changed(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


@SETTINGS
@given(specs(), st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1))
def test_symmetry_changes_weights_keeps_function(spec, net_seed, sym_seed):
    sd = random_net(spec, net_seed)
    x = torch.randn(6, *spec.input_shape, dtype=torch.float64)
    sd2 = chain.random_symmetry(sd, spec, sym_seed)
    assert changed(sd, sd2)
    assert rel(outputs(spec, sd2, x), outputs(spec, sd, x)) <= 1e-10


@SETTINGS
@given(specs(), st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1))
def test_canonicalize_invariant_and_function_preserving_float64(spec, net_seed, sym_seed):
    sd = random_net(spec, net_seed)
    sd2 = chain.random_symmetry(sd, spec, sym_seed)
    c1, c2 = chain.canonicalize(sd, spec), chain.canonicalize(sd2, spec)
    for k in c1:
        assert rel(c2[k], c1[k]) <= 1e-10 or float((c2[k] - c1[k]).abs().max()) <= 1e-12, k
    x = torch.randn(6, *spec.input_shape, dtype=torch.float64)
    assert rel(outputs(spec, c1, x), outputs(spec, sd, x)) <= 1e-10


@SETTINGS
@given(specs(), st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1))
def test_features_invariant_float64(spec, net_seed, sym_seed):
    sd = random_net(spec, net_seed)
    sd2 = chain.random_symmetry(sd, spec, sym_seed)
    for centered in (False, True):
        f1, f2 = chain.features(sd, spec, centered=centered), chain.features(sd2, spec, centered=centered)
        assert f1.ndim == 1 and np.isfinite(f1).all()
        assert rel(f2, f1) <= 1e-10
    for depth in range(1, spec.depth + 2):
        assert rel(chain.features(sd2, spec, depth), chain.features(sd, spec, depth)) <= 1e-10


@SETTINGS
@given(specs(), st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1))
def test_features_and_canonicalize_invariant_float32(spec, net_seed, sym_seed):
    sd = {k: v.float() if v.is_floating_point() else v for k, v in random_net(spec, net_seed).items()}
    sd2 = chain.random_symmetry(sd, spec, sym_seed)
    assert all(sd2[k].dtype == sd[k].dtype for k in sd)
    assert rel(chain.features(sd2, spec), chain.features(sd, spec)) <= 1e-5
    c1, c2 = chain.canonicalize(sd, spec), chain.canonicalize(sd2, spec)
    scale = max(float(v.abs().max()) for v in c1.values() if v.is_floating_point() and v.numel())
    assert max(float((c1[k].double() - c2[k].double()).abs().max()) for k in c1 if c1[k].numel()) <= 1e-5 * scale


def test_projection_bounds_memory_and_stays_invariant():
    spec = ArchSpec("mlp", (600,), (5, 4), 3)
    sd = random_net(spec, 0)
    f = chain.features(sd, spec, max_axis=512, proj_dim=64)
    assert f.shape == (2 * (65 * 66 // 2) + 3 * 65,)
    f2 = chain.features(chain.random_symmetry(sd, spec, 3), spec, max_axis=512, proj_dim=64)
    assert rel(f2, f) <= 1e-10


def test_stack_matches_single_network_features():
    spec = ArchSpec("gru", (4, 3), (5, 3), 2, "tanh")
    sds = [random_net(spec, i) for i in range(4)]
    batch = chain.features_stack(chain.stack(sds, spec), spec).numpy()
    for i, sd in enumerate(sds):
        np.testing.assert_allclose(batch[i], chain.features(sd, spec), rtol=1e-12, atol=1e-14)


def test_tied_units_get_a_unique_order():
    spec = ArchSpec("mlp", (3,), (4,), 2)
    sd = random_net(spec, 0)
    sd["layers.0.weight"][1] = sd["layers.0.weight"][0]  # two units with identical incoming vectors
    sd["layers.0.bias"][1] = sd["layers.0.bias"][0]
    sd2 = chain.random_symmetry(sd, spec, 5)
    c1, c2 = chain.canonicalize(sd, spec), chain.canonicalize(sd2, spec)
    assert all(rel(c2[k], c1[k]) <= 1e-10 for k in c1)


def test_errors_for_bad_state_dicts():
    spec = ArchSpec("mlp", (3,), (4,), 2)
    sd = random_net(spec, 0)
    with pytest.raises(SpecError, match="missing"):
        chain.features({k: v for k, v in sd.items() if k != "out.bias"}, spec)
    with pytest.raises(SpecError, match="shape"):
        chain.canonicalize({**sd, "out.bias": torch.zeros(3, dtype=torch.float64)}, spec)
    with pytest.raises(SpecError, match="non-finite"):
        chain.features({**sd, "out.bias": torch.tensor([float("nan"), 0.0], dtype=torch.float64)}, spec)
    with pytest.raises(SpecError, match="depth"):
        chain.features(sd, spec, depth=5)


@pytest.mark.parametrize("name,rows", [("weight_hh_l0", slice(0, 5)), ("weight_hh_l0", slice(5, 10)),
                                       ("bias_hh_l0", slice(10, 15))])
def test_gru_features_see_every_gate_recurrence_and_bias(name, rows):
    """Two GRUs that differ only in W_hr, W_hz or b_hn get different chain
    features; each stays exactly invariant under the symmetry group."""
    spec = ArchSpec("gru", (4, 3), (5,), 2, "tanh")
    sd = random_net(spec, 1)
    other = {k: v.clone() for k, v in sd.items()}
    other[f"rnns.0.{name}"][rows] += 0.5
    f, g = chain.features(sd, spec), chain.features(other, spec)
    assert rel(g, f) > 1e-3
    for s in (sd, other):
        assert rel(chain.features(chain.random_symmetry(s, spec, 7), spec), chain.features(s, spec)) <= 1e-10
