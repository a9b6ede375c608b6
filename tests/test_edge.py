"""The edge passes the app and nothing else: a real nginx rendered from the local canary's template
in front of the echo stand-ins of tests/test_stage_paths.py (which count what reaches them), and
the route list itself against service.py.

Unknown paths, /metrics and wrong methods are answered by nginx and never reach a backend; one
client past its rate or connections gets a JSON 429; every answer, nginx's own errors included,
carries the security headers once; no Location names an upstream; a client cannot choose what
X-VZ-Traffic the backend sees; nginx started as root runs its workers unprivileged.
"""

from __future__ import annotations

import ast
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kubernetes_validate
import psutil
import pydantic
import pytest
import requests
import yaml

from tests import test_map_page
from tests.conftest import ROOT, LocalServer
from tests.test_stage_paths import echo, nginx_canary
from visionzero.platform.settings import settings
from visionzero.rollout import edge
from visionzero.rollout.deployment_state import DeploymentState
from visionzero.rollout.kubernetes import INGRESS_ANNOTATION as INGRESS
from visionzero.rollout.kubernetes import render
from visionzero.rollout.nginx import (
    EdgeLimits,
    make_nginx_temp_folders,
    render_container_nginx_conf,
    render_nginx_canary,
)

browser = test_map_page.browser  # the headless Chromium fixture
# Routes BentoML itself serves next to service.py's: its probes and Swagger's spec and files.
BENTOML_ROUTES = {"/docs.json", "/readyz", "/livez", "/healthz", "/static_content/"}
UNKNOWN = [
    "/metrics",
    "/stage/production/metrics",
    "/stage/staging/metrics",
    "/admin",
    "/.env",
    "/zones/",
    "/metadata/",
    "/docs/",
    "/static",
    "/predict/x",
    "/stage/production/zones/",
    "/stage/staging/nope",
    "/index.html",
    "/stage/production/../../metrics",
]


