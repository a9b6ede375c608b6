"""ZenML materializer of CrashRiskModel: the trainer returns the model object and ZenML stores it.

Native formats only (XGBoost's JSON and the metadata JSON, never pickle), written into the
artifact's URI through a temporary folder that is removed as soon as the copy is done.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from zenml.enums import ArtifactType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from visionzero.model.crash_risk import CrashRiskModel


class CrashRiskModelMaterializer(BaseMaterializer):
    """Saves and loads a CrashRiskModel as the files `CrashRiskModel.save` writes."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (CrashRiskModel,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL

    def save(self, data: CrashRiskModel) -> None:
        with self.get_temporary_directory(delete_at_exit=True) as tmp:
            data.save(Path(tmp))
            for name in os.listdir(tmp):  # every file the model writes, the optional ones too
                fileio.copy(os.path.join(tmp, name), os.path.join(self.uri, name), overwrite=True)

    def load(self, data_type: type[Any]) -> CrashRiskModel:
        with self.get_temporary_directory(delete_at_exit=True) as tmp:
            for name in fileio.listdir(self.uri):
                fileio.copy(os.path.join(self.uri, name), os.path.join(tmp, name))
            return CrashRiskModel.load(Path(tmp))  # read into memory: the folder can go
