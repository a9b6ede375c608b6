"""The team compose set-up cannot run here (no Docker engine).

Its files are parsed and cross-checked.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from visionzero.rollout.nginx import render_container_nginx_conf
from visionzero.rollout.prometheus import render_container_prometheus_config

CONTAINER = ROOT / "container"
FORWARD_GAUGES = (
    "crash_risk_forward_deviance",
    "crash_risk_forward_hit_rate_at_10",
    "crash_risk_canary_decision",
)


def compose() -> dict:
    return yaml.safe_load((CONTAINER / "docker-compose.yml").read_text())


def test_compose_has_the_team_services() -> None:
    services = compose()["services"]
    assert {
        "zenml",
        "mlflow",
        "postgres",
        "minio",
        "minio-buckets",
        "prometheus",
        "grafana",
        "crash-risk-production",
        "crash-risk-staging",
        "canary",
    } <= set(services)
    assert (
        "postgresql://" in services["mlflow"]["command"]
        and "s3://mlflow" in services["mlflow"]["command"]
    )
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "local/dvc" in services["minio-buckets"]["entrypoint"]  # MinIO is the DVC remote too
    assert services["crash-risk-production"]["environment"]["VZ_STAGE"] == "production"
    assert services["crash-risk-staging"]["environment"]["VZ_STAGE"] == "staging"
    assert (CONTAINER / services["mlflow"]["build"]["dockerfile"]).exists()


def test_no_secret_is_committed() -> None:
    secret = re.compile(r"PASSWORD|SECRET|ROOT_USER|ACCESS_KEY")
    checked = 0
    for service in compose()["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if secret.search(key):
                assert str(value).startswith("${"), f"{key} must come from the environment"
                checked += 1
    assert checked >= 6
    text = (CONTAINER / "docker-compose.yml").read_text().lower()
    assert "minioadmin" not in text and "changeme" not in text


def test_prometheus_scrapes_both_bentos_and_the_pushgateway() -> None:
    config = yaml.safe_load((CONTAINER / "prometheus" / "prometheus.yml").read_text())
    job, pushgateway = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert pushgateway["honor_labels"] is True  # the monitor's own `stage` label survives
    (gateway,) = pushgateway["static_configs"][0]["targets"]
    assert gateway.split(":")[0] in compose()["services"]
    assert gateway.split(":")[1] in compose()["services"]["pushgateway"]["ports"][0]
    targets = {c["labels"]["stage"]: c["targets"][0] for c in job["static_configs"]}
    assert targets == {
        "production": "crash-risk-production:3000",
        "staging": "crash-risk-staging:3000",
    }
    services = compose()["services"]
    assert all(t.split(":")[0] in services for t in targets.values())


def test_grafana_compares_latency_errors_and_risk_mix_by_stage() -> None:
    datasource = yaml.safe_load(
        (CONTAINER / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    dashboard = json.loads((CONTAINER / "grafana/dashboards/crash_risk_canary.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert all("by (stage" in e for e in exprs)
    assert any(
        "histogram_quantile(0.99" in e and "request_duration_seconds_bucket" in e for e in exprs
    )
    assert any('http_response_code=~"5.."' in e for e in exprs)
    assert any("crash_risk_predictions_total" in e and "risk_level" in e for e in exprs)
    for gauge in FORWARD_GAUGES:  # pushed by the monitoring pipeline
        assert any(gauge in e for e in exprs), gauge
    for expr in exprs:
        assert expr.count("(") == expr.count(")")


def test_compose_prometheus_is_rendered_from_the_local_template() -> None:
    assert (
        CONTAINER / "prometheus" / "prometheus.yml"
    ).read_text() == render_container_prometheus_config(), (
        "container/prometheus/prometheus.yml is stale: run `make prometheus-conf`"
    )


def test_compose_canary_is_50_50() -> None:
    conf = (CONTAINER / "nginx" / "canary.conf").read_text()
    assert re.search(r"50% staging;\s*\* production;", conf)


def test_compose_canary_is_rendered_from_the_local_canary_template() -> None:
    assert (CONTAINER / "nginx" / "canary.conf").read_text() == render_container_nginx_conf(), (
        "container/nginx/canary.conf is stale: run `make nginx-conf`"
    )


def test_every_published_port_is_bound_to_loopback() -> None:
    """Nothing of the team set-up listens on the network: MLflow, the Pushgateway, Prometheus,
    MinIO and ZenML are this machine's (a tunnel or a TLS proxy reaches them from elsewhere)."""
    published = 0
    for name, service in compose()["services"].items():
        for port in service.get("ports") or []:
            published += 1
            if isinstance(port, dict):  # the long syntax
                assert port.get("host_ip") == "127.0.0.1", name
            else:
                assert str(port).startswith("127.0.0.1:") and str(port).count(":") == 2, name
    assert published >= 8


