"""The serving benchmark's fixed-rate runner (benchmarks/_load.py): hey against a real HTTP server
on 127.0.0.1 that answers some requests with 503, so the rate, the answers and the errors it
reports can be checked against what the server itself counted."""

from __future__ import annotations

import argparse
import shutil
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks._load import hey
from benchmarks.serving import rate_list


def test_rates_are_positive_whole_numbers() -> None:
    assert rate_list("1000,2000") == [1000, 2000]
    for bad in ("0", "1000,-5", "fast", "1000,", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive whole requests"):
            rate_list(bad)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("hey") is None, reason="hey is missing: make bench-deps")
def test_hey_holds_the_rate_and_counts_every_non_200(tmp_path: Path) -> None:
    seen: Counter[int] = Counter()
    lock = threading.Lock()

    class Every5thFails(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as hey and nginx use it

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                status = 503 if sum(seen.values()) % 5 == 4 else 200
                seen[status] += 1
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Every5thFails)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    body = tmp_path / "body.json"
    body.write_text('{"items": []}')
    try:
        result = hey(f"http://127.0.0.1:{server.server_port}", 100, 3, 5, body)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    # 5 workers at 20 a second each: 100 a second in all, not 5 x 100
    assert 90 <= result["achieved_rps"] <= 105
    assert result["answered"] == seen[200]
    assert result["errors"] == seen[503] > 0
    assert 0 < result["p50_ms"] <= result["p99_ms"]
