"""The benchmark functions run and report what they claim (tiny sizes; no timing assertions)."""
from benchmarks.run import bench_features, bench_paper_scale, bench_similarity, bench_tables, bench_train
from weightsim.archs import ArchSpec


def test_benchmarks_measure_at_tiny_sizes():
    f = bench_features(20, 4, "cpu")
    assert f["n"] == 20 and f["nets_per_s"] > 0 and f["speedup"] > 0
    s = bench_similarity(30, "cpu", chunk=7)
    assert s["seconds_30"] > 0
    t = bench_tables(4, 6)
    assert t["ratio_vs_npy"] > 0 and t["layer_scan_speedup"] > 0 and t["n_scan"] == 6
    assert t["pack_scan_speedup"] > t["pack_scan_speedup_with_build"] > 0
    assert t["seconds_npy_durable"] > 0 and t["ratio_vs_durable_npy_one_by_one"] > 0
    t = bench_tables(2, 2, ArchSpec("mlp", (30,), (8,), 3))
    assert t["network"] == "30-8-3" and t["ratio_vs_npy"] > 0


def test_train_and_paper_scale_benchmarks_at_tiny_sizes():
    r = bench_train("cpu", epochs=1, n_loop=1, max_k=3, archs=("mlp", "gru"), min_seconds=0.05, rounds=2)
    for arch in ("mlp", "gru"):
        assert r[arch]["k"] == 3 and r[arch]["steps"] > 0 and r[arch]["speedup"] == r[arch]["fp32"]["speedup"] > 0
        assert r[arch]["loop_seeds"] >= 1 and r[arch]["fp32"]["repeats"] >= 1
        assert 0.4 <= r[arch]["fp32"]["mean_test_accuracy_first_seeds"] <= 1
    p = bench_paper_scale("cpu", k=2, epochs=1)
    assert p["measured"]["seeds"] == 1  # the CPU trains networks this large one at a time: nothing to compare
    assert p["projected_seconds"] > p["projected_init_seconds"] > 0 and "speedup" not in p
    assert p["total_flop"] > 3e15 and p["precision"] == "fp32"


def test_analysis_benchmark_points(tmp_path):
    """One scale point in a fresh process on init-only paper-size tables."""
    from benchmarks.analysis import _point, growth, write_init_tables

    write_init_tables(str(tmp_path), 20, problems=4)
    p = _point(str(tmp_path), "mlp-paper", 4, 5)
    assert p["n"] == 20 and p["seconds"] > 0 and p["peak_rss_gb"] >= p["rss_after_imports_gb"] > 0
    assert growth([{"n": 10, "seconds": 1.0}, {"n": 100, "seconds": 10.0}]) == 1.0
