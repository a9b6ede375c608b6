"""Throughput and latency of the BentoML service, with its prediction log off and on, vs a plain
FastAPI app on the same model, in one run.

Needs a trained production model (`make run`) and wrk (Debian package `wrk`).
Run: .venv/bin/python benchmarks/serving.py [--seconds 15] [--connections 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


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


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def measure(
    cmd: list[str], env: dict[str, str], seconds: int, connections: int, script: Path
) -> dict[str, float]:
    """One server: started, warmed up, loaded with wrk (one-item requests), then the median of
    five 10,000-item requests; stopped with SIGTERM on every path."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start([part.format(port=port) for part in cmd], env)
    try:
        wait_ready(url)
        for _ in range(20):
            post(url, BODY)
        post(url, BIG)
        result = wrk(url, seconds, connections, script)
        result["10k_items_ms"] = 1000 * statistics.median(post(url, BIG) for _ in range(5))
        return result
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def logged_rows(root: Path) -> int:
    return sum(sum(1 for _ in path.open("rb")) for path in root.rglob("*.jsonl"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="BentoML with the prediction log off and on, this many times, alternating the order",
    )
    parser.add_argument(
        "--resolution",
        type=int,
        choices=(7, 8, 9),
        help="ask every item for this H3 resolution (default: the service's, the finest)",
    )
    args = parser.parse_args()
    if args.resolution:
        for item in [*BODY["items"], *BIG["items"]]:
            item["resolution"] = args.resolution
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install wrk")

    from visionzero.platform.settings import configure_environment
    from visionzero.rollout.deployment_state import read_state

    configure_environment()
    release = read_state()["production"]
    if not release:
        sys.exit("no production model: run `make run` first")
    import bentoml

    model_dir = bentoml.models.get(release["model_tag"]).path
    env = {
        **os.environ,
        "VZ_STAGE": "production",
        "VZ_MODEL_DIR": model_dir,
        "BENTOML_DO_NOT_TRACK": "true",
        "PYTHONPATH": str(ROOT),
    }
    # The checkout's service.py (not the last built Bento), so the numbers are the code's.
    bento_cmd = [sys.executable, "-m", "bentoml", "serve", "service:CrashRisk"]
    bento_cmd += ["--arg", f"model_tag={release['model_tag']}", "--port", "{port}"]
    fastapi_cmd = [sys.executable, "-m", "uvicorn", "benchmarks.fastapi_reference:app"]
    fastapi_cmd += ["--workers", "2", "--port", "{port}", "--log-level", "warning"]
    fastapi_cmd += ["--no-access-log"]
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [[{json.dumps(BODY)}]]\n"
        )
        runs: list[tuple[str, dict[str, float]]] = []
        for round_ in range(args.rounds):
            order = ("off", "on") if round_ % 2 == 0 else ("on", "off")
            for log in order:
                log_dir = Path(tmp) / f"predictions-{round_}"
                variant_env = {**env, "VZ_PREDICTION_LOG": str(log_dir) if log == "on" else "off"}
                result = measure(bento_cmd, variant_env, args.seconds, args.connections, script)
                if log == "on":  # every answered item is a row: warm-up, wrk, 6 x 10,000
                    result["rows"] = logged_rows(log_dir)
                    result["answered"] = 20 + result["requests"] + 6 * len(BIG["items"])
                runs.append((f"bentoml, log {log}", result))
        runs.append(("fastapi", measure(fastapi_cmd, env, args.seconds, args.connections, script)))
    print(
        f"\nmachine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
        f"wrk -t2 -c{args.connections} -d{args.seconds}s, one-item requests; "
        f"model {release['model_tag']}"
    )
    print(
        f"{'server':<18}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}"
        f"{'non-2xx':>10}{'10k items ms':>15}{'rows logged / answered':>26}"
    )
    for name, r in runs:
        rows = f"{r['rows']:>14,.0f} / {r['answered']:,.0f}" if "rows" in r else ""
        print(
            f"{name:<18}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
            f"{r['non_2xx']:>10}{r['10k_items_ms']:>15.1f}{rows}"
        )

    def mean(log: str, key: str) -> float:
        return statistics.mean(r[key] for name, r in runs if name == f"bentoml, log {log}")

    rps_off, rps_on = mean("off", "rps"), mean("on", "rps")
    big_off, big_on = mean("off", "10k_items_ms"), mean("on", "10k_items_ms")
    print(
        f"with the prediction log on (mean of {args.rounds} rounds): one-item throughput "
        f"{100 * (rps_on - rps_off) / rps_off:+.1f}% ({rps_off:.0f} -> {rps_on:.0f} req/s), "
        f"10,000 items {100 * (big_on - big_off) / big_off:+.1f}% "
        f"({big_off:.1f} -> {big_on:.1f} ms)"
    )
    print(f"throughput ratio bentoml (log on)/fastapi: {rps_on / runs[-1][1]['rps']:.2f}")


if __name__ == "__main__":
    main()
