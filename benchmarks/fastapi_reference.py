"""The plain FastAPI + uvicorn reference for benchmarks/serving.py.

Same model, same feature code, no BentoML.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import ORJSONResponse
from pydantic import BaseModel, Field

from visionzero.model.crash_risk import CrashRiskModel
from visionzero.serving.requests import MAX_ITEMS, InvalidRequest, Item, predict_items

model = CrashRiskModel.load(Path(os.environ["VZ_MODEL_DIR"]))
app = FastAPI(default_response_class=ORJSONResponse)  # the same JSON encoder as service.py


class PredictRequest(BaseModel):
    items: list[Item] = Field(max_length=MAX_ITEMS)


@app.post("/predict")
async def predict(request: PredictRequest) -> dict:
    try:
        return {"predictions": predict_items(request.items, model, "production")}
    except InvalidRequest as exc:
        raise HTTPException(400, str(exc)) from exc


@app.get("/readyz")
async def ready() -> dict:
    return {"ok": True}
