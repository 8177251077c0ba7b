"""Representations streamed from weight tables and cached in the store."""
import os
import shutil

import numpy as np
import pytest
import torch

from weightsim import analysis, chain, probes, representations, similarity, sketch, tables
from weightsim.archs import ArchSpec, build
from weightsim.representations import Settings
from weightsim.store import open_store


@pytest.fixture
def store(digits_store, tmp_path):
    """A private copy of the trained digits store (the cache gets written)."""
    root = tmp_path / "store"
    shutil.copytree(digits_store, root, ignore=shutil.ignore_patterns("features", "reports"))
    return str(root)


def _uris(store, arch):
    return [u for u in tables.list_runs(store) if f"/arch={arch}/" in u]


def _load(store, arch, **kw):
    return representations.load(store, representations.plan(store, arch, _uris(store, arch)), **kw)


def _cache_files(store):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(store, "features")) for f in fs)


@pytest.mark.parametrize("arch", ["mlp", "cnn", "rnn", "gru"])
def test_streamed_representations_equal_the_whole_stack(store, arch, monkeypatch):
    """Chunks of 2 runs give the representations of the whole stack at once
    (float32 of the float64 computation), and no chunk holds more runs."""
    sizes = []
    real = representations._compute_chunk
    monkeypatch.setattr(representations, "chunk_size", lambda spec, probes=0: 2)
    monkeypatch.setattr(representations, "_compute_chunk",
                        lambda st, p, idx, *a: sizes.append(len(idx)) or real(st, p, idx, *a))
    exact = Settings(max_block=10 ** 6, max_flat=10 ** 6)  # no sketch: compare with the plain computation
    ss = representations.load(store, representations.plan(store, arch, _uris(store, arch), exact))
    assert sizes == [2, 2, 2] and ss.computed == 6
    runs = [tables.read_run_epochs(u, [None, 0]) for u in ss.runs.uri]
    spec = runs[0][0].spec
    final = chain.stack([r[0].state_dict for r in runs], spec)
    init = chain.stack([r[1].state_dict for r in runs], spec)
    assert ss.runs.uri[0] == representations.plan(store, arch, _uris(store, arch)).reference
    expected = {"chain": chain.features_stack(final, spec), "untrained": chain.features_stack(init, spec),
                "cka": chain.features_stack(final, spec, centered=True),
                "matched": similarity.matched_features(final, spec, 0)}
    expected.update({f"chain_depth{d}": chain.features_stack(final, spec, depth=d) for d in range(1, spec.depth + 2)})
    expected.update({n: similarity.representation(final, spec, n) for n in ("canonical", "scale", "raw")})
    assert set(ss.names()) == set(expected)
    for name, x in expected.items():
        np.testing.assert_allclose(ss.get(name), x.numpy(), rtol=0, atol=1e-6, err_msg=name)


