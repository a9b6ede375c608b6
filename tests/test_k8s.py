"""Rendered Kubernetes manifests: schema-valid offline, and the canary holds 50/50 in both forms."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from string import Template

import kubernetes_validate
import pytest
import yaml

from tests.conftest import K8S_TEMPLATE_VALUES, ROOT
from tests.pod_security import restricted_violations
from visionzero.platform.cluster import quantity
from visionzero.rollout import deployment_state
from visionzero.rollout.deployment_state import DeploymentState
from visionzero.rollout.kubernetes import render
from visionzero.serving.bento_build import Release

K8S_VERSION = "1.33.0"


def release(version: int) -> Release:
    return Release(
        model_version=version,
        model_tag=f"nyc_crash_risk:m{version}",
        bento_tag=f"crash_risk:b{version}",
        arm64_bento_tag=f"crash_risk_arm64:a{version}",
    )


def load(out_dir: Path) -> list[dict]:
    return [yaml.safe_load(path.read_text()) for path in sorted(out_dir.glob("*.yaml"))]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def canary_state() -> DeploymentState:
    """Production 1 with staging 2 taking the canary share."""
    return DeploymentState(production=release(1), staging=release(2), canary_weight=50)


@pytest.fixture
def canary_docs(tmp_path: Path) -> list[dict]:
    state = canary_state()
    render(state, tmp_path / "out")
    return load(tmp_path / "out")


def test_every_core_manifest_validates(canary_docs: list[dict]) -> None:
    for doc in canary_docs:
        if doc["apiVersion"].startswith("gateway.networking.k8s.io"):
            continue  # a CRD: checked by test_httproute_splits_50_50
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kinds = sorted(d["kind"] for d in canary_docs)
    assert kinds == sorted(
        [
            "Deployment",
            "Deployment",
            "Service",
            "Service",
            "HorizontalPodAutoscaler",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "NetworkPolicy",
            "NetworkPolicy",
            "Ingress",
            "Ingress",
            "Ingress",
            "Ingress",
            "HTTPRoute",
            "HTTPRoute",
            "HTTPRoute",
        ]
    )


def test_deployments_are_probed_limited_and_non_root(canary_docs: list[dict]) -> None:
    for deployment in by_kind(canary_docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert container["resources"]["requests"] and container["resources"]["limits"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        stage = deployment["metadata"]["labels"]["stage"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["VZ_STAGE"] == stage
        assert (
            container["image"]
            == f"localhost:5000/visionzero/crash-risk:b{1 if stage == 'production' else 2}"
        )


def test_both_stages_scale_on_cpu_up_fast_and_down_slowly(canary_docs: list[dict]) -> None:
    """Each stage's HPA targets its own Deployment, whose container requests CPU (a Utilization
    target is a share of the request: without one the HPA never scales)."""
    deployments = {d["metadata"]["name"]: d for d in by_kind(canary_docs, "Deployment")}
    hpas = by_kind(canary_docs, "HorizontalPodAutoscaler")
    assert sorted(h["metadata"]["labels"]["stage"] for h in hpas) == ["production", "staging"]
    for hpa in hpas:
        assert hpa["apiVersion"] == "autoscaling/v2"
        stage = hpa["metadata"]["labels"]["stage"]
        target = hpa["spec"]["scaleTargetRef"]
        assert target == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": f"crash-risk-{stage}",
        }
        deployment = deployments[target["name"]]
        assert deployment["metadata"]["namespace"] == hpa["metadata"]["namespace"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert quantity(container["resources"]["requests"]["cpu"]) > 0
        spec = hpa["spec"]
        assert 2 <= spec["minReplicas"] < spec["maxReplicas"]
        (metric,) = spec["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert 0 < metric["resource"]["target"]["averageUtilization"] < 100
        up, down = spec["behavior"]["scaleUp"], spec["behavior"]["scaleDown"]
        assert up["stabilizationWindowSeconds"] < down["stabilizationWindowSeconds"]
        assert all(p["value"] <= 50 for p in down["policies"] if p["type"] == "Percent")


def test_disruption_budgets_cover_each_stage_one_pod_at_a_time(canary_docs: list[dict]) -> None:
    """A drain evicts at most one pod of a stage: its budget selects exactly that stage's pods."""
    budgets = by_kind(canary_docs, "PodDisruptionBudget")
    hpas = {
        h["metadata"]["labels"]["stage"]: h for h in by_kind(canary_docs, "HorizontalPodAutoscaler")
    }
    for deployment in by_kind(canary_docs, "Deployment"):
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [
            b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        ]
        (budget,) = covering
        assert budget["spec"]["maxUnavailable"] == 1
        assert hpas[pod_labels["stage"]]["spec"]["minReplicas"] > budget["spec"]["maxUnavailable"]


