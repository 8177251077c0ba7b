# weightsim CUDA worker image: PyTorch with CUDA, the project installed, non-root user.
# Build from the project root:  docker build -f docker/cuda.Dockerfile -t weightsim-worker:cuda .
# Run flow containers with GPUs: the weightsim-gpu work pool in deployments/prefect.yaml
# passes a device request for all GPUs (needs the NVIDIA container toolkit on the host).
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
RUN useradd --create-home --uid 1000 weightsim
WORKDIR /opt/weightsim
COPY pyproject.toml README.md ./
COPY weightsim ./weightsim
COPY tasks ./tasks
COPY flows ./flows
COPY deployments ./deployments
RUN pip install ".[dask,mnist1d,zoo]" prefect-docker && mkdir -p /data && chown weightsim /data
USER weightsim
ENV PREFECT_HOME=/home/weightsim/.prefect WEIGHTSIM_STORE=/data/store
CMD ["prefect", "worker", "start", "--pool", "weightsim-gpu", "--type", "docker"]
