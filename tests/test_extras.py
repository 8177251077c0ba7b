"""Optional dependencies: a feature whose extra is not installed answers in
one line naming the extra to install, never with an ImportError."""
from __future__ import annotations

import importlib.metadata
import sys

import pytest

from weightsim import datasets
from weightsim.datasets import builtins
from weightsim.errors import WeightsimError
from weightsim.extras import require


def _uninstall(monkeypatch, *modules: str) -> None:
    """Make ``modules`` (and their submodules already imported) unimportable."""
    for name in modules:
        for loaded in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
            monkeypatch.setitem(sys.modules, loaded, None)
        monkeypatch.setitem(sys.modules, name, None)


def test_require_returns_the_module_or_names_the_extra(monkeypatch):
    assert require("json", "dev", "x") is sys.modules["json"]
    _uninstall(monkeypatch, "safetensors")
    with pytest.raises(WeightsimError) as exc:
        require("safetensors.torch", "zoo", "weightsim import")
    assert str(exc.value) == "weightsim import needs the zoo extra: pip install 'weightsim[zoo]'"


def test_mnist1d_without_its_extra_is_one_line_exit_2(monkeypatch, tmp_path, capsys):
    from flows.cli import main

    real_version = importlib.metadata.version

    def version(package):
        if package == "mnist1d":
            raise importlib.metadata.PackageNotFoundError(package)
        return real_version(package)

    _uninstall(monkeypatch, "mnist1d")
    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setenv("WEIGHTSIM_CACHE", str(tmp_path / "cache"))
    builtins._mnist1d.cache_clear()
    try:
        with pytest.raises(WeightsimError, match=r"^the built-in dataset mnist1d needs the mnist1d extra: "
                                                 r"pip install 'weightsim\[mnist1d\]'$"):
            datasets.load_dataset("mnist1d")
        code = main(["train", "--dataset", "mnist1d", "--store", str(tmp_path / "s")])
    finally:
        builtins._mnist1d.cache_clear()
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "the built-in dataset mnist1d needs the mnist1d extra: pip install 'weightsim[mnist1d]'" in err
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").rglob("*.json"))  # refused before recording


@pytest.mark.parametrize("missing,call,runner", [
    ("prefect_dask", lambda m: m.task_runner("dask"), "dask"),
    ("prefect_dask", lambda m: m.task_runner("tcp://127.0.0.1:8786"), "tcp://127.0.0.1:8786"),
    ("distributed", lambda m: m.gpu_cluster(1), "dask"),
    ("dask", lambda m: m._gpu_annotation("cuda", "tcp://127.0.0.1:8786"), "tcp://127.0.0.1:8786"),
])
def test_dask_runner_without_its_extra_names_it(monkeypatch, missing, call, runner):
    from flows import train_sweep

    _uninstall(monkeypatch, missing)
    with pytest.raises(WeightsimError) as exc:
        call(train_sweep)
    assert str(exc.value) == f"--runner {runner} needs the dask extra: pip install 'weightsim[dask]'"
    assert train_sweep.task_runner("local") is not None  # the local runner needs no extra


def test_zoo_import_without_its_extra_names_it(monkeypatch, tmp_path):
    from weightsim.zoo import load_tensors

    _uninstall(monkeypatch, "safetensors")
    with pytest.raises(WeightsimError, match=r"^weightsim import needs the zoo extra: pip install 'weightsim\[zoo\]'$"):
        load_tensors(str(tmp_path / "net.safetensors"), None, {})


def test_a_dask_runner_without_its_extra_is_refused_before_anything_is_recorded(monkeypatch, tmp_path, capsys):
    from flows.cli import main

    _uninstall(monkeypatch, "prefect_dask")
    store = tmp_path / "s"
    assert main(["train", "--archs", "mlp", "--problems", "2", "--seeds", "11", "--epochs", "1", "--runner", "dask",
                 "--store", str(store)]) == 2
    assert capsys.readouterr().err == ("weightsim: error: --runner dask needs the dask extra: "
                                       "pip install 'weightsim[dask]'\n")
    assert not (store / "sweeps").exists()
