"""Run by tests/test_cluster.py in a process of its own, with a ZenML store of its own (the cluster
stack must not become the active stack of the other tests): register the cluster stack offline
(twice: the second run changes nothing), compile both pipelines with the run options of
configs/kubernetes.yaml as `python run.py` builds them, and print as JSON what ZenML resolved.

Settings come from argv[1] (JSON) instead of the environment: ZENML_STORE_URL in the environment
would make ZenML connect to that server.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from visionzero.platform.settings import Settings, configure_environment

configure_environment()

from visionzero.platform import stack, stack_recipe  # noqa: E402
from visionzero.platform.cluster import cluster_run_options  # noqa: E402


def compiled_steps(pipeline, arguments: dict, current: Settings) -> dict:  # noqa: ANN001
    """What ZenML's compiler makes of the pipeline on the active stack: each step's orchestrator
    settings and runtime environment, as the orchestrator reads them."""
    from zenml.client import Client
    from zenml.config.compiler import Compiler
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration

    from visionzero.cli.runs import step_names

    traced = pipeline.with_options()
    traced.prepare(**arguments)
    options = cluster_run_options(current, set(traced.invocations), step_names())
    configured = pipeline.with_options(**options)
    configured.prepare(**arguments)
    active = Client().active_stack
    snapshot = Compiler().compile(
        pipeline=configured,
        stack=active,
        run_configuration=PipelineRunConfiguration(steps=options["steps"]),
    )
    steps = {}
    for name, step in snapshot.step_configurations.items():
        settings = active.orchestrator.get_settings(step)
        steps[name] = {
            "pod_settings": settings.pod_settings.model_dump(mode="json"),
            "orchestrator_pod_settings": settings.orchestrator_pod_settings.model_dump(mode="json"),
            "service_account_name": settings.service_account_name,
            "step_pod_service_account_name": settings.step_pod_service_account_name,
            "environment": step.config.environment,
        }
    docker = snapshot.pipeline_configuration.docker_settings
    return {"steps": steps, "docker": docker.model_dump(mode="json", exclude_defaults=True)}


def main() -> None:
    from zenml.client import Client
    from zenml.enums import StackComponentType

    from pipelines.monitoring import MonitoringParameters, monitoring_pipeline
    from pipelines.training import TrainingParameters, training_pipeline

    current = Settings(**json.loads(sys.argv[1]))
    recipe = stack_recipe.cluster_recipe(current)
    client = Client()

    def held(name: str) -> object:
        (component,) = [c for c in recipe.components if c.name == name]
        return client.get_stack_component(StackComponentType(component.type), name)

    stack.register_stack(recipe)
    first = {c.name: held(c.name).updated for c in recipe.components}
    stack.register_stack(recipe)
    registered = {c.name: held(c.name).configuration for c in recipe.components}
    unchanged = first == {c.name: held(c.name).updated for c in recipe.components}
    training = TrainingParameters()
    monitoring = MonitoringParameters()
    result = {
        "active_stack": client.active_stack_model.name,
        "registered": registered,
        "second_registration_unchanged": unchanged,
        "secret_keys": sorted(client.get_secret(recipe.secret_name).secret_values),
        "training": compiled_steps(
            training_pipeline,
            {**dict(training), "deploy_target": "kubernetes"},
            current,
        ),
        "monitoring": compiled_steps(
            monitoring_pipeline,
            {**dict(monitoring), "deploy_target": "kubernetes"},
            current,
        ),
    }
    # a CronJob pod (no context) keeps the workstation's; a changed setting updates its component
    in_cluster = current.model_copy(update={"vz_kubernetes_context": None})
    stack.register_stack(stack_recipe.cluster_recipe(in_cluster))
    result["context_after_in_cluster"] = held(recipe.name).configuration.get("kubernetes_context")
    moved = current.model_copy(update={"vz_artifact_store_uri": "s3://zenml/elsewhere"})
    stack.register_stack(stack_recipe.cluster_recipe(moved))
    result["path_after_change"] = held(f"{recipe.name}_s3").configuration["path"]
    Path(sys.argv[2]).write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
