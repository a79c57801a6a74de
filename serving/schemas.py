"""Pydantic models of the HTTP boundary, for the OpenAPI page (`/docs`).

`POST /score` decodes its body itself (orjson or Arrow, serving/request.py) for speed, so these
models document the contract and feed the examples; the decoder enforces the same rules and names
the field in every error.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ScoreRequestModel(BaseModel):
    user_id: str | int = Field(
        description="The A/B unit; also fills the model's user-id feature. An integer within int64, or a "
        "string of at most runtime.max_id_bytes bytes; for a model with integer user ids a string must be "
        'the canonical decimal form ("42", not "042" or " 42").'
    )
    features: dict[str, Any] = Field(
        default_factory=dict,
        description="Request-level features (user, context): one value each (a list for sequences, a "
        "list of `dim` numbers for a vector).",
    )
    candidates: dict[str, list[Any]] | list[dict[str, Any]] = Field(
        description="Per-candidate features: columnar {feature: [one value per candidate]} "
        "(recommended) or a list of objects. 1 to the server's max_candidates (default 2000). A vector "
        "feature's value is a list of `dim` numbers, or null for none (zeros plus a missing flag)."
    )
    tasks: list[str] | None = Field(default=None, description="Tasks wanted; default all.")
    variant: str | None = Field(default=None, description="Force an A/B variant (needs the admin token).")
    request_id: str | None = Field(default=None, description="Echoed in shadow-scoring logs.")


class HazardScores(BaseModel):
    unit: str | None
    grid: list[float]
    risk: list[float] = Field(description="P(event within the grid's horizon) per candidate")
    hazard: list[list[float]] | None = Field(default=None, description="hazard per interval per candidate")
    survival: list[list[float]] | None = Field(default=None, description="S(end of interval k) per candidate")


class ScoreResponseModel(BaseModel):
    model: str
    version: str
    build: str = Field(description='"primary" (model.pt) or "int8" (the int8 build)')
    experiment: str
    variant: str
    num_candidates: int
    scores: dict[str, list[float]] = Field(description="binary task -> probability per candidate")
    survival: dict[str, HazardScores] = Field(description="hazard task -> curves per candidate")


class ErrorDetail(BaseModel):
    field: str | None
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


_CONTENT = [
    -0.22, -0.57, 0.34, -0.55, 1.01, 0.46, -0.18, 0.29, 0.81, 1.42, -0.46, 0.53, 0.26, -0.14, 0.55, 0.25,
    0.54, -0.26, -0.0, 0.2, 0.01, 0.01, -0.38, 0.06, 0.09, -0.03, -0.01, 0.35, -0.33, 0.35, -0.08, 0.03,
]  # fmt: skip
SCORE_EXAMPLE: dict[str, Any] = {
    "user_id": 42,
    "features": {
        "user_age_bucket": 3,
        "user_gender": 1,
        "user_city": 17,
        "user_activity": 2.5,
        "clicked_items": [1201, 88, 4501],
        "converted_items": [88],
        "position": 1,
        "hour": 20,
        "device": "ios",
    },
    "candidates": {
        "creative_id": [1201, 3307],
        "advertiser_id": [14, 9],
        "campaign_id": [220, 98],
        "category_id": [7, 31],
        "format": ["video", "image"],
        "creative_age_days": [3.0, 12.0],
        "bid_price": [1.2, 0.8],
        "creative_daily_impressions": [850.0, 2400.0],
        "creative_ctr_to_date": [0.061, 0.034],
        # the creative's 32-float content vector (the second creative has none: null)
        "creative_content": [_CONTENT, None],
    },
    "tasks": ["ctr", "cvr", "ctcvr", "hazard_short"],
}
