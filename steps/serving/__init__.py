"""Steps of the serving stage; their logic lives in visionzero/serving/."""

from steps.serving.bento_builder import bento_builder

__all__ = ["bento_builder"]
