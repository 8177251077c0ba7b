# weightsim CPU image: the project installed, run as a non-root user.
# Build from the project root:  docker build -f docker/cpu.Dockerfile -t weightsim-worker:cpu .
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
RUN useradd --create-home --uid 1000 weightsim
WORKDIR /opt/weightsim
# the CPU build of torch first, so the project's torch>=2.4 is already satisfied
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.4"
COPY pyproject.toml README.md ./
COPY weightsim ./weightsim
COPY tasks ./tasks
COPY flows ./flows
COPY deployments ./deployments
RUN pip install ".[dask,mnist1d,zoo]" && mkdir -p /data && chown weightsim /data
USER weightsim
ENV PREFECT_HOME=/home/weightsim/.prefect WEIGHTSIM_STORE=/data/store
CMD ["prefect", "worker", "start", "--pool", "weightsim-cpu"]
