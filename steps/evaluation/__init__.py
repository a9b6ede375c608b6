"""Steps of the evaluation stage; their logic lives in visionzero/evaluation/."""

from steps.evaluation.evaluator import evaluator
from steps.evaluation.trigger_decision import trigger_decision

__all__ = ["evaluator", "trigger_decision"]