def named(docs: list[dict], kind: str, *names: str) -> list[dict]:
    found = {d["metadata"]["name"]: d for d in by_kind(docs, kind)}
    return [found[name] for name in names]


def test_canary_ingress_takes_50_percent_on_the_same_host_and_paths(
    canary_docs: list[dict],
) -> None:
    main, canary = named(canary_docs, "Ingress", "crash-risk", "crash-risk-canary")
    assert canary["metadata"]["annotations"] == {
        "nginx.ingress.kubernetes.io/canary": "true",
        "nginx.ingress.kubernetes.io/canary-weight": "50",
        "nginx.ingress.kubernetes.io/use-regex": "true",
    }
    assert main["spec"]["rules"][0]["host"] == canary["spec"]["rules"][0]["host"]
    main_paths = main["spec"]["rules"][0]["http"]["paths"]
    canary_paths = canary["spec"]["rules"][0]["http"]["paths"]
    assert [p["path"] for p in main_paths] == [p["path"] for p in canary_paths]  # paired by path
    assert {p["backend"]["service"]["name"] for p in main_paths} == {"crash-risk-production"}
    assert {p["backend"]["service"]["name"] for p in canary_paths} == {"crash-risk-staging"}


def test_httproute_splits_50_50(canary_docs: list[dict]) -> None:
    (route,) = named(canary_docs, "HTTPRoute", "crash-risk")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    (rule,) = route["spec"]["rules"]
    refs = {ref["name"]: ref["weight"] for ref in rule["backendRefs"]}
    assert refs == {"crash-risk-production": 50, "crash-risk-staging": 50}
    services = {d["metadata"]["name"] for d in by_kind(canary_docs, "Service")}
    assert set(refs) <= services


# From the Gateway API v1 HTTPRoute CRD (standard channel): the enums of a filter's type and of a
# path modifier's type, and its CEL rules on a rule: `replacePrefixMatch` is required with
# type ReplacePrefixMatch, and "When using URLRewrite filter with path.replacePrefixMatch, exactly
# one PathPrefix match must be specified"; at most 16 rules, 64 matches a rule, each filter type
# once a rule; a RequestRedirect's status 301 or 302.
FILTER_FIELDS = {  # a filter's type and the one field that configures it
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestMirror": "requestMirror",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "ExtensionRef": "extensionRef",
}
PATH_MODIFIER_TYPES = {"ReplaceFullPath", "ReplacePrefixMatch"}


def check_httproute_rules(route: dict) -> None:
    """The CRD's constraints on the rules render() writes (kubernetes-validate has no CRDs)."""
    rules = route["spec"]["rules"]
    assert 1 <= len(rules) <= 16
    for rule in rules:
        assert 1 <= len(rule["matches"]) <= 64
        for match in rule["matches"]:
            assert match["path"]["type"] in {"Exact", "PathPrefix", "RegularExpression"}
            assert match["path"]["value"].startswith("/")
            assert set(match) <= {"path", "method"}
        types = [fil["type"] for fil in rule.get("filters", [])]
        assert len(types) == len(set(types))
        for fil in rule.get("filters", []):
            assert set(fil) == {"type", FILTER_FIELDS[fil["type"]]}
            config = fil.get("urlRewrite") or fil.get("requestRedirect") or {}
            if fil["type"] == "RequestRedirect":
                assert config["statusCode"] in {301, 302} and "backendRefs" not in rule
            path = config.get("path")
            if path is None:
                continue
            assert path["type"] in PATH_MODIFIER_TYPES
            if path["type"] == "ReplacePrefixMatch":
                assert set(path) == {"type", "replacePrefixMatch"}
                assert len(path["replacePrefixMatch"]) <= 1024
                assert [m["path"]["type"] for m in rule["matches"]] == ["PathPrefix"]
            else:
                assert set(path) == {"type", "replaceFullPath"}
        for ref in rule.get("backendRefs", []):
            assert 1 <= ref["port"] <= 65535 and 0 <= ref.get("weight", 1) <= 1_000_000


