"""Operational canary metrics, the Prometheus config, schedules and their manifests (no processes
beyond promtool and a shell; the real `serve --monitor` is in test_prometheus_serve.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from string import Template

import kubernetes_validate
import pytest
import yaml

from tests.conftest import K8S_TEMPLATE_VALUES, ROOT
from visionzero.monitoring.operational import (
    MetricsUnavailable,
    bucket_quantile,
    parse_metrics,
    stage_health,
)
from visionzero.monitoring.schedule import MONITOR_CRON, TRAIN_CRON, crontab_lines
from visionzero.rollout.prometheus import (
    local_prometheus_config,
    render_container_prometheus_config,
)

K8S_VERSION = "1.33.0"
# A backend's /metrics as BentoML 1.4 writes it (two workers' samples already summed by it); $L
# stands for the labels every sample carries besides endpoint, status and le; $D for the histogram.
METRICS = Template("""\
# HELP bentoml_service_request_total Total number of HTTP requests
# TYPE bentoml_service_request_total counter
bentoml_service_request_total{endpoint="/predict",http_response_code="200",$L} 90.0
bentoml_service_request_total{endpoint="/predict",http_response_code="400",$L} 6.0
bentoml_service_request_total{endpoint="/predict",http_response_code="504",$L} 4.0
bentoml_service_request_total{endpoint="/readyz",http_response_code="200",$L} 50.0
# HELP bentoml_service_request_duration_seconds API HTTP request duration in seconds
# TYPE bentoml_service_request_duration_seconds histogram
${D}_bucket{endpoint="/predict",http_response_code="200",le="0.005",$L} 50.0
${D}_bucket{endpoint="/predict",http_response_code="200",le="0.01",$L} 90.0
${D}_bucket{endpoint="/predict",http_response_code="200",le="+Inf",$L} 90.0
${D}_count{endpoint="/predict",http_response_code="200",$L} 90.0
${D}_sum{endpoint="/predict",http_response_code="200",$L} 0.6
${D}_bucket{endpoint="/predict",http_response_code="504",le="0.005",$L} 0.0
${D}_bucket{endpoint="/predict",http_response_code="504",le="0.01",$L} 0.0
${D}_bucket{endpoint="/predict",http_response_code="504",le="+Inf",$L} 10.0
${D}_count{endpoint="/predict",http_response_code="504",$L} 10.0
${D}_sum{endpoint="/predict",http_response_code="504",$L} 9.0
""").substitute(
    L='runner_name="CrashRisk",service_name="crash_risk",service_version="x"',
    D="bentoml_service_request_duration_seconds",
)


def test_metrics_endpoint_counts_predict_answers_and_only_5xx_as_errors() -> None:
    health = parse_metrics("staging", METRICS)
    assert (health.requests, health.errors) == (100, 4)  # /readyz is not traffic; 400 not an error
    assert health.error_rate == pytest.approx(0.04)
    assert health.source == "metrics-endpoint"
    # 100 observations: 50 <= 5 ms, 90 <= 10 ms, 10 above: p50 at 5 ms, p95/p99 in +Inf -> 10 ms
    assert health.p50_ms == pytest.approx(5.0)
    assert health.p95_ms == pytest.approx(10.0) and health.p99_ms == pytest.approx(10.0)


def test_bucket_quantile_interpolates_like_histogram_quantile() -> None:
    cumulative = [(0.1, 10.0), (0.2, 30.0), (0.4, 40.0), (float("inf"), 40.0)]
    assert bucket_quantile(0.25, cumulative) == pytest.approx(0.1)  # rank 10: top of bucket 1
    assert bucket_quantile(0.5, cumulative) == pytest.approx(0.15)  # rank 20: half of bucket 2
    assert bucket_quantile(0.875, cumulative) == pytest.approx(0.3)  # rank 35: half of bucket 3
    assert bucket_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert parse_metrics("production", "").p99_ms is None


def test_no_source_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VZ_HOME", str(tmp_path))
    monkeypatch.delenv("VZ_PROMETHEUS_URL", raising=False)
    with pytest.raises(MetricsUnavailable, match="no `python run.py serve` runs"):
        stage_health()
    monkeypatch.setenv("VZ_PROMETHEUS_URL", "http://127.0.0.1:9")  # nothing listens on discard
    with pytest.raises(MetricsUnavailable, match="Prometheus at http://127.0.0.1:9 did not answer"):
        stage_health()
    with pytest.raises(ValueError, match="window_minutes"):
        stage_health(0)


def test_local_prometheus_config_labels_each_backend_with_its_stage(tmp_path: Path) -> None:
    text = local_prometheus_config({"production": 4101, "staging": 4102})
    config = yaml.safe_load(text)
    assert config["global"]["scrape_interval"] == "5s"
    (job,) = config["scrape_configs"]
    assert {c["labels"]["stage"]: c["targets"] for c in job["static_configs"]} == {
        "production": ["127.0.0.1:4101"],
        "staging": ["127.0.0.1:4102"],
    }
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (`make system-deps` installs it)")
    for name, rendered in (("local", text), ("container", render_container_prometheus_config())):
        path = tmp_path / f"{name}.yml"
        path.write_text(rendered)
        check = subprocess.run([promtool, "check", "config", str(path)], capture_output=True)
        assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()


def test_crontab_lines_never_run_two_pipelines_at_once(tmp_path: Path) -> None:
    """The printed lines run as cron would (sh, without the schedule fields): two runs started
    together take turns on the lock and both log."""
    fake = tmp_path / "python"  # stands for the venv's python: records when it ran
    fake.write_text(
        '#!/bin/sh\necho "start $(date +%s.%N) $*"; sleep 1; echo "end $(date +%s.%N)"\n'
    )
    fake.chmod(0o755)
    home = tmp_path / "home"
    lines = crontab_lines(home, python=fake)
    jobs = [line for line in lines if not line.startswith("#")]
    assert [" ".join(line.split()[:5]) for line in jobs] == [MONITOR_CRON, TRAIN_CRON]
    assert all(f"cd {ROOT} " in line and "flock" in line for line in jobs)
    commands = [line.split(None, 5)[5] for line in jobs]
    runs = [subprocess.Popen(["sh", "-c", command]) for command in commands]
    assert [run.wait(timeout=30) for run in runs] == [0, 0]
    spans = []
    for name, args in (("monitor", "run.py monitor"), ("train", "run.py")):
        start, end = (home / "logs" / f"{name}.log").read_text().splitlines()
        assert start.endswith(args)
        spans.append((float(start.split()[1]), float(end.split()[1])))
    first, second = sorted(spans)
    assert first[1] <= second[0], f"the runs overlapped: {spans}"


def cronjob(name: str) -> dict:
    template = Template((ROOT / "k8s" / name).read_text())
    return yaml.safe_load(template.substitute(K8S_TEMPLATE_VALUES))


@pytest.mark.parametrize(
    ("name", "cron", "command"),
    [
        ("monitor-cronjob.yaml", MONITOR_CRON, ["python", "run.py", "monitor"]),
        ("train-cronjob.yaml", TRAIN_CRON, ["python", "run.py"]),
    ],
)
def test_cronjobs_validate_and_match_the_crontab(name: str, cron: str, command: list[str]) -> None:
    """Schema-checked offline (kubernetes-validate, strict): there is no cluster here."""
    job = cronjob(name)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    spec = job["spec"]
    assert spec["schedule"] == cron and spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == command
    assert (
        container["image"]
        == cronjob("monitor-cronjob.yaml")["spec"]["jobTemplate"]["spec"]["template"]["spec"][
            "containers"
        ][0]["image"]
    ), "both pipelines run in the same image"
    env = {e["name"]: e for e in container["env"]}
    for secret in ("DISCORD_WEBHOOK_URL", "ZENML_STORE_API_KEY", "SOCRATA_APP_TOKEN"):
        assert env[secret]["valueFrom"]["secretKeyRef"]["name"] == "visionzero-pipelines"
        assert "value" not in env[secret]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_servicemonitor_scrapes_both_stage_services_with_their_stage_label() -> None:
    monitor = cronjob("servicemonitor.yaml")  # the same ${} substitution
    service = yaml.safe_load(
        Template((ROOT / "k8s" / "service.yaml").read_text()).substitute(
            NAMESPACE="visionzero", STAGE="staging"
        )
    )
    assert monitor["kind"] == "ServiceMonitor"
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    selector = monitor["spec"]["selector"]
    assert selector["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["metadata"]["labels"]["stage"] in selector["matchExpressions"][0]["values"]
    assert monitor["spec"]["targetLabels"] == ["stage"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"


def test_schedule_prints_the_lines() -> None:
    result = subprocess.run(
        [sys.executable, "run.py", "schedule", "--print"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "run.py monitor >>" in result.stdout and "logs/train.log" in result.stdout
