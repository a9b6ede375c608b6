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

import shutil
import subprocess
from pathlib import Path
from string import Template

import yaml

from visionzero.platform.settings import REPO_ROOT, settings
from visionzero.rollout.deployment_state import staging_weight

TEMPLATES = REPO_ROOT / "k8s"
PER_STAGE = ["deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml", "ingress-stage.yaml"]
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
        "REGISTRY": current.vz_registry,
    }


def image_for(bento_tag: str, registry: str, arch: str = "") -> str:
    name, version = bento_tag.split(":", 1)
    return f"{registry}/{name.replace('_', '-')}:{version}{arch}"


def _render(template: str, values: dict[str, str]) -> list[dict]:
    text = Template((TEMPLATES / template).read_text()).substitute(values)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def pinned_rule(stage: str) -> dict:
    """The HTTPRoute rule for /stage/<stage>/<path>: that stage's Service alone, the prefix
    replaced by "/" (so /stage/staging/zones?resolution=7 reaches staging as /zones?resolution=7).
    One backendRef and no fallback: a comparison must never show production as staging. The
    schema allows ReplacePrefixMatch only in a rule with exactly one PathPrefix match."""
    return {
        "matches": [{"path": {"type": "PathPrefix", "value": f"/stage/{stage}"}}],
        "filters": [
            {
                "type": "URLRewrite",
                "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}},
            }
        ],
        "backendRefs": [{"name": f"crash-risk-{stage}", "port": 80}],
    }


def render(state: dict, out_dir: Path) -> list[Path]:
    """Write one YAML file per object into out_dir; returns the files.

    Needs a production release.
    """
    if not state.get("production"):
        raise ValueError("no production release in the deployment state: nothing to render")
    conf = template_values()
    weight = staging_weight(state)
    base = {**conf, "CANARY_WEIGHT": str(weight)}
    docs: list[tuple[str, dict]] = []
    for stage in ("production", "staging"):
        release = state.get(stage)
        if not release:
            continue
        values = {
            **base,
            "STAGE": stage,
            "MODEL_VERSION": str(release["model_version"]),
            "IMAGE": image_for(release["bento_tag"], conf["REGISTRY"]),
        }
        for template in PER_STAGE:
            docs += [(f"{template[:-5]}-{stage}", d) for d in _render(template, values)]
    docs += [("networkpolicy", d) for d in _render("networkpolicy.yaml", base)]
    docs += [("ingress", d) for d in _render("ingress.yaml", base)]
    if weight:
        docs += [("ingress-canary", d) for d in _render("ingress-canary.yaml", base)]
    route = _render("httproute.yaml", base)[0]
    route["spec"]["rules"][0]["backendRefs"] = [
        {"name": "crash-risk-production", "port": 80, "weight": 100 - weight}
    ] + ([{"name": "crash-risk-staging", "port": 80, "weight": weight}] if weight else [])
    route["spec"]["rules"] += [pinned_rule(s) for s in ("production", "staging") if state.get(s)]
    docs.append(("httproute", route))

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


def docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], check=False, capture_output=True).returncode == 0


def containerize_and_push(release: dict, registry: str) -> dict[str, str]:
    """`bentoml containerize` both Bentos for their platforms, tag and push them to the registry."""
    if not docker_available():
        raise NoContainerEngine(
            "no Docker engine answers `docker info`: images were not built; the "
            "rendered manifests are ready to apply once they are pushed"
        )
    images = {}
    for key, platform, suffix in (
        ("bento_tag", "linux/amd64", ""),
        ("arm64_bento_tag", "linux/arm64", "-arm64"),
    ):
        image = image_for(release[key], registry, suffix)
        subprocess.run(
            ["bentoml", "containerize", release[key], "--platform", platform, "-t", image],
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