# major.minor.patch (Postgres numbers its releases major.minor), a MinIO release, or a digest
EXACT_TAG = re.compile(
    r"([a-z0-9./-]+:(v?\d+\.\d+\.\d+[a-z0-9.-]*|RELEASE\.[0-9TZ-]+)"
    r"|postgres:\d+\.\d+(-[a-z]+)?)(@sha256:[0-9a-f]{64})?"
    r"|[a-z0-9./-]+@sha256:[0-9a-f]{64}"
)


def test_images_are_pinned_by_exact_tag_or_digest() -> None:
    """No `latest`, no floating major or minor: a pull tomorrow gets today's image. The Bento
    images come from the environment (the deployment's own tags)."""
    images = [s["image"] for s in compose()["services"].values() if "image" in s]
    pinned = [image for image in images if not image.startswith("${")]
    assert len(pinned) >= 8
    for image in pinned:
        assert EXACT_TAG.fullmatch(image), image
    for dockerfile in CONTAINER.glob("*.Dockerfile"):
        for base in re.findall(r"^FROM (\S+)", dockerfile.read_text(), re.M):
            assert EXACT_TAG.fullmatch(base), (dockerfile.name, base)
    for floating in ("postgres:16", "nginx:1.27", "python:3.11-slim", "minio:latest", "x:1.2"):
        assert not EXACT_TAG.fullmatch(floating)


def test_mlflow_asks_for_a_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's basic-auth app, its first admin from the environment, its users on a volume; the
    image has what the app needs and the config MLflow itself reads."""
    import importlib.util

    import mlflow as mlflow_package

    # MLflow's own reader of the auth config (its package needs Flask-WTF, which only the image has)
    module = Path(mlflow_package.__file__).parent / "server" / "auth" / "config.py"
    spec = importlib.util.spec_from_file_location("mlflow_auth_config", module)
    auth_config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(auth_config)
    mlflow = compose()["services"]["mlflow"]
    assert "--app-name basic-auth" in mlflow["command"]
    environment = mlflow["environment"]
    assert environment["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${MLFLOW_ADMIN_PASSWORD:?")
    assert environment["MLFLOW_FLASK_SERVER_SECRET_KEY"].startswith("${MLFLOW_FLASK_SECRET_KEY:?")
    dockerfile = (CONTAINER / "mlflow.Dockerfile").read_text()
    assert re.search(r"mlflow==3\.17\.2 Flask-WTF==\d", dockerfile)  # what mlflow[auth] adds
    source, target = re.search(r"^COPY (\S+) (\S+)$", dockerfile, re.M).groups()
    assert f"ENV MLFLOW_AUTH_CONFIG_PATH={target}" in dockerfile
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(CONTAINER / source))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    config = auth_config.read_auth_config()
    assert config.admin_password is None  # from the environment only, never the file
    volume, mount = mlflow["volumes"][0].split(":")
    assert config.database_uri == f"sqlite:///{mount}/basic_auth.db"
    assert volume in compose()["volumes"]
