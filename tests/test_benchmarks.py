"""The benchmark functions run and report what they claim (tiny sizes; no timing assertions)."""
from benchmarks.run import bench_features, bench_similarity, bench_tables


def test_benchmarks_measure_at_tiny_sizes():
    f = bench_features(20, 4, "cpu")
    assert f["n"] == 20 and f["nets_per_s"] > 0 and f["speedup"] > 0
    s = bench_similarity(30, "cpu", chunk=7)
    assert s["seconds_30"] > 0
    t = bench_tables(4, 6)
    assert t["ratio_vs_npy"] > 0 and t["layer_scan_speedup"] > 0 and t["n_scan"] == 6
