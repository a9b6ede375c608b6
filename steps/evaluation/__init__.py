"""Steps of the evaluation stage; their logic lives in visionzero/evaluation/."""

from steps.evaluation.evaluator import evaluator
from steps.evaluation.refitter import refitter
from steps.evaluation.trigger_decision import trigger_decision

__all__ = ["evaluator", "refitter", "trigger_decision"]
