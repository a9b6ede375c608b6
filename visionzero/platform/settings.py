"""Every environment variable the project reads, in one typed settings object.

Nothing is required: with no configuration every store lives in the git-ignored `.vz/` folder of the
repository. Tests point VZ_HOME and VZ_DATA_DIR at temporary folders so they never touch a user's
stores. The README's configuration table is generated from this class (`environment_table`).

VZ_HOME and VZ_DATA_DIR are made absolute when read (a relative one against the current folder),
and `configure_environment` exports them so: a child that runs elsewhere (a model server runs in
its Bento's folder, where `REPO_ROOT` is the Bento's) uses the same stores as the command that
started it. Children get `child_environment()`: an allowlist, never our secrets.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from visionzero.platform.stage import Stage

REPO_ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT_DIR = REPO_ROOT / "snapshot"
MODEL_NAME = "nyc_crash_risk"  # the ZenML Model, the MLflow registered model and the Bento model
SOCRATA_DEFAULT_URL = "https://data.cityofnewyork.us/resource/h9gi-nx95.json"
NOAA_DEFAULT_URL = "https://www.ncei.noaa.gov/access/services/data/v1"
# A built Bento holds this code under `<bento>/src/` next to `<bento>/bento.yaml`.
BENTO_ROOT = REPO_ROOT.parent if (REPO_ROOT.parent / "bento.yaml").is_file() else None


class Settings(BaseSettings):
    """Field name = environment variable (upper-cased). Secrets are SecretStr: never printed."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    vz_home: Path = Field(
        REPO_ROOT / ".vz",
        description="project state: ZenML store, MLflow store "
        "(SQLite), Bento store, DVC remote, deployment state, alert outbox, prediction log; a "
        "relative path is taken from the current folder and passed on to children absolute",
    )
    vz_data_dir: Path = Field(
        REPO_ROOT / "data", description="the versioned dataset (Parquet), tracked by `data.dvc`"
    )
    zenml_config_path: Path | None = Field(
        None, description="ZenML's client configuration and local store (default `$VZ_HOME/zenml`)"
    )
    zenml_store_url: str | None = Field(
        None, description="a ZenML server instead of the local store"
    )
    zenml_store_api_key: SecretStr | None = Field(None, description="API key for that ZenML server")
    mlflow_tracking_uri: str | None = Field(
        None,
        description="an MLflow server instead of the local SQLite store under the ZenML store; "
        "read when the stack is first registered",
    )
    mlflow_tracking_username: str | None = Field(None, description="MLflow server user")
    mlflow_tracking_password: SecretStr | None = Field(None, description="MLflow server password")
    mlflow_tracking_token: SecretStr | None = Field(None, description="MLflow server token")
    bentoml_home: Path | None = Field(
        None, description="the Bento and model store (default `$VZ_HOME/bentoml`)"
    )
    socrata_url: str = Field(SOCRATA_DEFAULT_URL, description="where the loader fetches crashes")
    socrata_app_token: SecretStr | None = Field(
        None, description="sent as `X-App-Token` to NYC Open Data"
    )
    noaa_url: str = Field(NOAA_DEFAULT_URL, description="where the loader fetches weather")
    discord_webhook_url: SecretStr | None = Field(
        None,
        description="Discord webhook for deploy decisions, promote, rollback and pipeline "
        "failures; unset, alerts are printed and appended to `$VZ_HOME/outbox.jsonl`",
    )
    vz_deploy_target: Literal["local", "kubernetes"] = Field(
        "local",
        description="`kubernetes`: render manifests, containerize and push, `kubectl apply`",
    )
    vz_registry: str = Field(
        "localhost:5000/visionzero",
        description="container registry for the Bento images and (with "
        "`VZ_ORCHESTRATOR=kubernetes`) the pipelines image",
    )
    kubeconfig: str | None = Field(
        None, description="cluster to apply to (with `VZ_DEPLOY_TARGET=kubernetes`)"
    )
    vz_k8s_namespace: str = Field("visionzero", description="namespace of the manifests")
    vz_k8s_host: str = Field("crash-risk.example.org", description="host of the Ingress and route")
    vz_k8s_gateway: str = Field("public-gateway", description="Gateway API parent of the route")
    vz_orchestrator: Literal["local", "kubernetes"] = Field(
        "local",
        description="`kubernetes`: the pipelines run on ZenML's Kubernetes orchestrator in "
        "`VZ_K8S_NAMESPACE` (stack `visionzero_k8s`, see Rollout: Beyond one machine); needs "
        "`ZENML_STORE_URL`, `MLFLOW_TRACKING_URI` and `VZ_ARTIFACT_STORE_URI`",
    )
    vz_kubernetes_context: str | None = Field(
        None,
        description="kubeconfig context the orchestrator submits runs to; unset: the cluster "
        "it runs in (a CronJob pod)",
    )
    vz_artifact_store_uri: str | None = Field(
        None, description="`s3://bucket/path`: ZenML's artifact store on S3 or MinIO"
    )
    vz_s3_endpoint_url: str | None = Field(
        None,
        description="an S3-compatible endpoint (MinIO) for the artifact store and the DVC "
        "remote; unset: AWS S3",
    )
    aws_access_key_id: SecretStr | None = Field(
        None,
        description="S3 key for the artifact store and the DVC remote; copied into the ZenML "
        "secret `visionzero_k8s` the artifact store reads",
    )
    aws_secret_access_key: SecretStr | None = Field(None, description="... and its secret")
    vz_pipeline_image: str | None = Field(
        None,
        description="a pushed pipelines image (`container/pipelines.Dockerfile`) the step pods "
        "run as it is; unset: ZenML builds it here (Docker) and pushes it to `VZ_REGISTRY`",
    )
    vz_dvc_remote: str | None = Field(
        None,
        description="where data versions are pushed and pulled (`s3://bucket/dvc`, or a "
        "folder); unset: `$VZ_HOME/dvc-remote`",
    )
    vz_stage: Stage = Field(
        Stage.PRODUCTION, description="role of one Bento process (set by `serve` and the manifests)"
    )
    vz_max_body_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="largest request body the edge (nginx, Ingress) and each backend accept; "
        "larger ones are refused with 413 before they are parsed (a 10,000-item `/predict` body "
        "is about 1 MB)",
    )
    vz_zones_cache_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="bytes of map layers (`/zones`, plain and gzipped) one worker keeps; the "
        "least recently asked go first (a resolution-9 day: ~6 MB plus its gzip)",
    )
    vz_edge_rate_per_second: int = Field(
        50,
        ge=1,
        description="requests a second one client (IP address) may send through the edge (nginx, "
        "Ingress) before it is answered 429; a person's map page sends ~10 at once, side by side "
        "~20, then a few a click",
    )
    vz_edge_burst: int = Field(
        200,
        ge=0,
        description="requests one client may send at once above that rate (answered without "
        "delay) before the 429s: ten map pages loading together",
    )
    vz_edge_connections: int = Field(
        30,
        ge=1,
        le=65535,  # nginx's limit_conn refuses more
        description="connections one client may hold open at the edge (a browser opens 6 per "
        "host; several tabs and a script stay under it)",
    )
    vz_k8s_tls_secret: str = Field(
        "crash-risk-tls",
        description="Secret holding the Ingress's TLS certificate (cert-manager writes it)",
    )
    vz_k8s_cluster_issuer: str = Field(
        "letsencrypt",
        description="cert-manager ClusterIssuer that issues the Ingress's certificate",
    )
    vz_k8s_gateway_listener: str = Field(
        "https",
        description="the Gateway's HTTPS listener (sectionName) the route attaches to",
    )
    vz_workers: int = Field(2, ge=1, description="worker processes of one Bento")
    vz_access_log: bool = Field(False, description="BentoML access log")
    vz_metrics: bool = Field(True, description="Prometheus `/metrics`")
    vz_canary_warmup_seconds: float = Field(
        60.0,
        ge=0,
        description="a backend worker's /predict answers in its first seconds count apart "
        "(phase `warmup`) and not in the canary's health: a cold start cannot fake a slow model",
    )
    vz_prometheus_url: str | None = Field(
        None,
        description="Prometheus that scrapes both stages (Kubernetes, compose), for the canary's "
        "error rate and latency; unset: a running `serve --monitor`'s, else each backend's "
        "`/metrics`",
    )
    vz_pushgateway_url: str | None = Field(
        None,
        description="Prometheus Pushgateway the monitoring pipeline pushes its forward metrics and "
        "canary decision to (Grafana shows them); unset, nothing is pushed",
    )
    no_color: str | None = Field(
        None,
        description="any value: no colour codes in the output "
        "(no-color.org); off a terminal there are none anyway",
    )
    vz_tracing: bool = Field(
        False, description="OpenTelemetry tracing of `/predict` (costs throughput: see Serving)"
    )
    vz_prediction_log: str | None = Field(
        None,
        description="where every `/predict` answer is logged (see Serving): a directory (default "
        "`$VZ_HOME/predictions`), `stdout` (JSON lines, for a cluster's log shipper) or `off`",
    )
    vz_prediction_log_max_day_bytes: int = Field(
        256 * 1024 * 1024,
        ge=4096,
        description="bytes the prediction log keeps per stage and UTC day, all workers together "
        "(about a million one-item answers); rows past it are dropped and counted in "
        '`crash_risk_prediction_log_dropped{reason="day_cap"}`',
    )
    vz_prediction_log_keep_days: int = Field(
        100,
        ge=1,
        description="UTC days of prediction log kept per stage (today included); older day "
        "folders are deleted by the writer. The monitor reads the last 90",
    )
    vz_test_artifacts: Path = Field(
        REPO_ROOT / "test-artifacts",
        description="where the browser tests and `benchmarks/map_page.py` save screenshots "
        "(git-ignored)",
    )

    @field_validator("vz_home", "vz_data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        """Resolved once, here: a relative path means the current folder of the reader."""
        return value.expanduser().resolve()

    @field_validator("vz_prediction_log")
    @classmethod
    def _absolute_log(cls, value: str | None) -> str | None:
        """A folder is made absolute like VZ_HOME; `stdout`, `off` and unset stay as they are."""
        if value is None or value.strip().lower() in ("", "off", "stdout"):
            return value
        return str(Path(value).expanduser().resolve())


# What a child process (model server, nginx, Prometheus) may inherit: what they need to run,
# never a credential. A name that matches SECRET_NAME is left out even when allowed.
CHILD_ENV_NAMES = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TERM", "NO_COLOR",
        "TMPDIR", "TMP", "TEMP", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "SSL_CERT_FILE",
        "SSL_CERT_DIR", "KERAS_BACKEND", "XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS", "PYTHONPATH", "PYTHONHASHSEED", "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE", "PYTHONWARNINGS", "PYTHONIOENCODING", "PYTHONUTF8",
    }
)  # fmt: skip
CHILD_ENV_PREFIXES = ("LC_", "BENTOML_", "OTEL_", "JAX_", "VZ_")
SECRET_NAME = re.compile(
    r"TOKEN|PASSWORD|PASSWD|SECRET|_KEY|KEY_|CREDENTIAL|WEBHOOK|^AWS_|^DISCORD_|^MLFLOW_TRACKING_"
)


def child_environment(
    extra: Mapping[str, str] | None = None, source: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The allowlisted part of `source` (default: ours), `extra` on top: a model server, nginx or
    Prometheus needs no credential, and a worker's environ is readable by anyone who gets code to
    run in it. VZ_* settings held as secrets are left out by name as well as by pattern."""
    environ = os.environ if source is None else source
    secret_settings = {
        name.upper()
        for name, field in Settings.model_fields.items()
        if SecretStr in (field.annotation, *getattr(field.annotation, "__args__", ()))
    }
    kept = {
        name: value
        for name, value in environ.items()
        if (name in CHILD_ENV_NAMES or name.startswith(CHILD_ENV_PREFIXES))
        and not SECRET_NAME.search(name)
        and name not in secret_settings
    }
    return {**kept, **(extra or {})}


# Set by `serve` for a backend: the request id of its own check, which is not logged. A tag, not a
# setting: it is random per serve, so no client can hide its requests behind it.
UNLOGGED_REQUEST_ID = "VZ_UNLOGGED_REQUEST_ID"


def unlogged_request_id() -> str | None:
    """The request id this model server must not log (`serve`'s check), if any."""
    return os.environ.get(UNLOGGED_REQUEST_ID) or None


def settings() -> Settings:
    """Read the environment now (tests change it between calls)."""
    return Settings()


def environment_table() -> str:
    """The README's configuration table, generated so that code and docs cannot drift apart."""
    rows = ["| variable | default | what it does |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, Path):
            shown = f"`./{default.relative_to(REPO_ROOT)}`"
        elif default is None:
            shown = "unset"
        elif isinstance(default, bool):
            shown = f"`{int(default)}`"
        else:
            shown = f"`{default}`"
        rows.append(f"| `{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows)


@dataclass(frozen=True)
class Paths:
    """Locations of the local stores, under VZ_HOME unless configured otherwise."""

    home: Path
    data_dir: Path
    zenml: Path
    bentoml: Path
    dvc_remote: Path
    outbox: Path
    deployment_state: Path
    tuner_dir: Path
    data_summary: Path  # beside the stores, not in data/: the DVC hash depends on the data alone
    backfill: Path  # fetched backfill windows waiting to be merged, and their checkpoint


def paths() -> Paths:
    current = settings()
    home = current.vz_home.resolve()
    return Paths(
        home=home,
        data_dir=current.vz_data_dir.resolve(),
        zenml=home / "zenml",
        bentoml=home / "bentoml",
        dvc_remote=home / "dvc-remote",
        outbox=home / "outbox.jsonl",
        deployment_state=home / "deployment.json",
        tuner_dir=home / "tuner",
        data_summary=home / "data_summary.json",
        backfill=home / "backfill",
    )


def configure_environment() -> Paths:
    """Point ZenML, MLflow and BentoML at the project stores unless the user configured them.

    These are the libraries' own variables: they read them from the process environment. The
    umask makes every file this process and its children create (state, stores, logs) readable by
    its user alone: the ZenML store holds secrets, the outbox and logs name the deployment."""
    os.umask(0o077)
    p = paths()
    p.home.mkdir(parents=True, exist_ok=True)
    current = settings()
    os.environ["VZ_HOME"] = str(p.home)  # absolute: every child reads the same stores
    os.environ["VZ_DATA_DIR"] = str(p.data_dir)
    if current.vz_prediction_log is not None:
        os.environ["VZ_PREDICTION_LOG"] = current.vz_prediction_log
    os.environ["ZENML_CONFIG_PATH"] = str(current.zenml_config_path or p.zenml)
    os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
    os.environ.setdefault("ZENML_ENABLE_RICH_TRACEBACK", "false")
    os.environ.setdefault("ZENML_LOGGING_VERBOSITY", "INFO")
    os.environ["BENTOML_HOME"] = str(current.bentoml_home or p.bentoml)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("ZENML_AUTO_OPEN_DASHBOARD", "false")
    return p


if __name__ == "__main__":
    print(environment_table())