def pinned_path(route: dict, request_path: str) -> str | None:
    """The path a stage's HTTPRoute sends upstream for `request_path` (Exact or path-element
    PathPrefix matches, then the URLRewrite), "redirect" for its redirect; None when no rule
    matches."""
    for rule in route["spec"]["rules"]:
        for match in rule["matches"]:
            kind, value = match["path"]["type"], match["path"]["value"]
            prefixed = request_path.startswith(value.rstrip("/") + "/") or (
                request_path == value.rstrip("/")
            )
            if (kind == "Exact" and request_path == value) or (kind == "PathPrefix" and prefixed):
                filters = {f["type"]: f for f in rule["filters"]}
                if "RequestRedirect" in filters:
                    return "redirect"
                path = filters["URLRewrite"]["urlRewrite"]["path"]
                if path["type"] == "ReplaceFullPath":
                    return path["replaceFullPath"]
                rest = request_path[len(value.rstrip("/")) :].lstrip("/")
                return path["replacePrefixMatch"].rstrip("/") + "/" + rest
    return None


def rewritten(ingress: dict, request_path: str) -> str | None:
    """The path ingress-nginx sends upstream: its regex locations (`~* ^path`, case-insensitive)
    and rewrite-target with the capture groups; None when no path matches."""
    target = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/rewrite-target"]
    for path in ingress["spec"]["rules"][0]["http"]["paths"]:
        found = re.match(path["path"], request_path, flags=re.IGNORECASE)
        if found:
            return re.sub(r"\$(\d)", lambda m, f=found: f.group(int(m.group(1))) or "", target)
    return None


def test_stage_paths_are_pinned_in_the_httproutes_and_the_ingresses(
    canary_docs: list[dict],
) -> None:
    """/stage/<stage>/<route> reaches that stage's Service alone, as <route>, in both forms."""
    for stage in ("production", "staging"):
        (route,) = named(canary_docs, "HTTPRoute", f"crash-risk-stage-{stage}")
        check_httproute_rules(route)
        refs = {
            ref["name"] for rule in route["spec"]["rules"] for ref in rule.get("backendRefs", [])
        }
        assert refs == {f"crash-risk-{stage}"}  # one Service, no fallback
        assert pinned_path(route, f"/stage/{stage}/zones") == "/zones"
        assert pinned_path(route, f"/stage/{stage}/static/vendor/a.js") == "/static/vendor/a.js"
        assert pinned_path(route, f"/stage/{stage}/") == "/"
        assert pinned_path(route, f"/stage/{stage}") == "redirect"
        for unknown in ("/zones", f"/stage/{stage}/metrics", f"/stage/{stage}/zones/x"):
            assert pinned_path(route, unknown) is None, unknown
    production, staging = named(
        canary_docs, "Ingress", "crash-risk-stage-production", "crash-risk-stage-staging"
    )
    for stage, ingress in (("production", production), ("staging", staging)):
        annotations = ingress["metadata"]["annotations"]
        assert annotations["nginx.ingress.kubernetes.io/use-regex"] == "true"
        assert not any("canary" in key for key in annotations)
        for path in ingress["spec"]["rules"][0]["http"]["paths"]:
            assert path["pathType"] == "ImplementationSpecific"
            assert path["backend"]["service"] == {
                "name": f"crash-risk-{stage}",
                "port": {"name": "http"},
            }
        assert rewritten(ingress, f"/stage/{stage}/zones") == "/zones"
        assert rewritten(ingress, f"/stage/{stage}/static/map.js") == "/static/map.js"
        assert rewritten(ingress, f"/stage/{stage}/") == "/"
        assert rewritten(ingress, f"/stage/{stage}") == "/"
        assert rewritten(ingress, f"/stage/{stage}x/zones") is None
        assert rewritten(ingress, "/zones") is None
    main = named(canary_docs, "Ingress", "crash-risk")[0]
    hosts = {i["spec"]["rules"][0]["host"] for i in (main, production, staging)}
    assert len(hosts) == 1


