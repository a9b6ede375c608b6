"""Throughput and latency of the BentoML service, with its prediction log off and on, vs a plain
FastAPI app on the same model, in one run; or, with --rates, its latency at fixed request rates
through the local canary's nginx and direct, and its saturation throughput on both paths. With
--rates, a second nginx in front of the same backends runs the same template with the edge's
per-client limits and security headers off ("nginx-off"): the same run compares the two.

Needs a trained production model (`make run`), wrk and, for --rates, hey (`make bench-deps`).
Run: .venv/bin/python benchmarks/serving.py [--seconds 15] [--connections 32] [--rounds 2]
     .venv/bin/python benchmarks/serving.py --rates 1000,2000 [--seconds 10] [--clients 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks._load import (  # noqa: E402
    BIG,
    BODY,
    logged_rows,
    post,
    wait_ready,
    write_wrk_script,
    wrk,
)
from benchmarks.serving_rates import fixed_rates  # noqa: E402
from visionzero.platform.processes import free_port  # noqa: E402


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
        wait_ready(url, process)
        for _ in range(20):
            post(url, BODY)
        post(url, BIG)
        result = wrk(url, seconds, connections, script)
        result["10k_items_ms"] = 1000 * statistics.median(post(url, BIG) for _ in range(5))
        return result
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def compare_servers(args: argparse.Namespace, release: dict) -> None:
    """BentoML with the prediction log off and on (alternating), then the plain FastAPI app."""
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
        script = write_wrk_script(Path(tmp) / "post.lua")
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


def rate_list(text: str) -> list[int]:
    """--rates: whole requests per second, comma-separated."""
    try:
        rates = [int(part) for part in text.split(",")]
    except ValueError:
        rates = []
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: rates are positive whole requests per second, e.g. 1000,2000"
        )
    return rates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32, help="wrk's connections")
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
    parser.add_argument(
        "--rates",
        type=rate_list,
        help="instead: latency at these fixed request rates (e.g. 1000,2000) through the local "
        "canary's nginx and direct, then saturation throughput on both",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=10,
        help="with --rates: hey's workers (-c), sharing a rate; they tick in step, so this is the "
        "burst size (50 turns 2,000 req/s into 50 simultaneous requests every 25 ms)",
    )
    parser.add_argument(
        "--canary",
        action="store_true",
        help="with --rates: nginx splits 50/50 between production and a staging of the same Bento",
    )
    args = parser.parse_args()
    if args.resolution:
        for item in [*BODY["items"], *BIG["items"]]:
            item["resolution"] = args.resolution
    for tool in ("wrk", "hey") if args.rates else ("wrk",):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: make bench-deps (Debian: apt-get install {tool})")

    from visionzero.platform.settings import configure_environment
    from visionzero.rollout.deployment_state import read_state

    configure_environment()
    production = read_state().production
    release = production.model_dump() if production else None  # the dict the benchmarks pass on
    if not release:
        sys.exit("no production model: run `make run` first")
    if args.rates:
        fixed_rates(args, release)
    else:
        compare_servers(args, release)


if __name__ == "__main__":
    main()