def service_routes() -> set[str]:
    """The paths service.py declares: its BentoML APIs, its FastAPI GET routes and mounts."""
    tree = ast.parse((ROOT / "service.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
        if name == "read_routes" and node.func.attr in {"get", "post", "mount"}:
            path = node.args[0].value
            found.add(path + "/" if node.func.attr == "mount" else path)
        if name == "bentoml" and node.func.attr == "api":
            found |= {k.value.value for k in node.keywords if k.arg == "route"}
    return found


def test_the_edge_forwards_exactly_the_services_routes() -> None:
    declared = service_routes()
    assert {"/predict", "/zones", "/static/", "/"} <= declared  # the parse found them
    forwarded = {route.path for route in edge.ROUTES}
    assert forwarded == declared | BENTOML_ROUTES
    assert "/metrics" not in forwarded
    methods = {route.path: route.methods for route in edge.ROUTES}
    assert {methods[p] for p in ("/predict", "/route", "/outlook")} == {("POST",)}
    assert {methods[p] for p in forwarded - {"/predict", "/route", "/outlook"}} == {("GET", "HEAD")}


def test_the_rendered_config_has_no_root_workers_and_no_version(tmp_path: Path) -> None:
    upstreams = {"production": "127.0.0.1:1", "staging": "127.0.0.1:2"}
    config = render_nginx_canary(upstreams, 50, "127.0.0.1:3", tmp_path)
    assert "user root" not in config
    assert ("user www-data;" in config) == (os.geteuid() == 0)
    for conf in (config, render_container_nginx_conf()):
        assert "server_tokens off;" in conf and "location / {" in conf
        assert "location /metrics" not in conf and "location = /metrics" not in conf


def test_the_limits_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VZ_EDGE_RATE_PER_SECOND", "7")
    monkeypatch.setenv("VZ_EDGE_BURST", "11")
    monkeypatch.setenv("VZ_EDGE_CONNECTIONS", "13")
    monkeypatch.setenv("VZ_MAX_BODY_BYTES", "4096")
    config = render_nginx_canary({"production": "127.0.0.1:1"}, 0, "80")
    assert "rate=7r/s;" in config and "burst=11 nodelay;" in config
    assert "limit_conn vz_conn 13;" in config and "client_max_body_size 4096;" in config
    compose = render_container_nginx_conf()  # committed: the defaults, not this environment
    assert "rate=50r/s;" in compose and "burst=200 nodelay;" in compose
    assert "limit_conn vz_conn 30;" in compose and "client_max_body_size 4194304;" in compose


def test_connections_per_client_stay_within_what_nginx_accepts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """nginx refuses to start with limit_conn over 65535: the setting says so first."""
    monkeypatch.setenv("VZ_EDGE_CONNECTIONS", "65536")
    with pytest.raises(pydantic.ValidationError, match="vz_edge_connections"):
        settings()


@pytest.fixture(scope="module")
def counted() -> Iterator[tuple[dict[str, str], Counter]]:
    """Production and staging stand-ins counting every request that reaches them."""
    seen: Counter = Counter()
    with (
        LocalServer(echo("production", seen)) as production,
        LocalServer(echo("staging", seen)) as staging,
    ):
        yield {"production": production.url[7:], "staging": staging.url[7:]}, seen


def assert_secured(response: requests.Response) -> None:
    """The security headers once each (nginx's value, not a backend's), a Server without version."""
    for name, value in edge.SECURITY_HEADERS.items():
        assert response.raw.headers.getlist(name) == [value], (name, response.status_code)
    assert response.headers["Server"] == "nginx"


def assert_nginx_error(response: requests.Response, status: int, field: str) -> None:
    assert response.status_code == status, (response.url, response.text)
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["field"] == field
    assert_secured(response)


@pytest.mark.slow
def test_only_the_services_routes_reach_a_backend(counted: tuple[dict, Counter]) -> None:
    upstreams, seen = counted
    with nginx_canary(upstreams) as url, requests.Session() as session:
        for route in edge.ROUTES:
            path = route.path + ("map.js" if route.prefix else "")
            for prefix in ("", "/stage/production", "/stage/staging"):
                answer = session.request(route.methods[0], url + prefix + path, timeout=5)
                assert answer.status_code == 200 and answer.json()["path"] == path, prefix + path
                assert_secured(answer)
        before = sum(seen.values())
        for path in UNKNOWN:
            answer = session.get(url + path, timeout=5, allow_redirects=False)
            assert_nginx_error(answer, 404, "path")
            assert "X-VZ-Stage" not in answer.headers
        above_root = session.get(f"{url}/%2e%2e/etc/passwd", timeout=5)
        assert_nginx_error(above_root, 400, "path")
        # 1,000 made-up paths: not one reaches a backend (nor becomes a metrics series there)
        for index in range(1000):
            assert session.get(f"{url}/made-up/{index}", timeout=5).status_code == 404
        assert sum(seen.values()) == before


@pytest.mark.slow
def test_a_wrong_method_is_405_from_nginx(counted: tuple[dict, Counter]) -> None:
    upstreams, seen = counted
    with nginx_canary(upstreams) as url, requests.Session() as session:
        before = sum(seen.values())
        for method, path, allowed in (
            ("GET", "/predict", "POST"),
            ("PUT", "/stage/staging/route", "POST"),
            ("POST", "/metadata", "GET, HEAD"),
            ("DELETE", "/stage/production/static/map.js", "GET, HEAD"),
        ):
            answer = session.request(method, url + path, timeout=5)
            assert_nginx_error(answer, 405, "method")
            assert answer.headers["Allow"] == allowed
        assert sum(seen.values()) == before


@pytest.mark.slow
def test_one_client_past_its_rate_gets_a_json_429(counted: tuple[dict, Counter]) -> None:
    upstreams, seen = counted
    limits = EdgeLimits(rate=1, burst=5, connections=100)
    with nginx_canary(upstreams, limits=limits) as url, requests.Session() as session:
        before = sum(seen.values())
        answers = [session.get(f"{url}/metadata", timeout=5) for _ in range(20)]
        statuses = Counter(a.status_code for a in answers)
        assert statuses[200] in (6, 7) and statuses[429] == 20 - statuses[200]
        refused = answers[-1]
        assert_nginx_error(refused, 429, "rate")
        assert "too many requests" in refused.json()["error"]
        assert refused.headers["Retry-After"] == "1"
        assert sum(seen.values()) - before == statuses[200]


@pytest.mark.slow
def test_one_client_past_its_connections_gets_a_json_429(counted: tuple[dict, Counter]) -> None:
    """Two requests at once where one connection is allowed: the one the backend holds is served,
    the other is refused (the stand-in answers `?slow` after a second)."""
    upstreams, _ = counted
    limits = EdgeLimits(rate=1000, burst=1000, connections=1)
    with nginx_canary(upstreams, limits=limits) as url, ThreadPoolExecutor(2) as pool:
        slow = pool.submit(requests.get, f"{url}/metadata?slow", timeout=10)
        time.sleep(0.3)
        refused = requests.get(f"{url}/metadata", timeout=5)
        assert_nginx_error(refused, 429, "rate")
        assert slow.result().status_code == 200


@pytest.mark.slow
def test_security_headers_on_every_answer(counted: tuple[dict, Counter]) -> None:
    upstreams, _ = counted
    dead_staging = {**upstreams, "staging": "127.0.0.1:9"}  # discard: refused
    small_bodies = EdgeLimits(rate=1000, burst=1000, connections=100, max_body_bytes=2048)
    with nginx_canary(dead_staging, limits=small_bodies) as url, requests.Session() as session:
        ok = session.get(f"{url}/stage/production/metadata?own-headers", timeout=5)
        assert ok.status_code == 200 and ok.json()["path"] == "/metadata?own-headers"
        assert_secured(ok)  # the backend's own CSP and X-Frame-Options are replaced, not repeated
        assert_nginx_error(session.get(f"{url}/nope", timeout=5), 404, "path")
        down = session.get(f"{url}/stage/staging/metadata", timeout=5)
        assert_nginx_error(down, 503, "stage")
        too_big = session.post(f"{url}/predict", data=b"x" * 4096, timeout=5)
        assert_nginx_error(too_big, 413, "body")
        assert too_big.json()["error"] == "request body larger than 2048 bytes"
    with nginx_canary(upstreams, limits=EdgeLimits(1, 0, 100)) as url:
        answers = [requests.get(f"{url}/boroughs", timeout=5) for _ in range(3)]
        assert_nginx_error(answers[-1], 429, "rate")


@pytest.mark.slow
def test_no_location_names_an_upstream(counted: tuple[dict, Counter]) -> None:
    """Trailing slashes are not the app's paths (404, no backend redirect), a backend's own
    absolute redirect comes back as a path on this host (under the pinned prefix for a stage)."""
    upstreams, _ = counted
    with nginx_canary(upstreams) as url, requests.Session() as session:
        locations = {}
        redirecting = ["/stage/staging", "/metadata?redirect", "/stage/staging/zones?redirect"]
        for path in [*UNKNOWN, *redirecting]:
            answer = session.get(url + path, timeout=5, allow_redirects=False)
            if "Location" in answer.headers:
                locations[path] = answer.headers["Location"]
        assert locations == {
            "/stage/staging": "/stage/staging/",
            "/metadata?redirect": "/metadata",
            "/stage/staging/zones?redirect": "/stage/staging/metadata",
        }


@pytest.mark.slow
def test_a_client_cannot_choose_the_traffic_header(counted: tuple[dict, Counter]) -> None:
    upstreams, _ = counted
    with nginx_canary(upstreams) as url, requests.Session() as session:
        for path, sent, seen in (
            ("/stage/staging/metadata", "split", "pinned"),
            ("/stage/production/predict", "split", "pinned"),
            ("/metadata", "pinned", "split"),
            ("/predict", "pinned", "split"),
        ):
            method = "POST" if path.endswith("predict") else "GET"
            for header in ("X-VZ-Traffic", "x-vz-traffic"):
                answer = session.request(method, url + path, headers={header: sent}, timeout=5)
                assert answer.json()["traffic"] == seen, (path, header)


@pytest.mark.slow
def test_workers_run_unprivileged_and_still_buffer_bodies(counted: tuple[dict, Counter]) -> None:
    """As root (CI runs the suite as root) the workers drop to an unprivileged account that can
    write the temp folders: a 1 MB body (client_body temp) and a 1 MB answer (proxy temp)."""
    upstreams, _ = counted
    body = json.dumps({"items": ["x" * 1_000_000]})
    with nginx_canary(upstreams) as url:
        answer = requests.post(f"{url}/predict", data=body, timeout=10)
        assert answer.status_code == 200 and answer.json()["body"] == body
        port = int(url.rsplit(":", 1)[1])
        masters = [
            p
            for p in psutil.process_iter(["name", "cmdline"])
            if p.info["name"] == "nginx" and any(c.laddr.port == port for c in _listening(p))
        ]
        workers = [w for m in masters for w in m.children()]
        assert workers, "no nginx worker found"
        users = {w.username() for w in workers}
        assert users == ({"www-data"} if os.geteuid() == 0 else {psutil.Process().username()})


def _listening(process: psutil.Process) -> list:
    try:
        return process.net_connections(kind="tcp")
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        return []


def test_the_temp_folders_belong_to_the_workers(tmp_path: Path) -> None:
    workdir = tmp_path / "serve"
    workdir.mkdir(mode=0o700)
    make_nginx_temp_folders(workdir)
    body = workdir / "tmp" / "client_body"
    assert body.is_dir()
    if os.geteuid() == 0:
        assert body.owner() == "www-data" and body.stat().st_mode & 0o777 == 0o700
        assert workdir.group() == "www-data" and workdir.stat().st_mode & 0o777 == 0o710


CSP_RECORDER = """
window.vzViolations = [];
document.addEventListener('securitypolicyviolation',
    (e) => window.vzViolations.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


@pytest.mark.slow
def test_the_map_page_and_swagger_work_under_the_policy(browser: object, served: str) -> None:
    """The real page and BentoML's Swagger UI through nginx in headless Chromium: they draw, and
    the Content-Security-Policy blocks nothing they load."""
    with nginx_canary({"production": served[7:]}) as url:
        context = browser.new_context()
        try:
            page = context.new_page()
            page.add_init_script(CSP_RECORDER)
            page.goto(url + "/")
            page.wait_for_function("document.body.dataset.state === 'ready'", timeout=60_000)
            assert page.evaluate("window.vzViolations") == []
            page.goto(url + "/docs")
            page.wait_for_selector("text=/predict", timeout=30_000)
            assert page.evaluate("window.vzViolations") == []
        finally:
            context.close()


def k8s_docs(tmp_path: Path) -> list[dict]:
    release = {
        "model_version": 1,
        "model_tag": "nyc_crash_risk:m1",
        "bento_tag": "crash_risk:b1",
        "arm64_bento_tag": "crash_risk_arm64:a1",
    }
    state = {"production": release, "staging": {**release, "model_version": 2}, "canary_weight": 50}
    rendered = render(DeploymentState.model_validate(state), tmp_path / "out")
    return [yaml.safe_load(path.read_text()) for path in rendered]


def test_the_ingresses_forward_exactly_the_services_routes(tmp_path: Path) -> None:
    docs = {d["metadata"]["name"]: d for d in k8s_docs(tmp_path) if d["kind"] == "Ingress"}
    candidates = [route.path + ("x.js" if route.prefix else "") for route in edge.ROUTES]
    strangers = ["/metrics", "/admin", "/zones/", "/METADATA", "/metadatax", "/static", "/x/zones"]
    for name, prefix in (("crash-risk", ""), ("crash-risk-canary", "")) + tuple(
        (f"crash-risk-stage-{s}", f"/stage/{s}") for s in ("production", "staging")
    ):
        ingress = docs[name]
        kubernetes_validate.validate(ingress, "1.33.0", strict=True)
        paths = [p["path"] for p in ingress["spec"]["rules"][0]["http"]["paths"]]
        assert "/" not in paths and not any("metrics" in p for p in paths)

        def matched(path: str, paths: list[str] = paths) -> bool:
            """ingress-nginx's regex location: `~* ^path` (its rewrite-target makes it so)."""
            return any(re.match(p, path, flags=re.IGNORECASE) for p in paths)

        assert all(matched(prefix + path) for path in candidates), name
        assert not any(matched(prefix + path) for path in strangers), name
        assert not any(matched(f"/stage/other{path}") for path in candidates)


def test_the_ingresses_limit_clients_set_headers_and_serve_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("VZ_EDGE_RATE_PER_SECOND", "VZ_EDGE_BURST", "VZ_EDGE_CONNECTIONS"):
        monkeypatch.delenv(name)  # the defaults (conftest raises them for load tests)
    docs = {d["metadata"]["name"]: d for d in k8s_docs(tmp_path) if d["kind"] == "Ingress"}
    main, canary = docs["crash-risk"], docs["crash-risk-canary"]
    pinned = docs["crash-risk-stage-staging"]
    assert main["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt"
    for ingress in (main, pinned):
        assert ingress["spec"]["tls"] == [
            {"hosts": ["crash-risk.example.org"], "secretName": "crash-risk-tls"}
        ]
    for ingress, traffic in ((main, "split"), (pinned, "pinned")):
        annotations = ingress["metadata"]["annotations"]
        nginx = {
            k.removeprefix(INGRESS): v for k, v in annotations.items() if k.startswith(INGRESS)
        }
        assert (nginx["limit-rps"], nginx["limit-burst-multiplier"]) == ("50", "4")
        assert nginx["limit-connections"] == "30" and nginx["proxy-body-size"] == "4194304"
        snippet = nginx["configuration-snippet"].splitlines()
        assert snippet[0] == f"proxy_set_header X-VZ-Traffic {traffic};"
        assert snippet[1:] == [
            f'more_set_headers "{k}: {v}";' for k, v in edge.SECURITY_HEADERS.items()
        ]
    # ingress-nginx applies the main Ingress's annotations to the canary's requests
    assert not any("snippet" in key or "limit" in key for key in canary["metadata"]["annotations"])


def test_the_httproutes_forward_exactly_the_services_routes(tmp_path: Path) -> None:
    routes = {d["metadata"]["name"]: d for d in k8s_docs(tmp_path) if d["kind"] == "HTTPRoute"}
    expected = {(r.path, "PathPrefix" if r.prefix else "Exact") for r in edge.ROUTES}
    for name, route in routes.items():
        assert route["spec"]["parentRefs"][0]["sectionName"] == "https"
        prefix = "" if name == "crash-risk" else "/stage/" + name.removeprefix("crash-risk-stage-")
        forwarded = {
            (m["path"]["value"].removeprefix(prefix), m["path"]["type"])
            for rule in route["spec"]["rules"]
            if "backendRefs" in rule
            for m in rule["matches"]
        }
        assert forwarded == {(prefix and p or p, t) for p, t in expected}, name
        traffic = "split" if name == "crash-risk" else "pinned"
        for rule in route["spec"]["rules"]:
            if "backendRefs" not in rule:  # /stage/<stage> -> /stage/<stage>/
                continue
            filters = {f["type"]: f for f in rule["filters"]}
            assert filters["RequestHeaderModifier"]["requestHeaderModifier"] == {
                "set": [{"name": "X-VZ-Traffic", "value": traffic}]
            }
            answer = filters["ResponseHeaderModifier"]["responseHeaderModifier"]["set"]
            assert {h["name"]: h["value"] for h in answer} == edge.SECURITY_HEADERS
