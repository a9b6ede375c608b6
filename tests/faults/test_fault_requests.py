"""Fault injection for request validation (case 12), alert delivery (case 13) and the first
initialisation of the stores (case 14) of the issue "Safe rollout and safe ingest".

Requests go to the session's real `bentoml serve` (`served`); alerts to a real local server that
behaves like a Discord webhook; initialisation runs in real processes started at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, LocalServer, free_port, wait_http
from tests.test_alerts import MESSAGE, POLICY, discord_like, outbox_lines, run_cli
from visionzero.platform.alerts import build_message, send

pytestmark = [pytest.mark.slow, pytest.mark.faults]

WHEN = "2025-02-03T08:30"
POINT = {"latitude": 40.7128, "longitude": -74.0060, "datetime": WHEN}


def post(url: str, body: object, content_type: str = "application/json") -> requests.Response:
    data = body if isinstance(body, str) else json.dumps(body)
    return requests.post(
        url + "/predict", data=data.encode(), headers={"Content-Type": content_type}, timeout=60
    )


def assert_400(response: requests.Response, field: str) -> str:
    """A 400 in the one error shape, naming `field`; returns the message."""
    assert response.status_code == 400, response.text[:300]
    answer = response.json()
    assert isinstance(answer, dict) and set(answer) == {"error", "field"}, answer
    assert answer["field"] == field, answer
    return answer["error"]


def predictions(url: str, items: list[dict]) -> list[dict]:
    response = post(url, {"items": items})
    assert response.status_code == 200, response.text[:300]
    return response.json()["predictions"]


@pytest.fixture(scope="module")
def cell(served: str) -> str:
    """The H3 cell of POINT: a busy Manhattan zone, far from "Safe" at 08:30."""
    (answer,) = predictions(served, [POINT])
    assert answer["risk_level"] != "Safe"
    return answer["zone"]


# --- 12: bad input that got a 500 or a wrong answer ---------------------------------------------


@pytest.mark.parametrize(
    "zone", ["8" * 17, "f" * 40, "8" * 1_000_000], ids=["17 digits", "40 digits", "1 MB"]
)
def test_oversized_zone_is_a_400_not_a_500(served: str, zone: str) -> None:
    # before: h3 raised OverflowError -> 500
    assert_400(post(served, {"items": [{"zone": zone, "datetime": WHEN}]}), "items[0].zone")


@pytest.mark.parametrize("disguise", ["0x{}", "fullwidth", "{}\u0000"])
def test_disguised_zone_is_refused_not_answered_safe(served: str, cell: str, disguise: str) -> None:
    # before: "0x872a..." and full-width digits passed h3's int() and answered "Safe" (2e-10)
    if disguise == "fullwidth":
        zone = "".join(chr(ord(c) + 0xFEE0) if c.isdigit() else c for c in cell)
    else:
        zone = disguise.format(cell)
    assert_400(post(served, {"items": [{"zone": zone, "datetime": WHEN}]}), "items[0].zone")
    # the plain cell, in any case and padding, still answers
    (answer,) = predictions(served, [{"zone": f" {cell.upper()} ", "datetime": WHEN}])
    assert answer["zone"] == cell and answer["risk_level"] != "Safe"


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN", "1e308", "1000"])
@pytest.mark.parametrize("name", ["precipitation", "snow", "snow_depth"])
def test_impossible_weather_is_refused(served: str, name: str, value: str) -> None:
    # before: Infinity and 1e308 inches of rain were accepted as weather "from the request"
    body = json.dumps({"items": [POINT]})[:-3] + f', "{name}": {value}}}]}}'
    assert_400(post(served, body), f"items[0].{name}")


def test_non_finite_coordinates_are_refused(served: str, cell: str) -> None:
    body = json.dumps({"items": [{"zone": cell, "datetime": WHEN}]})[:-3] + ', "latitude": NaN}]}'
    assert_400(post(served, body), "items[0].latitude")


@pytest.mark.parametrize("year", ["0001", "1900", "2100", "9999"])
def test_years_far_from_the_training_window_are_refused(served: str, year: str) -> None:
    # before: each got a confident risk level
    message = assert_400(
        post(served, {"items": [{**POINT, "datetime": f"{year}-02-03T08:30"}]}),
        "items[0].datetime",
    )
    assert "supports" in message


def test_supported_dates_are_published_and_enforced(served: str) -> None:
    meta = requests.get(served + "/metadata", timeout=30).json()
    first, last = meta["supported_dates"]
    assert first < meta["training_window"][0] and meta["training_window"][1] < last
    inside = predictions(
        served, [{**POINT, "datetime": f"{first}T00:00"}, {**POINT, "datetime": f"{last}T23:59"}]
    )
    assert [p["date"] for p in inside] == [first, last]
    for outside in (f"{first}T00:00-04:00", f"{last}T23:59-06:00"):  # in New York: out
        assert_400(post(served, {"items": [{**POINT, "datetime": outside}]}), "items[0].datetime")


@pytest.mark.parametrize(
    "text",
    [
        "2025-02-03T08:30:00",
        "2025-02-03T08:30:59.999",
        "2025-02-03T13:30:00Z",
        "2025-02-03T13:30Z",
        "2025-02-03T08:30:00-05:00",
        "2025-02-03T14:30+01:00",
    ],
)
def test_iso_8601_with_seconds_and_offsets_is_new_york_time(served: str, text: str) -> None:
    # before: anything but YYYY-MM-DDTHH:MM was a 400
    plain, same = predictions(served, [POINT, {**POINT, "datetime": text}])
    assert same == plain


@pytest.mark.parametrize(
    "text,date,block",
    [
        ("2025-02-04T03:30:00Z", "2025-02-03", [20, 24]),  # 22:30 EST the day before
        ("2025-07-01T12:00:00Z", "2025-07-01", [8, 12]),  # 08:00 EDT (07:00 were it EST)
        ("2025-07-01T11:59:59Z", "2025-07-01", [4, 8]),
        ("2025-03-09T06:59Z", "2025-03-09", [0, 4]),  # 01:59 EST, just before spring forward
        ("2025-03-09T08:00Z", "2025-03-09", [4, 8]),  # 04:00 EDT, just after
        ("2025-11-02T05:30Z", "2025-11-02", [0, 4]),  # 01:30 EDT, first of the repeated hour
        ("2025-11-02T06:30Z", "2025-11-02", [0, 4]),  # 01:30 EST, second
        ("2025-11-02T08:00Z", "2025-11-02", [0, 4]),  # 03:00 EST
        ("2025-11-02T09:00Z", "2025-11-02", [4, 8]),  # 04:00 EST
    ],
)
def test_offsets_convert_across_daylight_saving(
    served: str, text: str, date: str, block: list[int]
) -> None:
    (answer,) = predictions(served, [{**POINT, "datetime": text}])
    assert (answer["date"], answer["block"]) == (date, block)


def test_naive_times_in_the_dst_gap_and_repeat_follow_fold_0() -> None:
    """A naive New York time that does not exist (spring forward) reads with the offset before
    the change, like zoneinfo's fold=0: 02:30 is 03:30 EDT. One that exists twice (fall back) is
    the first, which is the same wall-clock time."""
    import numpy as np

    from visionzero.serving.requests import new_york_minutes

    texts = [
        "2025-03-09T01:59",
        "2025-03-09T02:00",
        "2025-03-09T02:30",
        "2025-03-09T03:00",
        "2025-11-02T01:30",
        "2025-11-02T01:30-04:00",
        "2025-11-02T01:30-05:00",
        "2025-11-02T02:00",
    ]
    got = new_york_minutes(texts, np.datetime64("2024-01-01"), np.datetime64("2026-12-31"))
    assert got.astype(str).tolist() == [
        "2025-03-09T01:59",
        "2025-03-09T03:00",
        "2025-03-09T03:30",
        "2025-03-09T03:00",
        "2025-11-02T01:30",
        "2025-11-02T01:30",
        "2025-11-02T01:30",
        "2025-11-02T02:00",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "2025-02-03T08:30:60",
        "2025-02-03T08:30+24:00",
        "2025-02-03T08:30-05",
        "2025-02-03 08:30",
        "２０２５-02-03T08:30",
        "2025-02-03T08:30:00.",
    ],
)
def test_malformed_iso_8601_is_refused(served: str, text: str) -> None:
    assert_400(post(served, {"items": [{**POINT, "datetime": text}]}), "items[0].datetime")


@pytest.mark.parametrize(
    "content_type,body",
    [
        ("multipart/form-data; boundary=xyz", "not a multipart body"),  # before: 500
        (
            "multipart/form-data; boundary=xyz",
            '--xyz\r\nContent-Disposition: form-data; name="items"\r\n\r\n'
            + json.dumps([POINT])
            + "\r\n--xyz--\r\n",
        ),
        ("multipart/form-data", "x"),
        ("application/x-www-form-urlencoded", "items=%5B%5D"),
        ("application/vnd.bentoml+pickle", "x"),
    ],
)
def test_non_json_bodies_are_refused_in_the_one_error_shape(
    served: str, content_type: str, body: str
) -> None:
    message = assert_400(post(served, body, content_type), "Content-Type")
    assert "application/json" in message


@pytest.fixture(scope="module")
def logged_server(trained: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """The production Bento under its own `bentoml serve`, its log kept in a file."""
    log = tmp_path_factory.mktemp("serve-log") / "bentoml.log"
    port = free_port()
    with log.open("w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", trained.production.bento_tag]
            + ["--host", "127.0.0.1", "--port", str(port)],
            env={**os.environ, "VZ_STAGE": "production", "VZ_WORKERS": "1"},
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/readyz", process=process)
        yield url, log
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)


def test_a_400_is_logged_as_a_warning_without_a_traceback(logged_server: tuple) -> None:
    url, log = logged_server
    bad = [
        ({"items": [{"zone": "not-a-cell", "datetime": WHEN}]}, "items[0].zone"),
        ({"items": [{**POINT, "latitude": "north"}]}, "items[0].latitude"),  # BentoML's own
        ('{"items": [', "body"),
    ]
    for body, _ in bad:
        assert post(url, body).status_code == 400
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = log.read_text()
        if all(field in text for _, field in bad):
            break
        time.sleep(0.2)
    assert "Traceback" not in text and "ERROR" not in text, text[-3000:]
    warnings = [line for line in text.splitlines() if "WARNING" in line]
    for _, field in bad:
        assert any(field in line for line in warnings), text[-3000:]


# --- 13: a Discord 2xx after a 429 is delivered, and a delivered message is never resent --------


@pytest.mark.parametrize("success", ["204-empty", "202-empty"])
def test_a_2xx_after_a_429_is_delivered_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, success: str
) -> None:
    # before: the body-less 2xx was read as a failure, the message sent again and kept as failed
    monkeypatch.setenv("VZ_HOME", str(tmp_path))
    received: list[dict] = []
    waits: list[float] = []
    with LocalServer(discord_like(["429", success], received)) as server:
        monkeypatch.setenv("DISCORD_WEBHOOK_URL", server.url + "/api/webhooks/1/secret")
        status = send(MESSAGE, POLICY, sleep=waits.append)
    assert len(received) == 2 and waits == [0.2]  # before: 3, the message twice
    assert status == "delivered" and outbox_lines() == []


def test_resend_flushes_the_outbox_once_and_keeps_failures(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VZ_HOME", str(tmp_path))
    monkeypatch.delenv("DISCORD_WEBHOOK_URL", raising=False)
    first, second = (build_message("promote", f"promote {i}", {"n": i}) for i in range(2))
    assert send(first, POLICY) == send(second, POLICY) == "outbox"

    received: list[dict] = []  # the first is delivered (as a body-less 204), the second fails
    with LocalServer(discord_like(["204-empty"] + ["500"] * 3, received)) as server:
        monkeypatch.setenv("DISCORD_WEBHOOK_URL", server.url + "/api/webhooks/1/secret-token")
        out = run_cli(["alerts", "--resend"])
    assert out.returncode == 1, out.stdout + out.stderr
    assert [m["embeds"][0]["title"] for m in received] == ["promote 0"] + ["promote 1"] * 3
    assert {m["id"]: m["delivery"] for m in outbox_lines()} == {
        first["id"]: "delivered",
        second["id"]: "failed: HTTP 500",
    }
    assert "secret-token" not in out.stdout + out.stderr + (tmp_path / "outbox.jsonl").read_text()

    received.clear()
    with LocalServer(discord_like([], received)) as server:
        monkeypatch.setenv("DISCORD_WEBHOOK_URL", server.url + "/api/webhooks/1/secret-token")
        assert run_cli(["alerts", "--resend"]).returncode == 0
        assert [m["embeds"][0]["title"] for m in received] == ["promote 1"]
        assert run_cli(["alerts", "--resend"]).returncode == 0  # nothing left: nothing sent
    assert len(received) == 1
    assert {m["delivery"] for m in outbox_lines()} == {"delivered"}


# --- 14 (part): two first runs at once in a fresh clone -----------------------------------------


INITIALISE = """
import sys

sys.path.insert(0, sys.argv[1])
from visionzero.platform.settings import configure_environment

configure_environment()
from visionzero.platform.stack import ensure_stack

ensure_stack()
"""


@pytest.mark.parametrize("command", ["run.py config", "ensure_stack"])
def test_first_runs_at_once_on_an_empty_home_all_succeed(tmp_path: Path, command: str) -> None:
    # before: ZenML's SQLite store was created by each at once and all but one died
    env = {k: v for k, v in os.environ.items() if k not in ("ZENML_CONFIG_PATH", "BENTOML_HOME")}
    env.update(VZ_HOME=str(tmp_path / "home"), VZ_DATA_DIR=str(tmp_path / "data"))
    script = tmp_path / "initialise.py"  # ZenML wants a main module with a file
    script.write_text(INITIALISE)
    args = ["run.py", "config"] if command == "run.py config" else [str(script), str(ROOT)]
    processes = [
        subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, output in zip(processes, outputs, strict=True):
        assert p.returncode == 0, output[-3000:]
