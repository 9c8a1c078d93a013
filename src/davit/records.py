"""The prediction record: the one shape of a classification result everywhere the library gives one.

``davit.inference_model``, ``davit predict`` (``--json`` and ``--out`` JSON lines / CSV), ``davit
test --out`` and the server's ``/v1/predict`` all build their results here, so a result read from
any of them has the same keys with the same meaning:

- ``image`` (the file, where the input was one) and/or ``index`` (its position in the input);
- mmpretrain's ``pred_label``, ``pred_score``, ``pred_class`` (when the model knows its class
  names) and ``pred_scores`` (every class probability, where asked for);
- ``topk``: the best classes, best first, each ``{"label", "score", "class"}``;
- or, for an input that could not be used, ``error``: ``{"code", "message"}`` instead of the
  prediction keys.

:data:`RECORD_SCHEMA` is its JSON schema (printed in ``docs/records.md``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_TOPK = 5

UNREADABLE_IMAGE = "unreadable_image"  # the error code of a file or upload that cannot be decoded
NON_FINITE = "non_finite_scores"


def prediction_record(scores: Sequence[float] | np.ndarray, names: Sequence[str] | None = None,
                      k: int = DEFAULT_TOPK, *, image: str | None = None, index: int | None = None,
                      with_scores: bool = False) -> dict[str, Any]:
    """The record of one input's class probabilities ``scores`` (``pred_scores`` a list of floats
    with ``with_scores``). Ties go to the lower label, as ``argmax`` gives them. Scores that are
    not finite (an overflow, broken weights) give an error record: JSON has no NaN, and a NaN
    ranking is no prediction."""
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.isfinite(values).all():
        return error_record("the model gave non-finite class scores (NaN or inf) for this image; try "
                            "--dtype fp32, or check the checkpoint's weights", NON_FINITE, image=image, index=index)
    order = np.argsort(-values, kind="stable")[:max(1, min(k, values.size))]
    label = int(order[0])
    record: dict[str, Any] = _where(image, index)
    record.update(pred_label=label, pred_score=float(values[label]))
    if names is not None:
        record["pred_class"] = names[label]
    if with_scores:
        record["pred_scores"] = values.tolist()
    record["topk"] = [{"label": int(i), "score": float(values[i]), **({"class": names[i]} if names is not None else {})}
                      for i in order]
    return record


def error_record(message: str, code: str = UNREADABLE_IMAGE, *, image: str | None = None,
                 index: int | None = None) -> dict[str, Any]:
    """The record of an input that could not be used: what went wrong, and its stable ``code``."""
    return {**_where(image, index), "error": {"code": code, "message": message}}


def error_message(record: dict[str, Any]) -> str:
    """The message of an error record (files written before the error was an object hold a
    string)."""
    error = record["error"]
    return str(error["message"]) if isinstance(error, dict) else str(error)


def _where(image: str | None, index: int | None) -> dict[str, Any]:
    where: dict[str, Any] = {}
    if image is not None:
        where["image"] = image
    if index is not None:
        where["index"] = index
    return where


_ERROR = {"type": "object", "required": ["code", "message"], "additionalProperties": False,
          "properties": {"code": {"type": "string", "description": "stable name of the problem, e.g. "
                                  "unreadable_image, image_too_large"},
                         "message": {"type": "string", "description": "what is wrong and what to do, on one line"}}}

_WHERE = {"image": {"type": "string", "description": "the image file, where the input was one"},
          "index": {"type": "integer", "minimum": 0, "description": "the input's position, from 0"},
          "gt_label": {"type": "integer", "minimum": 0, "description": "the true label (davit test only)"}}

RECORD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "DaViT prediction record",
    "oneOf": [
        {"type": "object", "required": ["pred_label", "pred_score", "topk"], "additionalProperties": False,
         "properties": {
             **_WHERE,
             "pred_label": {"type": "integer", "minimum": 0, "description": "the best class"},
             "pred_score": {"type": "number", "minimum": 0, "maximum": 1, "description": "its probability"},
             "pred_class": {"type": "string", "description": "its name, when the model knows class names"},
             "pred_scores": {"type": "array", "items": {"type": "number"},
                             "description": "every class probability, where asked for"},
             "topk": {"type": "array", "minItems": 1, "description": "the best classes, best first",
                      "items": {"type": "object", "required": ["label", "score"], "additionalProperties": False,
                                "properties": {"label": {"type": "integer", "minimum": 0},
                                               "score": {"type": "number", "minimum": 0, "maximum": 1},
                                               "class": {"type": "string"}}}}}},
        {"type": "object", "required": ["error"], "additionalProperties": False,
         "properties": {**_WHERE, "error": _ERROR}},
    ],
}
