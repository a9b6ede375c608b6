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
# A backend's /metrics as the service writes it (visionzero/serving/traffic_metrics.py; two workers'
# samples already summed by BentoML); $L stands for the labels every sample carries besides the
# ones the test varies; $C for the counter, $D for the histogram.
METRICS = Template("""\
# HELP bentoml_service_request_total Total number of HTTP requests
# TYPE bentoml_service_request_total counter
bentoml_service_request_total{endpoint="/predict",http_response_code="500",service_name="x"} 999.0
# HELP crash_risk_canary_requests_total POST /predict answers
# TYPE crash_risk_canary_requests_total counter
${C}{traffic="split",size="one",status="2xx",phase="steady",$L} 90.0
${C}{traffic="split",size="one",status="4xx",phase="steady",$L} 6.0
${C}{traffic="split",size="one",status="5xx",phase="steady",$L} 4.0
${C}{traffic="split",size="large",status="2xx",phase="steady",$L} 2.0
${C}{traffic="split",size="one",status="5xx",phase="warmup",$L} 12.0
${C}{traffic="pinned",size="one",status="5xx",phase="steady",$L} 100.0
${C}{traffic="pinned",size="large",status="2xx",phase="steady",$L} 5.0
${C}{traffic="direct",size="one",status="2xx",phase="steady",$L} 3.0
# HELP crash_risk_canary_request_duration_seconds POST /predict answer time
# TYPE crash_risk_canary_request_duration_seconds histogram
${D}_bucket{traffic="split",size="one",phase="steady",le="0.005",$L} 47.0
${D}_bucket{traffic="split",size="one",phase="steady",le="0.01",$L} 85.0
${D}_bucket{traffic="split",size="one",phase="steady",le="+Inf",$L} 94.0
${D}_count{traffic="split",size="one",phase="steady",$L} 94.0
${D}_sum{traffic="split",size="one",phase="steady",$L} 0.6
${D}_bucket{traffic="split",size="large",phase="steady",le="0.005",$L} 0.0
${D}_bucket{traffic="split",size="large",phase="steady",le="5.0",$L} 2.0
${D}_bucket{traffic="split",size="large",phase="steady",le="+Inf",$L} 2.0
${D}_count{traffic="split",size="large",phase="steady",$L} 2.0
${D}_sum{traffic="split",size="large",phase="steady",$L} 6.0
${D}_bucket{traffic="pinned",size="one",phase="steady",le="0.005",$L} 0.0
${D}_bucket{traffic="pinned",size="one",phase="steady",le="+Inf",$L} 100.0
${D}_count{traffic="pinned",size="one",phase="steady",$L} 100.0
${D}_sum{traffic="pinned",size="one",phase="steady",$L} 900.0
""").substitute(
    L='stage="staging"',
    C="crash_risk_canary_requests_total",
    D="crash_risk_canary_request_duration_seconds",
)


def test_metrics_endpoint_counts_split_steady_answers_and_only_5xx_as_errors() -> None:
    health = parse_metrics("staging", METRICS)
    # split after warm-up: 90 + 6 + 4 one-item, 2 large; the 400s are answers, not errors
    assert (health.requests, health.errors) == (102, 4)
    assert health.error_rate == pytest.approx(4 / 102)
    assert health.source == "metrics-endpoint"
    # pinned 5xx, the warm-up's 5xx and BentoML's own counter are left out, and said
    assert health.not_counted == {"pinned": 105, "direct": 3, "warmup": 12}
    assert "(not counted: 105 pinned, 3 direct, 12 warmup)" in health.counted()
    one, large = health.latency["one"], health.latency["large"]
    assert one.requests == 94 and large.requests == 2  # timed: all but the 4xx
    # 94 one-item observations: 47 <= 5 ms, 85 <= 10 ms: p50 at 5 ms, p99 in +Inf -> 10 ms;
    # the pinned requests' 9 s each are not in it
    assert one.p50_ms == pytest.approx(5.0) and one.p99_ms == pytest.approx(10.0)
    assert 5.0 < large.p50_ms <= 5000.0


def test_bucket_quantile_interpolates_like_histogram_quantile() -> None:
    cumulative = [(0.1, 10.0), (0.2, 30.0), (0.4, 40.0), (float("inf"), 40.0)]
    assert bucket_quantile(0.25, cumulative) == pytest.approx(0.1)  # rank 10: top of bucket 1
    assert bucket_quantile(0.5, cumulative) == pytest.approx(0.15)  # rank 20: half of bucket 2
    assert bucket_quantile(0.875, cumulative) == pytest.approx(0.3)  # rank 35: half of bucket 3
    assert bucket_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    empty = parse_metrics("production", "")
    assert (empty.requests, empty.latency) == (0, {})


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
