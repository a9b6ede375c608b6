"""Steps of the data stage; their logic lives in visionzero/data/."""

from steps.data.data_loader import data_loader

__all__ = ["data_loader"]