def test_without_staging_production_takes_everything(tmp_path: Path) -> None:
    render(DeploymentState(production=release(1), canary_weight=50), tmp_path / "out")
    docs = load(tmp_path / "out")
    assert len(by_kind(docs, "Ingress")) == 2 and len(by_kind(docs, "Deployment")) == 1
    (route,) = named(docs, "HTTPRoute", "crash-risk")
    assert route["spec"]["rules"][0]["backendRefs"] == [
        {"name": "crash-risk-production", "port": 80, "weight": 100}
    ]
    check_httproute_rules(route)
    stage_routes = [r["metadata"]["name"] for r in by_kind(docs, "HTTPRoute") if r is not route]
    assert stage_routes == ["crash-risk-stage-production"]  # /stage/staging/... is a 404
    (stage_ingress,) = [i for i in by_kind(docs, "Ingress") if "stage" in i["metadata"]["name"]]
    assert stage_ingress["metadata"]["name"] == "crash-risk-stage-production"


@pytest.mark.slow
def test_render_k8s_command_uses_the_deployment_state(trained: dict, tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "run.py", "render-k8s", "--out", str(tmp_path / "k8s")],
        cwd=ROOT,
        env=os.environ,
        check=True,
        capture_output=True,
    )
    docs = load(tmp_path / "k8s")
    images = {
        d["spec"]["template"]["spec"]["containers"][0]["image"] for d in by_kind(docs, "Deployment")
    }
    assert images == {
        f"localhost:5000/visionzero/crash-risk:{trained.production.bento_tag.split(':')[1]}"
    }


def test_kubernetes_target_without_docker_or_cluster_leaves_manifests_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from visionzero.rollout import actions as rollout
    from visionzero.rollout import kubernetes

    monkeypatch.setenv("VZ_HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setattr(
        kubernetes, "docker_available", lambda: False
    )  # no engine on these machines
    result = rollout.roll_out(
        DeploymentState(production=release(1), staging=release(2), canary_weight=50), "kubernetes"
    )
    assert "no Docker engine" in result["images_error"]
    assert "KUBECONFIG is not set" in result["apply_error"]
    assert result["files"] == len(list((tmp_path / "k8s").glob("*.yaml"))) == 18


PART_OF = "app.kubernetes.io/part-of"


@pytest.mark.faults
def test_every_object_is_labelled_and_no_replicas_fight_the_hpa(canary_docs: list[dict]) -> None:
    """`kubectl apply --prune -l` only applies and prunes labelled objects; an HPA owns replicas."""
    assert all(doc["metadata"]["labels"][PART_OF] == "visionzero-risk" for doc in canary_docs)
    scaled = {
        hpa["spec"]["scaleTargetRef"]["name"]
        for hpa in by_kind(canary_docs, "HorizontalPodAutoscaler")
    }
    deployments = by_kind(canary_docs, "Deployment")
    assert {d["metadata"]["name"] for d in deployments} == scaled
    assert [d["metadata"]["name"] for d in deployments if "replicas" in d["spec"]] == []


