"""Sample-efficiency curves: sizes, splits, decisions and floors."""
import numpy as np
import pytest

from weightsim import efficiency


def test_sizes_leave_the_htt_held_out_share():
    assert efficiency.sizes(12) == (5, [2, 3, 4, 6, 7])
    assert efficiency.sizes(100) == (40, [2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 60])
    assert efficiency.sizes(3) == (1, [2])
    assert efficiency.sizes(2)[1] == []


def test_a_separable_representation_needs_fewer_runs_than_a_weak_one_and_noise_none():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), 7)
    centers = rng.normal(size=(6, 12))
    mats = {"chain": centers[y] + 0.6 * rng.normal(size=(42, 12)),
            "activation": 0.3 * centers[y] + rng.normal(size=(42, 12)),
            "raw": rng.normal(size=(42, 12))}
    out = efficiency.curve(mats, y.astype(str), repeats=3)
    assert out["sizes"] == [2, 3, 4] and out["n_test_per_problem"] == 3 and out["chance"] == pytest.approx(1 / 6)
    need = out["runs_needed"]
    assert need["chain"] == 2 and need["raw"] is None
    assert need["activation"] is None or need["activation"] > 2
    assert out["fewer"] == "weights"
    for rows in out["curves"].values():
        assert all(0 <= r["ci_low"] <= r["mean"] <= r["ci_high"] <= 1 and r["p"] >= r["floor"] for r in rows)
    assert all(r["significant"] for r in out["curves"]["chain"])
    assert not any(r["significant"] for r in out["curves"]["raw"])
    assert [p["size"] for p in out["paired"]] == out["sizes"]
    assert sum(p["only_chain"] for p in out["paired"]) > sum(p["only_activation"] for p in out["paired"])


def test_a_design_that_cannot_reach_alpha_never_rejects():
    """Two problems, two fitting runs each: 6 labellings, so the permutation p cannot go below 1/6."""
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 4)
    x = np.array([[10.0], [-10.0]])[y] + rng.normal(size=(8, 1))
    out = efficiency.curve({"chain": x}, y, repeats=2)
    row = out["curves"]["chain"][0]
    assert out["sizes"] == [2] and row["mean"] == 1.0
    assert row["floor"] == pytest.approx(1 / 6) and not row["significant"] and out["runs_needed"]["chain"] is None


def test_report_shows_the_curves_and_the_runs_needed_table():
    from weightsim import report

    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(3), 5)
    x = np.eye(3)[y] * 5 + rng.normal(size=(15, 3))
    eff = efficiency.curve({"chain": x, "activation": rng.normal(size=(15, 3))}, y, repeats=2)
    blocks = report.efficiency_blocks("resnet", eff) + report.efficiency_table(
        {"resnet": {"efficiency": eff}, "mlp": {"efficiency": {"sizes": [], "note": "too few runs"}}})
    md = report.to_markdown(blocks)
    assert "resnet-efficiency" in md and "runs per problem" in md
    table = next(b for b in blocks if b.kind == "table" and b.rows[0][0] == "arch")
    assert table.rows[0] == ["arch", "chain", "activation", "fewer"] and [r[0] for r in table.rows[1:]] == ["resnet"]
    assert table.rows[1][1:] == [eff["runs_needed"]["chain"] or "none", eff["runs_needed"]["activation"] or "none",
                                 eff["fewer"]]
