"""Steps of the model stage; their logic lives in visionzero/model/."""

from steps.model.hp_tuner import hp_tuner
from steps.model.trainer import trainer

__all__ = ["hp_tuner", "trainer"]