@pytest.mark.faults
def test_after_rollback_the_apply_prunes_the_canary(tmp_path: Path) -> None:
    """A plain `kubectl apply -f` after a rollback left the canary Ingress sending 50% to staging:
    the apply plan between the two renders deletes every staging object and the canary."""
    from visionzero.rollout.kubernetes import PRUNE_ALLOWLIST, apply_command, apply_plan

    state = canary_state()
    render(state, tmp_path / "canary")
    assert deployment_state.rollback(state).model_version == 1 and state.staging is None
    render(state, tmp_path / "rolled-back")
    before, after = load(tmp_path / "canary"), load(tmp_path / "rolled-back")
    plan = apply_plan(before, after)
    assert plan["delete"] == [
        "Deployment/crash-risk-staging",
        "HTTPRoute/crash-risk-stage-staging",
        "HorizontalPodAutoscaler/crash-risk-staging",
        "Ingress/crash-risk-canary",
        "Ingress/crash-risk-stage-staging",
        "PodDisruptionBudget/crash-risk-staging",
        "Service/crash-risk-staging",
    ]
    assert plan["create"] == []
    assert "HTTPRoute/crash-risk" in plan["update"] and "Ingress/crash-risk" in plan["update"]
    assert apply_plan(after, before)["create"] == plan["delete"]  # a new canary comes back
    # every kind the templates render can be pruned (the Namespace is applied once, not rendered)
    kinds = {
        f"{d['apiVersion'] if '/' in d['apiVersion'] else 'core/' + d['apiVersion']}/{d['kind']}"
        for d in before
    }
    assert kinds == set(PRUNE_ALLOWLIST)
    assert apply_command(tmp_path / "rolled-back") == [
        "kubectl",
        "apply",
        "-f",
        str(tmp_path / "rolled-back"),
        "--prune",
        "-l",
        "app.kubernetes.io/part-of=visionzero-risk",
        "--prune-allowlist=core/v1/Service",
        "--prune-allowlist=apps/v1/Deployment",
        "--prune-allowlist=autoscaling/v2/HorizontalPodAutoscaler",
        "--prune-allowlist=policy/v1/PodDisruptionBudget",
        "--prune-allowlist=networking.k8s.io/v1/NetworkPolicy",
        "--prune-allowlist=networking.k8s.io/v1/Ingress",
        "--prune-allowlist=gateway.networking.k8s.io/v1/HTTPRoute",
    ]


