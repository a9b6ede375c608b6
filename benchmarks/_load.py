"""What the serving benchmarks share: the request bodies, one request, the load generators (wrk
for saturation, hey at a fixed rate) and their parsed results, the wait for a server, and what the
numbers were measured on."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil

from visionzero.platform.processes import http_ok, wait_until

BODY = {"items": [{"latitude": 40.7128, "longitude": -74.0060, "datetime": "2025-02-03T08:30"}]}
BIG = {
    "items": [
        {
            "latitude": 40.55 + (i % 100) * 0.003,
            "longitude": -73.95,
            "datetime": f"2025-02-{1 + i % 28:02d}T{i % 24:02d}:00",
        }
        for i in range(10_000)
    ]
}


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until url answers /readyz; NotReady at once when the server exits before it does."""
    wait_until(lambda: http_ok(url + "/readyz"), process, timeout, what=url)


def post(url: str, body: dict) -> float:
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        url + "/predict", data=data, headers={"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
        assert response.status == 200
    return time.perf_counter() - start


def wrk(url: str, seconds: int, connections: int, script: Path) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url + "/predict",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": ms("50%"),
        "p99_ms": ms("99%"),
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def hey(url: str, rate: int, seconds: int, clients: int, body: Path) -> dict[str, float]:
    """`rate` one-item requests a second for `seconds`: hey's -q is per worker, so each of the
    `clients` workers sends rate / clients a second. Its workers tick in step, so requests come in
    bursts of `clients` every clients / rate seconds: harsher than evenly spaced arrivals."""
    out = subprocess.run(
        ["hey", "-z", f"{seconds}s", "-c", str(clients), "-q", f"{rate / clients:g}"]
        + ["-m", "POST", "-T", "application/json", "-D", str(body), url + "/predict"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def ms(percent: int) -> float:
        found = re.search(rf"^\s+{percent}% in ([\d.]+) secs", out, re.MULTILINE)
        return 1000 * float(found.group(1)) if found else float("nan")

    statuses = {
        int(code): int(count)
        for code, count in re.findall(r"^\s+\[(\d+)\]\s+(\d+) responses", out, re.MULTILINE)
    }
    failed = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s+\S", _section(out, "Error")))
    total = re.search(r"Total:\s+([\d.]+) secs", out)
    seconds_taken = float(total.group(1)) if total else float(seconds)
    return {
        "p50_ms": ms(50),
        "p99_ms": ms(99),
        # every request hey finished, answered or not, per second of the run
        "achieved_rps": (sum(statuses.values()) + failed) / seconds_taken,
        "errors": sum(n for code, n in statuses.items() if code != 200) + failed,
        "answered": statuses.get(200, 0),
        "status_429": statuses.get(429, 0),
        "load_1m": os.getloadavg()[0],
    }


def _section(out: str, title: str) -> str:
    """hey's `<title> distribution:` block (empty when hey printed none)."""
    found = re.search(rf"^{title} distribution:\n((?:\s+\[.*\n?)*)", out, re.MULTILINE)
    return found.group(1) if found else ""


def logged_rows(root: Path) -> int:
    return sum(sum(1 for _ in path.open("rb")) for path in root.rglob("*.jsonl"))


def write_wrk_script(path: Path) -> Path:
    path.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [[{json.dumps(BODY)}]]\n"
    )
    return path


def machine() -> dict:
    """What the numbers were measured on: a shared 2-core machine gives other numbers than a
    quiet one, so the load average goes with them."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }


def cpu_seconds(processes: dict[str, list[psutil.Process]]) -> dict[str, float]:
    """User + system CPU seconds used so far by each group of processes."""
    return {
        name: sum(sum(proc.cpu_times()[:2]) for proc in group) for name, group in processes.items()
    }


def cpu_model() -> str:
    """The CPU's model name (the first core's), or what `platform` knows where Linux's cpuinfo
    does not say."""
    models = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    return models[0].strip() if models else platform.processor() or platform.machine()
