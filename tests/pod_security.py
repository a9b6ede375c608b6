"""The Pod Security Standard `restricted` (Kubernetes 1.33), as a check of a pod spec: what the
admission controller of a namespace labelled `pod-security.kubernetes.io/enforce: restricted`
refuses, so a manifest that would be refused fails here first, without a cluster."""

from __future__ import annotations

ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def _get(spec: dict, camel: str) -> object:
    """A field by its manifest (camelCase) or Python-client (snake_case) name."""
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)
    return spec.get(camel, spec.get(snake))


def restricted_violations(pod: dict) -> list[str]:
    """What in the pod spec `restricted` forbids (an empty list: admitted)."""
    found = []
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if _get(pod, field):
            found.append(field)
    for volume in _get(pod, "volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            found.append(f"volume {volume['name']}: {sorted(kinds - ALLOWED_VOLUMES)}")
    pod_context = _get(pod, "securityContext") or {}
    containers = [
        *(_get(pod, "initContainers") or []),
        *(_get(pod, "containers") or []),
        *(_get(pod, "ephemeralContainers") or []),
    ]
    for container in containers:
        name = container["name"]
        context = _get(container, "securityContext") or {}

        def setting(field: str, context: dict = context) -> object:
            own = _get(context, field)
            return own if own is not None else _get(pod_context, field)

        if setting("runAsNonRoot") is not True:
            found.append(f"{name}: runAsNonRoot")
        if setting("runAsUser") == 0:
            found.append(f"{name}: runAsUser 0")
        seccomp = setting("seccompProfile") or {}
        if _get(seccomp, "type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile")
        if _get(context, "privileged"):
            found.append(f"{name}: privileged")
        if _get(context, "allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation")
        capabilities = _get(context, "capabilities") or {}
        if "ALL" not in (_get(capabilities, "drop") or []):
            found.append(f"{name}: capabilities.drop ALL")
        if set(_get(capabilities, "add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities.add")
        for port in _get(container, "ports") or []:
            if _get(port, "hostPort"):
                found.append(f"{name}: hostPort")
    return found