@pytest.mark.faults
def test_apply_runs_kubectl_with_prune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command kubectl receives is the pruning one (a stand-in kubectl records its argv)."""
    from visionzero.rollout import kubernetes

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path / "argv"}\necho applied\n')
    kubectl.chmod(0o755)
    (tmp_path / "kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    render(DeploymentState(production=release(1), canary_weight=50), tmp_path / "out")
    assert kubernetes.apply(tmp_path / "out").strip() == "applied"
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv == kubernetes.apply_command(tmp_path / "out")[1:]
    assert "--prune" in argv


# --- Pod Security, serving pods, network policies -------------------------------------------------


def template(name: str) -> list[dict]:
    text = (ROOT / "k8s" / name).read_text()
    return [d for d in yaml.safe_load_all(Template(text).substitute(K8S_TEMPLATE_VALUES)) if d]


def test_namespace_enforces_pod_security_restricted(canary_docs: list[dict]) -> None:
    """Applied once per cluster, never rendered: the deployer needs no right on Namespaces."""
    (namespace,) = template("namespace.yaml")
    kubernetes_validate.validate(namespace, K8S_VERSION, strict=True)
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
        assert labels[f"pod-security.kubernetes.io/{mode}-version"] == "v1.33"
    assert "Namespace" not in {d["kind"] for d in canary_docs}


def test_every_pod_of_the_manifests_is_admitted_as_restricted(canary_docs: list[dict]) -> None:
    """The Deployments and both CronJobs (ZenML's pods: tests/test_cluster.py)."""
    pods = [d["spec"]["template"]["spec"] for d in by_kind(canary_docs, "Deployment")]
    for name in ("train-cronjob.yaml", "monitor-cronjob.yaml"):
        (cronjob,) = template(name)
        pods.append(cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    assert len(pods) == 4
    for pod in pods:
        assert restricted_violations(pod) == []
    privileged = {**pods[0], "hostNetwork": True, "volumes": [{"name": "h", "hostPath": {}}]}
    assert restricted_violations(privileged) == ["hostNetwork", "volume h: ['hostPath']"]


def test_serving_pods_have_no_token_and_a_read_only_root(canary_docs: list[dict]) -> None:
    """No API token in a model server, and its root filesystem read-only: what `bentoml serve`
    writes has an emptyDir of bounded size (tests/test_secrets.py serves a Bento laid out as in
    its image and checks it writes nowhere else)."""
    for deployment in by_kind(canary_docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        (container,) = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        assert set(mounts) == {"/tmp", "/home/bentoml/prometheus_multiproc_dir"}
        assert all(v["emptyDir"]["sizeLimit"] for v in mounts.values())


def _selects(selector: dict, labels: dict) -> bool:
    """A LabelSelector (matchLabels, matchExpressions In / NotIn / Exists) against labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
    return True


def reachable(
    policies: list[dict],
    pod: dict,
    direction: str,
    port: int,
    protocol: str = "TCP",
    peer_namespace: str = "visionzero",
    peer: dict | None = None,
) -> bool:
    """Whether the NetworkPolicies let traffic through, as the API defines them: a pod selected by
    no policy of that direction is open; otherwise some rule of a selecting policy must match the
    port and the peer (pods of namespace `peer_namespace` labelled `peer`; an external address
    when peer_namespace is None)."""
    selecting = [
        p
        for p in policies
        if direction in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], pod)
    ]
    if not selecting:
        return True
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    namespace_labels = {"kubernetes.io/metadata.name": peer_namespace}
    for policy in selecting:
        for rule in policy["spec"].get(key) or []:
            ports = rule.get("ports")
            if ports and not any(
                p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports
            ):
                continue
            peers = rule.get(peers_key)
            if not peers:
                return True
            for entry in peers:
                if peer_namespace is None:
                    continue  # only ipBlock peers reach outside the cluster; none is used here
                if "namespaceSelector" in entry:
                    if not _selects(entry["namespaceSelector"], namespace_labels):
                        continue
                elif peer_namespace != "visionzero":
                    continue
                if _selects(entry.get("podSelector") or {}, peer or {}):
                    return True
    return False


SERVING = {"app": "crash-risk", "stage": "production"}
CRONJOB = {"app": "crash-risk-pipelines", "pipeline": "train"}
ZENML_POD = {"zenml-pipeline": "training"}  # ZenML's pods carry no `app` label
DNS = {"peer_namespace": "kube-system", "peer": {"k8s-app": "kube-dns"}}


def test_network_policies_deny_by_default_with_the_needed_exceptions(
    canary_docs: list[dict],
) -> None:
    policies = by_kind(canary_docs, "NetworkPolicy")
    # the model servers: their port from the ingress controller, the gateway and Prometheus only
    for namespace in ("ingress-nginx", "gateway-system", "monitoring"):
        assert reachable(policies, SERVING, "Ingress", 3000, peer_namespace=namespace)
    assert not reachable(policies, SERVING, "Ingress", 3000, peer=CRONJOB)
    assert not reachable(policies, SERVING, "Ingress", 3000, peer_namespace="default")
    assert not reachable(policies, SERVING, "Ingress", 22, peer_namespace="ingress-nginx")
    # and they call nothing, not even DNS
    assert not reachable(policies, SERVING, "Egress", 53, "UDP", **DNS)
    assert not reachable(policies, SERVING, "Egress", 443, peer_namespace=None)
    # the pipelines: nothing reaches them; they reach DNS, HTTPS, the API server, the team services
    for pod in (CRONJOB, ZENML_POD):
        assert not reachable(policies, pod, "Ingress", 8080, peer=CRONJOB)
        assert not reachable(policies, pod, "Ingress", 8080, peer_namespace="monitoring")
        assert reachable(policies, pod, "Egress", 53, "UDP", **DNS)
        assert not reachable(policies, pod, "Egress", 53, "UDP", peer_namespace="default")
        for port in (443, 6443, 5000, 8080, 9000, 9090, 9091):
            assert reachable(policies, pod, "Egress", port, peer_namespace=None), port
        assert not reachable(policies, pod, "Egress", 22, peer_namespace=None)
        assert not reachable(policies, pod, "Egress", 3000, peer=SERVING)
    # without the policies everything is open: the check above is the policies' doing
    assert reachable([], SERVING, "Egress", 443, peer_namespace=None)
