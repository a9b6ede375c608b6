# The pipelines image: the project with its locked venv, and kubectl for the deployer's
# `kubectl apply --prune`. One image for the CronJobs (k8s/train-cronjob.yaml, monitor-cronjob.yaml)
# and the ZenML orchestrator and step pods (configs/kubernetes.yaml: ZenML builds it from here, or
# runs a pushed one named by VZ_PIPELINE_IMAGE as it is). Build from the repository root:
#   docker build -f container/pipelines.Dockerfile -t "$VZ_REGISTRY/pipelines:$(git rev-parse --short HEAD)" .
FROM python:3.11.13-slim-bookworm

# kubectl from the Kubernetes project's signed apt repository: Debian's kubernetes-client (1.20)
# predates --prune-allowlist. The minor version follows the cluster's (kubectl supports +-1).
ARG KUBECTL_MINOR=v1.33
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl gnupg \
 && install -m 0755 -d /etc/apt/keyrings \
 && curl -fsSL "https://pkgs.k8s.io/core:/stable:/${KUBECTL_MINOR}/deb/Release.key" \
    | gpg --dearmor -o /etc/apt/keyrings/kubernetes-apt-keyring.gpg \
 && echo "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/${KUBECTL_MINOR}/deb/ /" \
    > /etc/apt/sources.list.d/kubernetes.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends kubectl \
 && apt-get purge -y --auto-remove curl gnupg \
 && rm -rf /var/lib/apt/lists/*

# The locked dependencies first (a layer that changes only with the lock), installed as `make` does:
# uv, pinned in the lock itself, syncs the venv to it with every hash checked.
WORKDIR /app
COPY requirements.lock ./
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir uv==0.13.9 \
 && /opt/venv/bin/uv pip sync --no-cache --python /opt/venv/bin/python requirements.lock
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    KERAS_BACKEND=jax \
    ZENML_ANALYTICS_OPT_IN=false \
    ZENML_ENABLE_RICH_TRACEBACK=false \
    DVC_NO_ANALYTICS=1 \
    BENTOML_DO_NOT_TRACK=true \
    PYTHONUNBUFFERED=1

# The project (.dockerignore keeps out the stores, the data and the venv). /app is ZenML's working
# directory in its images; the pods run as this user (runAsUser 1034) and write there.
COPY . .
RUN groupadd --gid 1034 visionzero \
 && useradd --uid 1034 --gid 1034 --create-home --home-dir /home/visionzero visionzero \
 && chown -R 1034:1034 /app
USER 1034:1034
CMD ["python", "run.py", "--help"]