def test_cache_hit_miss_and_invalidation(store):
    first = _load(store, "mlp")
    files = _cache_files(store)
    assert first.computed == 6 and len(files) == 6
    assert all("/features/dataset=digits/arch=mlp/problem=" in f for f in files)

    again = _load(store, "mlp")
    assert again.computed == 0 and _cache_files(store) == files
    for name in first.names():
        np.testing.assert_array_equal(again.get(name), first.get(name))

    # a retrained (here: rewritten with other weights) table invalidates its own cache entry only
    uri = first.runs.uri[3]
    run0, run_init = tables.read_run_epochs(uri, [None, 0])
    meta = tables.read_meta(uri)
    changed = {k: v + 0.01 if v.is_floating_point() else v for k, v in run0.state_dict.items()}
    os.remove(uri)
    tables.write(store, open_store(store).key_of(uri),
                 {0: run_init.state_dict, run0.meta["final_epoch"]: changed},
                 {k: v for k, v in meta.items() if k not in ("checksum", "format", "checkpoints", "library_version",
                                                            "torch_version", "row_groups")})
    third = _load(store, "mlp")
    assert third.computed == 1
    moved = [i for i in range(6) if not np.array_equal(third.get("raw")[i], first.get("raw")[i])]
    assert moved == [3]

    # a corrupted cache file is never used: it is recomputed
    victim = _cache_files(store)[0]
    data = bytearray(open(victim, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(victim, "wb").write(bytes(data))
    fourth = _load(store, "mlp")
    assert fourth.computed == 1
    np.testing.assert_array_equal(fourth.get("chain"), third.get("chain"))

    # other settings are other representations
    assert _load(store, "mlp", names=("chain",)).computed == 0
    p = representations.plan(store, "mlp", _uris(store, "mlp"), Settings(max_block=64))
    sketched = representations.load(store, p)
    assert sketched.computed == 6 and sketched.get("chain").shape[1] == 64 * 3  # every depth block sketched


def test_a_dataset_that_is_not_the_runs_leaves_the_function_out_and_says_why(store):
    uris = _uris(store, "mlp")
    assert "activation" in representations.plan(store, "mlp", uris, data="digits").names
    for data, why in (("mnist1d", "is not the version these runs were trained on"), ("nope.npz", "nope.npz")):
        p = representations.plan(store, "mlp", uris, data=data)
        assert "activation" not in p.names and p.data is None and why in p.data_error
    rec = analysis.analyze_arch(store, "digits", "s", "mlp", uris, n_permutations=99, data="mnist1d")
    assert "function" not in rec["entry"] and "no function-based representation" in rec["entry"]["note_function"]


def test_a_table_is_bound_to_its_name(store):
    """A valid table copied over another run's path is a bad table, not that run."""
    a, b = _uris(store, "mlp")[:2]
    shutil.copyfile(a, b)
    p = representations.plan(store, "mlp", _uris(store, "mlp"))
    assert [e.uri for e in p.bad] == [b] and "not bound to its path" in str(p.bad[0])
    ss = representations.load(store, p, skip_bad=True)
    assert len(ss.runs) == 5 and ss.bad == [b]


def test_count_sketch_is_linear_and_keeps_invariance():
    spec = ArchSpec("mlp", (6,), (5, 4), 3)
    torch.manual_seed(0)
    sd = {k: v.double() for k, v in build(spec).state_dict().items()}
    moved = chain.random_symmetry(sd, spec, 3)
    f = [chain.features_stack(chain.stack([s], spec), spec) for s in (sd, moved)]
    s1, s2 = (sketch.sketch(x, 16, "t") for x in f)
    assert s1.shape == (1, 16) and torch.allclose(s1, s2, atol=1e-12)
    x = torch.randn(3, 100, dtype=torch.float64)
    assert torch.allclose(sketch.sketch(2 * x[:1] + x[1:2], 16, "t"),
                          2 * sketch.sketch(x[:1], 16, "t") + sketch.sketch(x[1:2], 16, "t"))
    assert sketch.sketch(x, 200, "t") is x


# modules that move, check or name bytes and settings; every other weightsim module that runs while an arch is
# analysed computes its numbers and must feed the digest of a cache key
PLUMBING = {"__init__", "store", "tables", "parquet", "errors", "config", "uris", "catalog", "runs", "sweep",
            "codedigest", "digest", "chunks",
            "datasets", "problems"}  # datasets: data enter the keys by their fingerprint


def test_cache_keys_cover_the_code_that_computes_the_results(store, tmp_path):
    """The analysis and representation keys hold a digest of the source of
    every module whose code runs to compute them (traced), so no output can
    change without its key changing; a changed source is a new digest."""
    import sys
    import threading

    from weightsim import sweep  # noqa: F401 - imported before the trace: module bodies are not computations
    from weightsim.codedigest import code_digest

    ran = set()

    def trace(frame, event, arg):
        code = frame.f_code
        if event == "call" and f"{os.sep}weightsim{os.sep}" in code.co_filename and code.co_name != "<module>":
            inside = code.co_filename.rsplit(f"{os.sep}weightsim{os.sep}", 1)[1]  # a subpackage counts as one module
            ran.add(inside.split(os.sep)[0].removesuffix(".py"))

    probes.probe_inputs.cache_clear()  # a cached call runs no code of its own to trace
    sys.setprofile(trace)
    threading.setprofile(trace)
    try:
        rec = analysis.analyze_arch(store, "digits", "traced", "mlp", _uris(store, "mlp"), n_permutations=9,
                                    data="digits")  # activations too: probes and the forward pass
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    keyed = {(m if isinstance(m, str) else m.__name__).rsplit(".", 1)[-1]
             for m in (*analysis.CODE_MODULES, *representations.CODE_MODULES)}
    assert {"htt", "chain", "analysis", "representations", "probes", "forward"} <= ran, ran
    assert ran - keyed <= PLUMBING, ran - keyed
    assert rec["code"] == {"analysis": analysis.ANALYSIS_VERSION, "representations": representations.CODE_VERSION}
    assert rec["library_version"]
    module = tmp_path / "m.py"
    module.write_text("X = 1\n")
    m = type(sys)("m")
    m.__file__ = str(module)
    before = code_digest(m)
    module.write_text("X = 2\n")
    assert code_digest(m) != before


def test_chunks_are_sized_by_activation_memory_too():
    """With probe inputs, a chunk holds fewer runs of a network whose
    activations are large (a CNN on 32×32 images) than its weights alone
    allow, and its activations' working copies fit the chunk budget."""
    from weightsim.archs import arch_spec

    cnn = arch_spec("cnn", (3, 32, 32), 2)
    assert representations.activation_values(cnn) > 3 * 32 * 32
    n = representations.chunk_size(cnn, 64)
    assert n < representations.chunk_size(cnn)
    assert n * 64 * representations.activation_values(cnn) * 8 * 4 <= representations.CHUNK_BYTES
    mlp = arch_spec("mlp", (64,), 2)
    assert representations.chunk_size(mlp, 64) == representations.chunk_size(mlp) == 256
