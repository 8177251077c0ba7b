import json
import os
import subprocess
import sys

import pytest

from weightsim import tables
from flows.cli import main

pytestmark = pytest.mark.usefixtures("prefect_api")  # runs flows: the session's Prefect server

EXE = os.path.join(os.path.dirname(sys.executable), "weightsim")
ARGS = ["--dataset", "digits", "--archs", "mlp,rnn,rnn-tanh", "--problems", "4", "--seeds", "6", "--epochs", "4",
        "--checkpoints", "0,1,2,final", "--permutations", "99", "--sweep", "small"]


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("analysis"))
    assert main(["run", *ARGS, "--store", store]) == 0
    return store


def test_summary_follows_the_contract(analyzed):
    s = json.load(open(f"{analyzed}/reports/digits/small/summary.json"))
    assert s["dataset"] == "digits" and set(s["archs"]) == {"mlp", "rnn", "rnn-tanh"}
    for e in s["archs"].values():
        assert e["n_runs"] == 24 and 0.5 < e["mean_test_accuracy"] <= 1
        for rep in ("chain", "raw", "untrained"):
            h = e["htt"][rep]
            assert {"accuracy", "chance", "p_binomial", "p_permutation", "n_train", "n_test"} <= set(h)
            assert h["p_permutation"] >= 1 / 100
        assert {"within_mean", "between_mean", "p_value"} <= set(e["similarity"])
        assert "retrieval" in e and e["decision"].startswith(("reject H0", "keep H0"))
        assert "warning_permutations" not in e  # 99 permutations can reach α = 0.01
        # function beside weights, on the same runs: the activation HTT, CKA, Procrustes and the paired verdict
        f = e["function"]
        assert e["htt"]["activation"]["n_test"] == e["htt"]["chain"]["n_test"] and f["probes"] == 64
        assert f["paired"]["accuracy_a"] == e["htt"]["chain"]["accuracy"]
        assert f["paired"]["accuracy_b"] == e["htt"]["activation"]["accuracy"]
        assert f["stronger"] in ("weights", "function", "neither") and f["n_runs_pairwise"] == 24
        assert f["procrustes"]["within_mean"] < f["procrustes"]["between_mean"] and f["cka"]["p_value"] <= 0.05
    cross = {(c["fit"], c["evaluate"]) for c in s["cross"]}
    assert cross == {("rnn", "rnn-tanh"), ("rnn-tanh", "rnn")}


def test_report_files_are_self_contained(analyzed):
    folder = f"{analyzed}/reports/digits/small"
    html = open(f"{folder}/report.html").read()
    md = open(f"{folder}/report.md").read()
    assert html.count("data:image/png;base64,") == 3 * 6 + 1 and "<table>" in html
    assert "## Decisions" in md and "untrained" in md and md.count("Weights beside function") == 3
    for arch in ("mlp", "rnn", "rnn-tanh"):
        for fig in ("htt", "similarity", "within-between", "projection", "over-time"):
            assert os.path.getsize(f"{folder}/{arch}-{fig}.png") > 1000
            assert f"({arch}-{fig}.png)" in md


def test_every_checkpoint_epoch_is_analysed_from_the_cache(analyzed):
    from weightsim import representations
    from weightsim.findings import epoch_permutations

    s = json.load(open(f"{analyzed}/reports/digits/small/summary.json"))
    md = open(f"{analyzed}/reports/digits/small/report.md").read()
    for arch, e in s["archs"].items():
        over = e["over_time"]
        assert over["epochs"] == [0, 1, 2, 4] and over["n_permutations"] == epoch_permutations(99, 4) == 799
        rows = {r["epoch"]: r for r in over["rows"]}
        # epoch 0 and the final epoch are the untrained control and the chain test, on the same split
        assert rows[0]["accuracy"] == e["htt"]["untrained"]["accuracy"]
        assert rows[4]["accuracy"] == e["htt"]["chain"]["accuracy"]
        first = over["first_significant"]
        assert first == min((r["epoch"] for r in over["rows"] if r["significant"]), default=None)
        assert f"{arch}: " + ("no epoch is significant" if first is None else f"first significant epoch: **{first}**") in md
    assert "Holm-corrected at family-wise α = 0.01 over the 4 epochs" in md
    # the middle epochs' features are cached, one file per run and epoch, and bound to it
    uris = sorted(u for u in tables.list_runs(analyzed) if "arch=mlp/" in u)
    p = representations.plan(analyzed, "mlp", uris)
    files = [f for f in representations.open_store(analyzed).glob("features/**/*.parquet") if "arch=mlp/" in f]
    assert sum("-e1-" in f for f in files) == sum("-e2-" in f for f in files) == len(uris)
    before = dict(representations.epoch_matrices(analyzed, p, [1, 2], range(len(uris))))
    victim = next(f for f in files if "-e2-" in f)
    open(f"{analyzed}/{victim}", "wb").write(b"garbage")  # a damaged cache file is recomputed, not used
    again = dict(representations.epoch_matrices(analyzed, p, [1, 2], range(len(uris))))
    assert all((before[e] == again[e]).all() for e in (1, 2))
    assert open(f"{analyzed}/{victim}", "rb").read() != b"garbage"


