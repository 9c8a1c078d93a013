"""The shapes of the server's requests and answers, for the OpenAPI schema it serves (``/docs``,
``/openapi.json``). The handlers build plain dicts of these shapes; the models document them."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="stable name of the problem, e.g. not_an_image, body_too_large, "
                                  "non_finite_scores")
    message: str = Field(description="what is wrong and what to do, on one line")


class ErrorResponse(BaseModel):
    error: ErrorDetail
    request_id: str | None = Field(description="the X-Request-ID of the request, to quote in a report")


class ItemError(BaseModel):
    index: int = Field(description="the image's position in the request, from 0")
    error: ErrorDetail


class TopK(BaseModel):
    label: int
    score: float
    class_: str | None = Field(None, alias="class", description="the class name, when the model card has names")


class Prediction(BaseModel):
    """The prediction record of :mod:`davit.records` (the server gives ``index``, not ``image``)."""

    index: int = Field(description="the image's position in the request, from 0")
    pred_label: int
    pred_score: float
    pred_class: str | None = Field(None, description="when the model card has class names")
    pred_scores: list[float] | None = Field(None, description="every class probability, with ?scores=true")
    topk: list[TopK]


class PredictResponse(BaseModel):
    model: str
    results: list[Prediction | ItemError]


class Embedding(BaseModel):
    index: int
    embedding: list[Any] = Field(description="(D,) pooled, or (T, D) tokens with ?tokens=true")


class EmbedResponse(BaseModel):
    model: str
    kind: str = Field(description="pooled or tokens")
    results: list[Embedding | ItemError]


class ModelsResponse(BaseModel):
    data: list[dict[str, Any]]


class HealthResponse(BaseModel):
    status: str


_IMAGES_DESCRIPTION = "one or more images (at most the server's --max-images)"

IMAGES_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["images"],
        "properties": {"images": {"type": "array", "items": {"type": "string", "format": "binary"},
                                  "description": _IMAGES_DESCRIPTION}}}},
    "application/json": {"schema": {
        "type": "object", "required": ["images"],
        "properties": {"images": {"type": "array", "items": {"type": "string", "format": "byte"},
                                  "description": _IMAGES_DESCRIPTION + ", base64-encoded"}}}},
}}}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in [(400, "malformed request"),
                                (401, "no bearer token (code unauthorized) or the wrong one (code wrong_token)"),
                                (413, "body or image count over the limit"), (415, "unsupported content type"),
                                (422, "no image of the request could be used, or a bad parameter"),
                                (503, "request timed out")]}
