"""What deployments are made of, checked without a server: prefect.yaml
(no pull step, module-path entrypoints that import, the watcher one run at a
time), the flows' parameter schemas (descriptions, allowed values), the GPU
work-pool templates (prefect-kubernetes' and prefect-docker's own, plus the
GPU request, rendered by the packages' job configurations; no cluster or
Docker daemon needed), and the worker's devices."""
import json
import os

import pytest
import yaml

from weightsim.errors import WeightsimError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name: str) -> dict:
    with open(os.path.join(ROOT, "deployments", name)) as f:
        return json.load(f)


def _render(cls, template: dict, values: dict):
    """The worker's job configuration of a pool with ``template`` for a run
    with job variables ``values`` (how a worker fills the template, less the
    server's block and variable references, which these templates have none of)."""
    from prefect.utilities.templating import apply_values

    props = template["variables"]["properties"]
    defaults = {k: v["default"] for k, v in props.items() if "default" in v}
    return cls(**apply_values(template["job_configuration"], {**defaults, **values}))


def _container(template: dict) -> dict:
    return template["job_manifest"]["spec"]["template"]["spec"]["containers"][0]


def test_kubernetes_pool_template_asks_one_gpu_per_flow_run():
    from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

    ours, base = _load("kubernetes-gpu-pool.json"), KubernetesWorker.get_default_base_job_template()
    assert set(ours["variables"]["properties"]) == set(base["variables"]["properties"]) | {"gpus"}
    limits = _container(ours["job_configuration"])["resources"]["limits"]
    assert limits == {**_container(base["job_configuration"])["resources"]["limits"], "nvidia.com/gpu": "{{ gpus }}"}
    config = _render(KubernetesWorkerJobConfiguration, ours, {})
    assert _container(config.model_dump())["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert _container(config.model_dump())["image"] == "weightsim-worker:cuda"
    config = _render(KubernetesWorkerJobConfiguration, ours, {"gpus": 2})
    assert _container(config.model_dump())["resources"]["limits"]["nvidia.com/gpu"] == 2


def test_docker_pool_template_keeps_the_gpu_request():
    from prefect_docker.worker import DockerWorker, DockerWorkerJobConfiguration

    ours, base = _load("docker-gpu-pool.json"), DockerWorker.get_default_base_job_template()
    assert ours["job_configuration"] == base["job_configuration"]
    assert set(ours["variables"]["properties"]) == set(base["variables"]["properties"])
    config = _render(DockerWorkerJobConfiguration, ours, {})
    assert config.container_create_kwargs == {
        "device_requests": [{"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]}
    assert config.image == "weightsim-worker:cuda"


def test_prefect_yaml_runs_the_installed_package_from_any_folder():
    from prefect.flows import load_flow_from_entrypoint

    with open(os.path.join(ROOT, "deployments", "prefect.yaml")) as f:
        spec = yaml.safe_load(f)
    assert spec["pull"] == []  # none: `pull: null` would store the deploying folder
    for d in spec["deployments"]:
        assert ":" not in d["entrypoint"] and load_flow_from_entrypoint(d["entrypoint"]).name
        assert "PREFECT_CLIENT_RETRY_EXTRA_CODES" in d["work_pool"]["job_variables"]["env"]
    (watcher,) = [d for d in spec["deployments"] if d["name"] == "watch-datasets"]
    assert watcher["concurrency_limit"] == 1


def test_parameter_schemas_describe_and_restrict_the_options():
    from prefect.utilities.callables import parameter_schema

    from flows.datasets import on_new_dataset
    from flows.fanout import train_chunk_run
    from flows.pipeline import pipeline

    props = parameter_schema(pipeline).model_dump_for_openapi()["properties"]
    assert all(p.get("description") for p in props.values())
    assert {k: props[k]["enum"] for k in ("device", "engine", "precision", "problem_kind")} == {
        "device": ["auto", "cpu", "cuda"], "engine": ["batched", "loop"], "precision": ["fp32", "tf32", "bf16"],
        "problem_kind": ["pairs", "groups", "ovr"]}
    overrides = parameter_schema(on_new_dataset).model_dump_for_openapi()["properties"]["overrides"]
    assert {t["type"] for t in overrides["anyOf"]} == {"object", "string"}  # an event may send either
    assert all(p.get("description") for p in parameter_schema(train_chunk_run).model_dump_for_openapi()[
        "properties"].values())


def test_worker_devices_and_environment(monkeypatch):
    from flows.worker import devices, worker_env
    from weightsim.placement import placement

    assert devices(None, 3) == ["cpu0", "cpu1", "cpu2"]
    with pytest.raises(WeightsimError, match="--cpus must be between"):
        devices(None, 0)
    with pytest.raises(WeightsimError, match="no GPU is visible"):  # this machine has none
        devices("0,1", None)
    env = worker_env("lab1-gpu2", "2", 8)
    assert env["CUDA_VISIBLE_DEVICES"] == "2" and env["WEIGHTSIM_DEVICE_INDEX"] == "2"
    assert env["WEIGHTSIM_WORKER"] == "lab1-gpu2" and "500" in env["PREFECT_CLIENT_RETRY_EXTRA_CODES"]
    for name in ("WEIGHTSIM_WORKER", "WEIGHTSIM_DEVICE_INDEX", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.setenv(name, env[name])
    assert placement("cuda")["device_index"] == "2" and placement("cuda")["worker"] == "lab1-gpu2"
    monkeypatch.delenv("WEIGHTSIM_WORKER")
    monkeypatch.delenv("WEIGHTSIM_DEVICE_INDEX")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # no worker: the GPU's index as the host numbers it
    assert placement("cuda:1") == {**placement("cpu"), "device_index": "5", "worker": "local"}
    cpu = worker_env("lab1-cpu0", "cpu0", 2)
    assert cpu["CUDA_VISIBLE_DEVICES"] == "" and cpu["WEIGHTSIM_DEVICE_INDEX"] == "cpu"


def test_dask_gpu_cluster_gives_each_worker_one_device():
    """One Dask worker per GPU, each seeing only its own (run here on the CPU:
    the environment is what a GPU host would get)."""
    from distributed import Client

    from flows.train_sweep import gpu_cluster

    with gpu_cluster(2) as cluster, Client(cluster) as client:
        seen = client.run(lambda: {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "WEIGHTSIM_WORKER")})
        assert sorted(seen.values(), key=str) == [{"CUDA_VISIBLE_DEVICES": "0", "WEIGHTSIM_WORKER": "dask-gpu0"},
                                                  {"CUDA_VISIBLE_DEVICES": "1", "WEIGHTSIM_WORKER": "dask-gpu1"}]
        assert all(w["resources"] == {"GPU": 1} for w in client.scheduler_info()["workers"].values())
