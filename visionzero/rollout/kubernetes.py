"""Render k8s/ templates from the deployment state, and push images / apply manifests
when configured.

What Yatai did for BentoML <= 1.1, with plain manifests: production and staging Deployments of
the Bento images (each scaled by its HPA, evicted one pod at a time by its PodDisruptionBudget),
an ingress-nginx canary Ingress and, as its replacement, a Gateway API HTTPRoute, both 50/50;
both also pin `/stage/<stage>/<path>` to one stage (the map page's stage switch, as the local
nginx does). Every object carries the `part-of` label, so
`kubectl apply --prune` deletes what the state no longer has (the canary and the staging objects
after a rollback).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from string import Template

import yaml

from visionzero.platform.settings import REPO_ROOT, settings
from visionzero.rollout import edge
from visionzero.rollout.deployment_state import (
    DeploymentState,
    require_production,
    staging_weight,
)
from visionzero.serving.bento_build import Release

TEMPLATES = REPO_ROOT / "k8s"
PER_STAGE = [
    "deployment.yaml",
    "service.yaml",
    "hpa.yaml",
    "pdb.yaml",
    "ingress-stage.yaml",
    "httproute-stage.yaml",
]
INGRESS_ANNOTATION = "nginx.ingress.kubernetes.io/"
PART_OF_LABEL = "app.kubernetes.io/part-of"
PART_OF = "visionzero-risk"
# Every kind render() can write, as kubectl's --prune-allowlist names them (group/version/kind,
# "core" for the core group). The Namespace is not rendered: k8s/namespace.yaml is applied once per
# cluster, so the deployer needs no right on it.
PRUNE_ALLOWLIST = [
    "core/v1/Service",
    "apps/v1/Deployment",
    "autoscaling/v2/HorizontalPodAutoscaler",
    "policy/v1/PodDisruptionBudget",
    "networking.k8s.io/v1/NetworkPolicy",
    "networking.k8s.io/v1/Ingress",
    "gateway.networking.k8s.io/v1/HTTPRoute",
]


class NoContainerEngine(RuntimeError):
    """`bentoml containerize` needs a Docker (or BuildKit) engine and none answers here."""


def template_values() -> dict[str, str]:
    current = settings()
    return {
        "NAMESPACE": current.vz_k8s_namespace,
        "HOST": current.vz_k8s_host,
        "GATEWAY": current.vz_k8s_gateway,
        "GATEWAY_LISTENER": current.vz_k8s_gateway_listener,
        "TLS_SECRET": current.vz_k8s_tls_secret,
        "CLUSTER_ISSUER": current.vz_k8s_cluster_issuer,
        "REGISTRY": current.vz_registry,
    }


def image_for(bento_tag: str, registry: str, arch: str = "") -> str:
    name, version = bento_tag.split(":", 1)
    return f"{registry}/{name.replace('_', '-')}:{version}{arch}"


def _render(template: str, values: dict[str, str]) -> list[dict]:
    text = Template((TEMPLATES / template).read_text()).substitute(values)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def ingress_paths(service: str, prefix: str = "") -> list[dict]:
    """The service's routes as ingress-nginx path regexes, under `prefix` (a pinned stage's, with
    rewrite-target `/$1` sending the route). Regexes because rewrite-target turns every path of
    the host into a case-blind regex location (`~* ^path`), Exact ones too: each is anchored with
    `$` and case-sensitive (`(?-i:...)`, RE2 and PCRE alike), so /METADATA or /metadata/x match
    nothing. No `/` catch-all: any other path is ingress-nginx's own 404. Without a prefix,
    `/stage/<stage>` alone serves the page (the slash is optional)."""
    exact = "|".join(re.escape(r.path[1:]) for r in edge.ROUTES if not r.prefix and r.path != "/")
    folders = "|".join(re.escape(r.path[1:-1]) for r in edge.ROUTES if r.prefix)
    if prefix:
        paths = [f"{prefix}(?-i:(?:/({exact})?)?)$", f"{prefix}/(?-i:((?:{folders})/.+))"]
    else:
        paths = [f"/(?-i:({exact})?)$", f"/(?-i:({folders})/.+)"]
    return [
        {
            "path": path,
            "pathType": "ImplementationSpecific",
            "backend": {"service": {"name": service, "port": {"name": "http"}}},
        }
        for path in paths
    ]


def edge_annotations(traffic: str) -> dict[str, str]:
    """ingress-nginx annotations for per-client limits, the body limit, the security headers and
    X-VZ-Traffic. The headers need `configuration-snippet` (the controller must allow snippets):
    ingress-nginx has no per-Ingress annotation for a request header (`proxy-set-headers` is
    controller-wide, `custom-headers` sets answers' headers only), and `more_set_headers` sets
    the security headers on every answer, errors included."""
    current = settings()
    rate = current.vz_edge_rate_per_second
    snippet = [f"proxy_set_header {edge.TRAFFIC_HEADER} {traffic};"]
    snippet += [
        f'more_set_headers "{name}: {value}";' for name, value in edge.SECURITY_HEADERS.items()
    ]
    return {
        INGRESS_ANNOTATION + "limit-rps": str(rate),
        # ingress-nginx's burst is rate x multiplier
        INGRESS_ANNOTATION + "limit-burst-multiplier": str(
            max(1, -(-current.vz_edge_burst // rate))
        ),
        INGRESS_ANNOTATION + "limit-connections": str(current.vz_edge_connections),
        INGRESS_ANNOTATION + "proxy-body-size": str(current.vz_max_body_bytes),
        INGRESS_ANNOTATION + "configuration-snippet": "\n".join(snippet) + "\n",
    }


def header_filters(traffic: str) -> list[dict]:
    """HTTPRoute filters: X-VZ-Traffic set for the backend (a client's own value replaced), the
    security headers set on the answer."""
    return [
        {
            "type": "RequestHeaderModifier",
            "requestHeaderModifier": {"set": [{"name": edge.TRAFFIC_HEADER, "value": traffic}]},
        },
        {
            "type": "ResponseHeaderModifier",
            "responseHeaderModifier": {
                "set": [{"name": k, "value": v} for k, v in edge.SECURITY_HEADERS.items()]
            },
        },
    ]


def route_matches(prefix: str = "") -> list[dict]:
    """HTTPRoute matches for the service's routes (under `prefix`): Exact, PathPrefix for a
    folder; a POST-only route matches POST alone."""
    return [
        {
            "path": {"type": "PathPrefix" if r.prefix else "Exact", "value": prefix + r.path},
            **({"method": r.methods[0]} if len(r.methods) == 1 else {}),
        }
        for r in edge.ROUTES
    ]


def pinned_rules(stage: str) -> list[dict]:
    """The HTTPRoute rules for /stage/<stage>/<route>: that stage's Service alone, the prefix
    stripped (/stage/staging/zones?resolution=7 reaches staging as /zones?resolution=7). One
    backendRef and no fallback: a comparison must never show production as staging. One rule per
    route: an exact path is rewritten with ReplaceFullPath, a folder with ReplacePrefixMatch (the
    schema allows that only in a rule with exactly one PathPrefix match); `/stage/<stage>` is
    redirected to its slash (the page's relative URLs need it)."""
    rules = [
        {
            "matches": [{"path": {"type": "Exact", "value": f"/stage/{stage}"}}],
            "filters": [
                {
                    "type": "RequestRedirect",
                    "requestRedirect": {
                        "path": {"type": "ReplaceFullPath", "replaceFullPath": f"/stage/{stage}/"},
                        "statusCode": 301,
                    },
                }
            ],
        }
    ]
    for route, match in zip(edge.ROUTES, route_matches(f"/stage/{stage}"), strict=True):
        path = (
            {"type": "ReplacePrefixMatch", "replacePrefixMatch": route.path}
            if route.prefix
            else {"type": "ReplaceFullPath", "replaceFullPath": route.path}
        )
        rules.append(
            {
                "matches": [match],
                "filters": [
                    *header_filters("pinned"),
                    {"type": "URLRewrite", "urlRewrite": {"path": path}},
                ],
                "backendRefs": [{"name": f"crash-risk-{stage}", "port": 80}],
            }
        )
    return rules


def render(state: DeploymentState, out_dir: Path) -> list[Path]:
    """Write one YAML file per object into out_dir; returns the files.

    Needs a production release (NoProduction, the one refusal, without one).
    """
    require_production(state)
    conf = template_values()
    weight = staging_weight(state)
    base = {**conf, "CANARY_WEIGHT": str(weight)}
    docs: list[tuple[str, dict]] = []
    for stage, release in state.serving().items():
        values = {
            **base,
            "STAGE": str(stage),
            "MODEL_VERSION": str(release.model_version),
            "IMAGE": image_for(release.bento_tag, conf["REGISTRY"]),
        }
        for template in PER_STAGE:
            docs += [(f"{template[:-5]}-{stage}", d) for d in _render(template, values)]
    docs += [("networkpolicy", d) for d in _render("networkpolicy.yaml", base)]
    docs += [("ingress", d) for d in _render("ingress.yaml", base)]
    if weight:
        docs += [("ingress-canary", d) for d in _render("ingress-canary.yaml", base)]
    docs.append(("httproute", _render("httproute.yaml", base)[0]))
    for _, doc in docs:
        _fill_edge(doc, weight)

    for _, doc in docs:
        doc["metadata"].setdefault("labels", {})[PART_OF_LABEL] = PART_OF
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    files = []
    for index, (name, doc) in enumerate(docs):
        path = out_dir / f"{index:02d}-{name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        files.append(path)
    return files


def _fill_edge(doc: dict, weight: int) -> None:
    """The paths, limits and headers of the Ingresses and HTTPRoutes, from
    visionzero/rollout/edge.py and the settings (which the YAML templates cannot loop over)."""
    name = doc["metadata"]["name"]
    if doc["kind"] == "Ingress":
        paths = doc["spec"]["rules"][0]["http"]["paths"]
        annotations = doc["metadata"]["annotations"]
        if name.startswith("crash-risk-stage-"):
            stage = name.removeprefix("crash-risk-stage-")
            paths += ingress_paths(f"crash-risk-{stage}", f"/stage/{stage}")
            annotations.update(edge_annotations("pinned"))
        elif name == "crash-risk-canary":
            paths += ingress_paths("crash-risk-staging")
        else:
            paths += ingress_paths("crash-risk-production")
            annotations.update(edge_annotations("split"))
    elif doc["kind"] == "HTTPRoute":
        if name.startswith("crash-risk-stage-"):
            doc["spec"]["rules"] = pinned_rules(name.removeprefix("crash-risk-stage-"))
            return
        backends = [{"name": "crash-risk-production", "port": 80, "weight": 100 - weight}]
        if weight:
            backends.append({"name": "crash-risk-staging", "port": 80, "weight": weight})
        doc["spec"]["rules"] = [
            {
                "matches": route_matches(),
                "filters": header_filters("split"),
                "backendRefs": backends,
            }
        ]


def docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], check=False, capture_output=True).returncode == 0


def containerize_and_push(release: Release, registry: str) -> dict[str, str]:
    """`bentoml containerize` both Bentos for their platforms, tag and push them to the registry."""
    if not docker_available():
        raise NoContainerEngine(
            "no Docker engine answers `docker info`: images were not built; the "
            "rendered manifests are ready to apply once they are pushed"
        )
    images = {}
    for bento_tag, platform, suffix in (
        (release.bento_tag, "linux/amd64", ""),
        (release.arm64_bento_tag, "linux/arm64", "-arm64"),
    ):
        image = image_for(bento_tag, registry, suffix)
        subprocess.run(
            ["bentoml", "containerize", bento_tag, "--platform", platform, "-t", image],
            check=True,
        )
        subprocess.run(["docker", "push", image], check=True)
        images[platform] = image
    return images


def load_rendered(manifest_dir: Path) -> list[dict]:
    """The objects of a render (none when the folder does not exist yet)."""
    return [yaml.safe_load(path.read_text()) for path in sorted(manifest_dir.glob("*.yaml"))]


def _prune_kind(doc: dict) -> str:
    api = doc["apiVersion"]
    return f"{api if '/' in api else 'core/' + api}/{doc['kind']}"


def _identity(doc: dict) -> tuple[str, str, str]:
    return _prune_kind(doc), doc["metadata"].get("namespace", ""), doc["metadata"]["name"]


def apply_plan(live: list[dict], rendered: list[dict]) -> dict[str, list[str]]:
    """What `apply_command` does to a cluster holding `live`: create, update and (prune) delete,
    as sorted "Kind/name" lists. Only labelled objects of an allowlisted kind are pruned."""
    present = {_identity(d) for d in live}
    kept = {_identity(d) for d in rendered}

    def names(docs: list[dict]) -> list[str]:
        return sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)

    return {
        "create": names([d for d in rendered if _identity(d) not in present]),
        "update": names([d for d in rendered if _identity(d) in present]),
        "delete": names(
            [
                d
                for d in live
                if _identity(d) not in kept
                and _prune_kind(d) in PRUNE_ALLOWLIST
                and (d["metadata"].get("labels") or {}).get(PART_OF_LABEL) == PART_OF
            ]
        ),
    }


def apply_command(manifest_dir: Path) -> list[str]:
    """`kubectl apply` that also deletes the project's objects the render no longer has."""
    return [
        "kubectl",
        "apply",
        "-f",
        str(manifest_dir),
        "--prune",
        "-l",
        f"{PART_OF_LABEL}={PART_OF}",
        *(f"--prune-allowlist={kind}" for kind in PRUNE_ALLOWLIST),
    ]


def apply(manifest_dir: Path) -> str:
    """kubectl apply --prune with the configured KUBECONFIG; returns kubectl's output."""
    if not settings().kubeconfig:
        raise RuntimeError("KUBECONFIG is not set: manifests rendered but not applied")
    if not shutil.which("kubectl"):
        raise RuntimeError("kubectl is not installed: manifests rendered but not applied")
    out = subprocess.run(apply_command(manifest_dir), check=False, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl apply failed: {out.stderr[-1000:]}")
    return out.stdout
