"""The store against a real S3 endpoint (moto's server on 127.0.0.1)."""
import pytest
import torch

from weightsim import query, tables
from weightsim.archs import build
from weightsim.store import open_store
from flows.cli import main

from faults import put_many_then_fail

pytestmark = pytest.mark.usefixtures("prefect_api")  # runs flows: the session's Prefect server


def test_train_into_s3_read_back_and_skip(s3_bucket, capsys):
    store = f"{s3_bucket}/sweeps/a"
    args = ["train", "--partial", "--dataset", "digits", "--archs", "mlp,gru", "--problems", "2", "--seeds", "2",
            "--epochs", "2", "--store", store]
    assert main(args) == 0
    uris = tables.list_runs(store)
    assert len(uris) == 8 and all(u.startswith(store + "/weights/dataset=digits/") for u in uris)
    for u in uris:
        run = tables.read_run(u)
        build(run.spec).load_state_dict(run.state_dict)
        assert torch.isfinite(run.state_dict["out.weight"]).all()
    df = query.query(store)
    assert len(df) == 8 and set(df.arch) == {"mlp", "gru"} and all(df.uri.str.startswith("s3://"))
    capsys.readouterr()
    assert main(args) == 0
    assert "0 trained, 8 already there" in capsys.readouterr().out


def test_unreachable_s3_store_is_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    rc = main(["train", "--partial", "--archs", "mlp", "--problems", "2", "--seeds", "2", "--epochs", "1",
               "--store", "s3://nobucket/x"])
    err = capsys.readouterr().err
    assert rc == 2 and "s3://nobucket/x" in err and len(err.strip().splitlines()) == 1


def test_put_many_on_s3_writes_in_order_and_keeps_what_came_before_an_error(s3_bucket):
    st = open_store(f"{s3_bucket}/pm")
    uris = st.put_many(((f"weights/q/o{i}.bin", bytes([i]) * (i + 1)) for i in range(20)), workers=4)
    assert uris == [f"{s3_bucket}/pm/weights/q/o{i}.bin" for i in range(20)]
    assert all(st.get_bytes(f"weights/q/o{i}.bin") == bytes([i]) * (i + 1) for i in range(20))
    put_many_then_fail(st, 5)
    st.invalidate()
    assert st.glob("weights/p/*") == [f"weights/p/o{i}.bin" for i in range(5)]