def test_bad_tables_fail_analyze_or_are_skipped(analyzed, tmp_path):
    import shutil

    store = str(tmp_path / "copy")
    shutil.copytree(analyzed, store)
    uri = sorted(tables.list_runs(store))[3]
    data = open(uri, "rb").read()
    open(uri, "wb").write(data[: len(data) // 3])
    p = subprocess.run([EXE, "analyze", *ARGS, "--store", store], capture_output=True, text=True, timeout=600)
    assert p.returncode == 2 and uri in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = subprocess.run([EXE, "analyze", *ARGS, "--store", store, "--skip-bad"], capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    s = json.load(open(f"{store}/reports/digits/small/summary.json"))
    bad = [u for e in s["archs"].values() for u in e["bad_runs"]]
    assert bad == [uri]
    assert main(["report", *ARGS, "--store", store]) == 0
    assert uri in open(f"{store}/reports/digits/small/report.md").read()


def test_a_report_never_mixes_two_analyses_or_other_options(analyzed, tmp_path, capsys, monkeypatch):
    import shutil

    from weightsim.errors import StoreError
    from weightsim.store import LocalStore

    store = str(tmp_path / "copy")
    shutil.copytree(analyzed, store)
    folder = f"{store}/reports/digits/small"
    args = [*ARGS, "--store", store]
    # an analysis that fails before its summary (disk full) leaves the previous one whole and usable
    real_put = LocalStore.put_bytes

    def full_at_summary(self, key, data):
        if key.endswith("summary.json"):
            raise StoreError("store is not usable: No space left on device", transient=False)
        return real_put(self, key, data)

    monkeypatch.setattr(LocalStore, "put_bytes", full_at_summary)
    assert main(["analyze", *args[:-4], "--permutations", "199", *args[-4:]]) == 2
    assert "No space left" in capsys.readouterr().err
    monkeypatch.setattr(LocalStore, "put_bytes", real_put)
    assert all(os.path.exists(f"{store}/{ref['key']}")  # the failed run replaced none of the arrays in use
               for ref in json.load(open(f"{folder}/summary.json"))["arrays"].values())
    os.remove(f"{folder}/report.md")
    assert main(["report", *args]) == 0
    assert json.load(open(f"{folder}/summary.json"))["archs"]["mlp"]["htt"]["chain"]["n_permutations"] == 99
    # options that do not match the analysis are refused, not rendered
    capsys.readouterr()
    assert main(["report", *args[:2], "--archs", "mlp", *args[4:]]) == 2
    assert "sweep small was recorded with other archs" in capsys.readouterr().err
    shutil.rmtree(f"{store}/sweeps")  # without its record, the options are checked against the analysis itself
    assert main(["report", *args[:2], "--archs", "mlp", *args[4:]]) == 2
    assert "covers archs mlp, rnn, rnn-tanh, not mlp" in capsys.readouterr().err
    # arrays that are not the summary's, a missing arrays file, a truncated summary: exit 2, one line each
    os.remove(f"{folder}/report.md")
    named = json.load(open(f"{folder}/summary.json"))["arrays"]["rnn"]["key"]
    os.remove(f"{store}/{named}")
    assert main(["report", *args]) == 2
    assert "do not belong to its summary" in capsys.readouterr().err
    data = open(f"{folder}/summary.json", "rb").read()
    open(f"{folder}/summary.json", "wb").write(data[: len(data) // 2])
    assert main(["report", *args]) == 2
    err = capsys.readouterr().err
    assert "summary.json is damaged" in err and err.count("\n") == 1


def test_analyze_without_runs_is_a_clear_error(tmp_path, capsys):
    assert main(["analyze", *ARGS, "--store", str(tmp_path)]) == 2
    assert "run 'weightsim train'" in capsys.readouterr().err
    assert main(["report", *ARGS, "--store", str(tmp_path)]) == 2
    assert "no analysis of sweep '" in capsys.readouterr().err


@pytest.mark.slow
def test_digits_mlp_ten_problems_twelve_seeds(tmp_path):
    store = str(tmp_path)
    assert main(["run", "--archs", "mlp", "--problems", "10", "--seeds", "12", "--store", store, "--sweep", "s"]) == 0
    e = json.load(open(f"{store}/reports/digits/s/summary.json"))["archs"]["mlp"]
    assert e["htt"]["chain"]["accuracy"] >= 0.9 and e["htt"]["chain"]["p_permutation"] <= 0.01
    assert e["htt"]["untrained"]["p_permutation"] >= 0.05 and not e["leak"]
    assert "raw" in e["htt"]


@pytest.mark.slow
def test_seventy_one_vs_rest_problems_of_three_seeds(tmp_path):
    """More problems than the pairwise sample holds 2 runs of each (it kept 1
    each above 60 and the analysis failed): the whole pipeline on 70
    one-vs-rest problems × 3 seeds reports all 70, and what was sampled."""
    store = str(tmp_path)
    assert main(["run", "--dataset", "synthetic:classes=70,shape=6,train=6,test=4", "--problem-kind", "ovr",
                 "--problems", "70", "--seeds", "3", "--archs", "mlp", "--epochs", "1", "--permutations", "99",
                 "--sweep", "many", "--store", store]) == 0
    e = json.load(open(f"{store}/reports/synthetic/many/summary.json"))["archs"]["mlp"]
    assert e["n_problems"] == 70 and e["n_runs"] == 210 and e["htt"]["chain"]["n_test"] == 70
    assert e["function"]["pairwise_sample"] == "2 runs of each of 60 of 70 problems (120 of 210 runs)"
    assert e["retrieval"]["n_queries"] > 0
    assert "2 runs of each of 60 of 70 problems" in open(f"{store}/reports/synthetic/many/report.md").read()
