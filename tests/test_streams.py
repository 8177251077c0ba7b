"""Property tests of the residual and attention families' symmetries: each
symmetry written here from the layer definitions (on the torch module, not
through weightsim.streams) keeps the module's output and the chain features;
``chain.random_symmetry`` does too, and changes the weights."""
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weightsim import chain
from weightsim.archs import ArchSpec, build
from weightsim.errors import SpecError

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BN_EPS_TOL = 1e-3  # BatchNorm's eps is not scaled with the weights: its symmetries hold to ~eps/var


@st.composite
def specs(draw, kinds=("resmlp", "resnet", "transformer")):
    kind = draw(st.sampled_from(kinds))
    classes, blocks, bias = draw(st.integers(2, 4)), draw(st.integers(1, 2)), draw(st.booleans())
    if kind == "resmlp":
        return ArchSpec(kind, (draw(st.integers(1, 6)),), (draw(st.integers(2, 5)), draw(st.integers(1, 5))), classes,
                        bias=bias, blocks=blocks)
    if kind == "resnet":
        two_d = draw(st.booleans())
        shape = (draw(st.integers(1, 2)), *(draw(st.integers(2, 5)) for _ in range(2 if two_d else 1)))
        widths = tuple(draw(st.lists(st.integers(2, 4), min_size=1, max_size=2)))
        return ArchSpec(kind, shape, widths, classes, batchnorm=True, bias=bias, blocks=blocks,
                        kernel_size=draw(st.sampled_from([1, 3])))
    heads = draw(st.integers(1, 3))
    return ArchSpec(kind, (draw(st.integers(1, 4)), draw(st.integers(1, 3))),
                    (heads * draw(st.integers(1, 3)), draw(st.integers(1, 4))), classes, bias=bias, blocks=blocks,
                    heads=heads)


def random_model(spec: ArchSpec, seed: int) -> torch.nn.Module:
    """A float64 network with random normalization parameters and statistics (so none of them is trivial)."""
    torch.manual_seed(seed)
    model = build(spec).double().eval()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if "running_var" in name:
                t.uniform_(0.5, 2.0)
            elif t.is_floating_point() and any(k in name for k in ("bn", "ln", "downsample.1", "running_mean")):
                t.normal_()
            elif name == "pos.weight":
                t.normal_()
    return model


def outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def rel(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


# --- the symmetries, from the layer definitions ------------------------------------

def rows(t: torch.Tensor, perm, scale=None) -> None:
    """Output units (dim 0) of a parameter or buffer: new unit j = old unit perm[j] × scale[j]."""
    new = t[perm]
    if scale is not None:
        new = new * scale.view(-1, *[1] * (t.dim() - 1))
    t.copy_(new)


def cols(t: torch.Tensor, perm, scale=None) -> None:
    """Input units (dim 1) of a weight: the matching columns, ÷ scale."""
    new = t[:, perm]
    if scale is not None:
        new = new / scale.view(1, -1, *[1] * (t.dim() - 2))
    t.copy_(new)


def params(module, names=("weight", "bias")):
    return [t for n in names if (t := getattr(module, n, None)) is not None]


def positive(n, g):
    return torch.exp(torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1)


def invertible(n, g):
    return torch.randn(n, n, generator=g, dtype=torch.float64) + 2 * n * torch.eye(n, dtype=torch.float64)


def resnet_blocks(model):
    return [(s, b) for s, stage in enumerate(model.stages) for b in stage]


def stream_permutation(model, spec, g) -> None:
    """One permutation of the stream, on every writer (rows, LayerNorm gain/bias, positions) and reader
    (columns); resnet: every stage's stream, with a positive scale on the BatchNorms that write it."""
    if spec.kind == "resnet":
        for s, width in enumerate(spec.widths):
            perm, c = torch.randperm(width, generator=g), positive(width, g)
            writers = [(model.stem, model.stem_bn)] if s == 0 else []
            readers = [model.out] if s == len(spec.widths) - 1 else []
            for bs, b in resnet_blocks(model):
                if bs == s:
                    writers.append((b.conv2, b.bn2))
                    if b.downsample is not None:
                        writers.append(tuple(b.downsample))
                if (bs == s and b.downsample is None) or (bs == s + 1 and b.downsample is not None):
                    readers += [b.conv1] + ([b.downsample[0]] if b.downsample is not None else [])
            for conv, bn in writers:
                rows(conv.weight, perm)
                for t in params(bn):
                    rows(t, perm, c)
                for t in (bn.running_mean, bn.running_var):
                    rows(t, perm)
            for layer in readers:
                cols(layer.weight, perm, c)
        return
    d = spec.widths[0]
    perm = torch.randperm(d, generator=g)
    for t in params(model.stem):
        rows(t, perm)
    readers = [model.out]
    if spec.kind == "transformer":
        cols(model.pos.weight, perm)
    for b in model.blocks:
        if spec.kind == "transformer":
            for t in params(b.ln1) + params(b.ln2) + params(b.attn.o):
                rows(t, perm)
            readers += [b.attn.q, b.attn.k, b.attn.v]
        for t in params(b.fc2):
            rows(t, perm)
        readers.append(b.fc1)
    for layer in readers:
        cols(layer.weight, perm)


def hidden_units(model, spec, g) -> None:
    """Every block's hidden ReLU units: a permutation and a positive scale."""
    if spec.kind == "resnet":
        for _, b in resnet_blocks(model):
            n = b.conv1.out_channels
            perm, m = torch.randperm(n, generator=g), positive(n, g)
            rows(b.conv1.weight, perm)
            for t in params(b.bn1):
                rows(t, perm, m)
            for t in (b.bn1.running_mean, b.bn1.running_var):
                rows(t, perm)
            cols(b.conv2.weight, perm, m)
        return
    for b in model.blocks:
        perm, m = torch.randperm(b.fc1.out_features, generator=g), positive(b.fc1.out_features, g)
        for t in params(b.fc1):
            rows(t, perm, m)
        cols(b.fc2.weight, perm, m)


def batchnorm_scale(model, spec, g) -> None:
    """The weights in front of every BatchNorm × a > 0 per channel, its running statistics with them."""
    pairs = [(model.stem, model.stem_bn)]
    for _, b in resnet_blocks(model):
        pairs += [(b.conv1, b.bn1), (b.conv2, b.bn2)] + ([tuple(b.downsample)] if b.downsample is not None else [])
    for conv, bn in pairs:
        a = positive(conv.out_channels, g)
        conv.weight.mul_(a.view(-1, *[1] * (conv.weight.dim() - 1)))
        bn.running_mean.mul_(a)
        bn.running_var.mul_(a * a)


def _head_rows(layer, heads):
    return [t.view(heads, -1, *t.shape[1:]) for t in params(layer)]


def head_permutation(model, spec, g) -> None:
    for b in model.blocks:
        dh = spec.widths[0] // spec.heads
        perm = (torch.randperm(spec.heads, generator=g).view(-1, 1) * dh + torch.arange(dh)).flatten()
        for layer in (b.attn.q, b.attn.k, b.attn.v):
            for t in params(layer):
                rows(t, perm)
        cols(b.attn.o.weight, perm)


def query_key_basis(model, spec, g) -> None:
    """q_h → Aᵀ q_h, k_h → A⁻¹ k_h for each head: every q·k is unchanged."""
    for b in model.blocks:
        for h in range(spec.heads):
            a = invertible(spec.widths[0] // spec.heads, g)
            for t in _head_rows(b.attn.q, spec.heads):
                t[h] = a.T @ t[h]
            for t in _head_rows(b.attn.k, spec.heads):
                t[h] = torch.linalg.inv(a) @ t[h]


def value_output_basis(model, spec, g) -> None:
    """v_h → B v_h and W_O^h → W_O^h B⁻¹ for each head."""
    for b in model.blocks:
        dh = spec.widths[0] // spec.heads
        for h in range(spec.heads):
            m = invertible(dh, g)
            for t in _head_rows(b.attn.v, spec.heads):
                t[h] = m @ t[h]
            o = b.attn.o.weight[:, h * dh:(h + 1) * dh]
            o.copy_(o @ torch.linalg.inv(m))


def key_bias_shift(model, spec, g) -> None:
    """The key bias adds q·shift to all of a query's scores: softmax ignores it."""
    for b in model.blocks:
        b.attn.k.bias.add_(torch.randn(b.attn.k.bias.shape, generator=g, dtype=torch.float64))


SYMMETRIES = {"stream permutation": (stream_permutation, ("resmlp", "resnet", "transformer")),
              "hidden units": (hidden_units, ("resmlp", "resnet", "transformer")),
              "batchnorm scale": (batchnorm_scale, ("resnet",)),
              "head permutation": (head_permutation, ("transformer",)),
              "query/key basis": (query_key_basis, ("transformer",)),
              "value/output basis": (value_output_basis, ("transformer",)),
              "key bias shift": (key_bias_shift, ("transformer",))}


@pytest.mark.parametrize("name", list(SYMMETRIES))
@SETTINGS
@given(data=st.data(), net_seed=st.integers(0, 2**31 - 1), sym_seed=st.integers(0, 2**31 - 1))
def test_each_symmetry_keeps_function_and_features(name, data, net_seed, sym_seed):
    apply, kinds = SYMMETRIES[name]
    spec = data.draw(specs(kinds))
    if name == "key bias shift" and not spec.bias:
        return
    model = random_model(spec, net_seed)
    x = torch.randn(5, *spec.input_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(net_seed))
    before, feats = outputs(model, x), chain.features(model.state_dict(), spec)
    with torch.no_grad():
        apply(model, spec, torch.Generator().manual_seed(sym_seed))
    tol = BN_EPS_TOL if spec.kind == "resnet" else 1e-9
    assert rel(outputs(model, x), before) < tol
    assert np.allclose(chain.features(model.state_dict(), spec), feats, rtol=1e-9, atol=1e-12)


@SETTINGS
@given(specs(), st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1))
def test_random_symmetry_changes_weights_keeps_function_and_features(spec, net_seed, sym_seed):
    model = random_model(spec, net_seed)
    sd = model.state_dict()
    moved = chain.random_symmetry(sd, spec, sym_seed)
    assert any(not torch.equal(sd[k], moved[k]) for k in sd)
    x = torch.randn(5, *spec.input_shape, dtype=torch.float64)
    other = build(spec).double().eval()
    other.load_state_dict(moved)
    assert rel(outputs(other, x), outputs(model, x)) < (BN_EPS_TOL if spec.kind == "resnet" else 1e-9)
    assert np.allclose(chain.features(moved, spec), chain.features(sd, spec), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["resmlp", "resnet", "transformer"])
def test_features_tell_networks_apart_and_every_depth_is_there(kind):
    spec = {
        "resmlp": ArchSpec("resmlp", (5,), (4, 3), 2, blocks=2),
        "resnet": ArchSpec("resnet", (1, 5, 5), (3, 4), 2, batchnorm=True, blocks=1),
        "transformer": ArchSpec("transformer", (4, 3), (4, 5), 2, blocks=2, heads=2)}[kind]
    a, b = (random_model(spec, s).state_dict() for s in (1, 2))
    fa, fb = chain.features(a, spec), chain.features(b, spec)
    assert np.linalg.norm(fa - fb) > 1e-3 * np.linalg.norm(fa)
    blocks = chain.feature_blocks(chain.stack([a], spec), spec)
    assert len(blocks) == spec.depth + 1
    assert all(math.isclose(float(v.norm()), math.sqrt(len(e)), rel_tol=1e-9)
               for v, e in zip(blocks, chain.chain_matrices(chain.stack([a], spec), spec)))
    with pytest.raises(SpecError):
        chain.features(a, spec, depth=spec.depth + 2)


def test_long_input_axes_are_projected_and_stay_invariant():
    spec = ArchSpec("resnet", (3, 12, 12), (2,), 2, batchnorm=True, blocks=1)
    sd = random_model(spec, 0).state_dict()
    f = chain.features(sd, spec, max_axis=64, proj_dim=16)
    assert np.allclose(chain.features(chain.random_symmetry(sd, spec, 3), spec, max_axis=64, proj_dim=16), f,
                       rtol=1e-9, atol=1e-12)
    assert len(f) < len(chain.features(sd, spec))


@pytest.mark.parametrize("kind", ["resmlp", "resnet", "transformer"])
def test_matching_undoes_permutations_and_the_pipeline_representations_are_invariant(kind):
    from weightsim import activations, similarity, streams

    spec = {"resmlp": ArchSpec("resmlp", (5,), (4, 3), 2, blocks=2),
            "resnet": ArchSpec("resnet", (1, 5, 5), (3, 4), 2, batchnorm=True, blocks=2),
            "transformer": ArchSpec("transformer", (4, 3), (6, 5), 2, blocks=2, heads=3)}[kind]
    nets = chain.stack([random_model(spec, s).state_dict() for s in (0, 1)], spec)
    element = streams.random_element(nets, spec, torch.Generator().manual_seed(4))
    perms = {k: v if k.startswith("heads.") else (v[0], None) for k, v in element.items()
             if k.startswith("heads.") or isinstance(v, tuple)}
    permuted = streams.act(nets, spec, perms)
    assert not torch.equal(similarity.raw_features(permuted, spec), similarity.raw_features(nets, spec))
    for i in range(2):
        back = similarity.match_to(chain.stack([chain.unstack(permuted, {k: v[0] for k, v in nets.items()}, i)], spec),
                                   spec, {k: v[i:i + 1] for k, v in nets.items()})
        assert torch.allclose(similarity.raw_features(back, spec), similarity.raw_features(nets, spec)[i:i + 1])
    moved = streams.act(nets, spec, element)
    probes = torch.randn(6, *spec.input_shape, dtype=torch.float64)
    tol = BN_EPS_TOL if kind == "resnet" else 1e-9
    assert rel(activations.activation_features(moved, spec, probes), activations.activation_features(nets, spec, probes)) < tol
    x = torch.randn(3, *spec.input_shape, dtype=torch.float64)
    normalized = build(spec).double().eval()
    normalized.load_state_dict(chain.unstack(chain.scale_normalize_stack(nets, spec), {k: v[0] for k, v in nets.items()}))
    assert rel(outputs(normalized, x), outputs(random_model(spec, 0), x)) < tol
    with pytest.raises(SpecError):
        chain.canonicalize(random_model(spec, 0).state_dict(), spec)
