"""The training pipeline: load -> tune -> train -> evaluate -> decide -> refit on every day
-> build Bentos -> deploy -> alert.

`TrainingParameters` is the schema of configs/training.yaml: `run.py` validates the file against it
before any step runs, so a misspelt or out-of-range key fails at once with the key's name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from zenml import Model, pipeline

from steps.data import data_loader
from steps.evaluation import evaluator, refitter, trigger_decision
from steps.model import hp_tuner, trainer
from steps.rollout import deployer, discord_alert
from steps.serving import bento_builder
from visionzero.data.dataset import LoadConfig
from visionzero.evaluation.backtest import EvaluationConfig
from visionzero.evaluation.decision import DecisionRule
from visionzero.model.crash_risk import ModelConfig
from visionzero.model.tuning import TuningConfig
from visionzero.platform.alerts import build_message, send
from visionzero.platform.settings import MODEL_NAME
from visionzero.rollout.deployment_state import read_state


class TrainingParameters(BaseModel):
    """Every knob of a training run; what the YAML leaves out keeps the default shown here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: LoadConfig = LoadConfig()
    model: ModelConfig = ModelConfig()
    tuning: TuningConfig = TuningConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    decision: DecisionRule = DecisionRule()


class TrainingRunConfig(BaseModel):
    """The YAML file: ZenML's run-configuration shape, limited to the pipeline's parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    parameters: TrainingParameters = TrainingParameters()


RunConfig = TypeVar("RunConfig", bound=BaseModel)


class InvalidConfig(ValueError):
    """A configuration file that does not fit the schema; the message names the key."""


def load_training_config(path: Path) -> TrainingParameters:
    """Parse and validate a run configuration; the first error names the file and the key."""
    return load_run_config(path, TrainingRunConfig).parameters


def load_run_config(path: Path, schema: type[RunConfig]) -> RunConfig:
    """Parse a YAML run configuration and validate it against `schema` (a pipeline's
    `...RunConfig`); the first error names the file and the key."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return schema.model_validate(raw)
    except yaml.YAMLError as exc:
        raise InvalidConfig(f"{path}: not valid YAML ({exc})") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise InvalidConfig(
            f"{path}: {key}: {first['msg']}"
            + (f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else "")
        ) from exc


def alert_failure(exception: BaseException) -> None:
    """Pipeline failure hook: the on-call hears about it the same way as about deploys."""
    send(
        build_message(
            "failure",
            "Crash-risk training pipeline failed",
            {"error": f"{type(exception).__name__}: {str(exception)[:500]}"},
        )
    )


MODEL_CARD = Model(
    name=MODEL_NAME,
    description="Expected crashes per H3 zone and time block in New York City, with one of five "
    "risk levels (Safe .. Dangerous): citywide daily volume (XGBoost, Poisson) times a "
    "recency-weighted, shrunk share of where and when crashes happen.",
    audience="NYPD and NYC DOT traffic analysts, Vision Zero planners, dispatchers.",
    use_cases="Ranking places and times by expected crashes for patrol, outreach and street "
    "design priorities; a risk level for a place and time on request.",
    limitations="Trained on NYC Open Data collisions (h9gi-nx95) on complete days only: the "
    "bundled snapshot is a union of partial snapshots, biased outside those days. "
    "Geocoding improved over time; 0:00 is partly an unknown-time placeholder; no "
    "recorded weather after 2024-03 (monthly climatology instead). A neighbourhood-"
    "scale zone (H3 resolution 7) says nothing about a single intersection.",
    trade_offs="Levels are quintiles of predicted rates, not of outcomes (most slots see no "
    "crash). Deviance and calibration beat the historical average clearly; the "
    "ranking edge (hit@10%) is thin. Metrics of each version are in its metadata.",
    ethics="Reported crashes reflect reporting and enforcement patterns; a risk level must not "
    "be read as a judgement of the people who live or drive there.",
    license="Apache-2.0",
    tags=["visionzero", "nyc", "crash-risk"],
)


@pipeline(enable_cache=False, on_failure=alert_failure, model=MODEL_CARD)
def training_pipeline(
    data: LoadConfig,
    model: ModelConfig,
    tuning: TuningConfig,
    evaluation: EvaluationConfig,
    decision: DecisionRule,
    deploy_target: Literal["local", "kubernetes"],
) -> None:
    dataset = data_loader(data)
    tuned_params = hp_tuner(dataset, model, tuning)
    scored_model = trainer(dataset, tuned_params, model)
    serving = read_state().production  # what serves when the run starts: its challenger's rival
    production_version = serving.model_version if serving else None
    report, _ = evaluator(dataset, scored_model, model, evaluation, production_version)
    verdict = trigger_decision(report, decision)
    served_model = refitter(dataset, scored_model, report)
    release = bento_builder(served_model, report, verdict, dataset)
    deployment = deployer(verdict, release, deploy_target)
    discord_alert(verdict, report, deployment)
