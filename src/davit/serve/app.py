"""The HTTP app (FastAPI): ``POST /v1/predict``, ``POST /v1/embed``, ``GET /v1/models``,
``GET /health``, ``GET /metrics`` and the OpenAPI schema.

A request's images are decoded and preprocessed on the model's thread, then each image joins the
dynamic batcher of its task; the answer lists one result per image, in order. In a request of
several images, an image that cannot be used gets ``{"index": i, "error": {...}}`` in its place and
the others their results (status 200); only when no image is usable is the request refused, with
the status and code of the first problem, the message naming each image.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException
from torch import Tensor

from .._version import __version__
from ..data.images import load_image
from ..data.transforms import TestTransform, resized_size
from ..errors import ImageLoadError, InvalidArgumentError
from ..records import error_record, prediction_record
from .batching import DynamicBatcher
from .gate import Gate, error_body, note_error, request_id_of
from .inputs import Item, open_image, read_items
from .limits import Limits, Rejected
from .metrics import CONTENT_TYPE, Metrics
from .model import ServedModel
from .schemas import ERROR_RESPONSES, IMAGES_BODY, EmbedResponse, HealthResponse, ModelsResponse, PredictResponse

ENDPOINTS = ("/v1/predict", "/v1/embed", "/v1/models", "/health", "/metrics", "/openapi.json", "/docs")


@dataclass(frozen=True)
class ServeSettings:
    """How the app batches and what it accepts."""

    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    limits: Limits = field(default_factory=Limits)
    token: str | None = None  # bearer token for every endpoint but /health; None: open
    top_k: int = 5  # default length of each result's top-k list

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_wait_ms < 0 or self.top_k < 1:
            raise InvalidArgumentError(f"max_batch_size and top_k must be positive and max_wait_ms not negative, "
                                       f"got {self.max_batch_size}, {self.top_k} and {self.max_wait_ms}")
        if self.token is not None and not self.token.strip():
            raise InvalidArgumentError("the bearer token is empty; give a non-empty token (--token-file or "
                                       "DAVIT_SERVE_TOKEN)")


def model_thread() -> ThreadPoolExecutor:
    """The one thread that runs every PyTorch operator of a server: loading the model (see
    :func:`davit.serve.model.load_served_model`), preprocessing the images and the model's batches.

    On a 2-core AMX Xeon a forward pass ran 1.4-2x slower once a second thread had run PyTorch
    operators (each thread gets its own OpenMP team): the model loaded in the main thread and run
    in another took 61 ms per image against 29 ms loaded and run in one thread, and preprocessing
    in a third thread doubled it again (benchmarks/LOG.md).
    """
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="davit-model")


def create_app(served: ServedModel, settings: ServeSettings | None = None,
               executor: ThreadPoolExecutor | None = None) -> FastAPI:
    """The app serving ``served`` (see :func:`davit.serve.model.load_served_model`) on ``executor``,
    the thread it was loaded on (:func:`model_thread`; None: a new one), which the app shuts down
    when it stops."""
    settings = settings or ServeSettings()
    metrics = Metrics(ENDPOINTS, settings.max_batch_size)
    batchers: dict[str, DynamicBatcher] = {}  # filled when the app starts, emptied when it stops
    lifespan = _lifespan(served, settings, metrics, batchers, executor)
    app = FastAPI(title="davit serve", version=__version__, lifespan=lifespan,
                  description=f"DaViT inference for model {served.name}. Every endpoint but /health needs "
                              "'Authorization: Bearer <token>' when the server was started with a token.")
    app.add_middleware(Gate, limits=settings.limits, metrics=metrics, token=settings.token)
    _add_error_handlers(app)
    _add_info_routes(app, served, settings, metrics)
    _add_inference_routes(app, served, settings, metrics, batchers)
    return app


def _lifespan(served: ServedModel, settings: ServeSettings, metrics: Metrics, batchers: dict[str, DynamicBatcher],
              given: ThreadPoolExecutor | None) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start one dynamic batcher per kind of answer on the model thread; stop them on shutdown."""
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        executor = given if given is not None else model_thread()
        runs: dict[str, Callable[[Tensor], np.ndarray]] = {}
        if served.embeds:
            runs["pooled"] = partial(served.embeddings, pooled=True)
        if served.classifier is not None:
            runs["predict"] = served.probabilities
        if served.has_tokens:
            runs["tokens"] = partial(served.embeddings, pooled=False)
        for name, run in runs.items():
            batchers[name] = DynamicBatcher(run, executor, settings.max_batch_size,
                                            settings.max_wait_ms / 1000, metrics.batch_done)
            batchers[name].start()
        try:
            yield
        finally:
            for batcher in batchers.values():
                await batcher.stop()
            batchers.clear()
            executor.shutdown(wait=True)

    return lifespan


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal, bad parameter and unknown route answers with the one error body."""
    @app.exception_handler(Rejected)
    async def rejected(request: Request, error: Rejected) -> JSONResponse:
        note_error(request.scope, error.code)
        return JSONResponse(error_body(error.code, error.message, request_id_of(request.scope)), error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_parameter(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(part) for part in item.get('loc', ()))}: {item.get('msg')}"
                             for item in error.errors())
        note_error(request.scope, "invalid_parameter")
        return JSONResponse(error_body("invalid_parameter", problems, request_id_of(request.scope)), 422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        note_error(request.scope, code)
        return JSONResponse(error_body(code, str(error.detail), request_id_of(request.scope)),
                            error.status_code, getattr(error, "headers", None))


def _add_info_routes(app: FastAPI, served: ServedModel, settings: ServeSettings, metrics: Metrics) -> None:
    @app.get("/health", response_model=HealthResponse)
    async def health() -> dict[str, str]:
        """Whether the server is up; needs no token, answers while a batch runs."""
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus_metrics() -> PlainTextResponse:
        """Prometheus metrics: requests, errors, images, batch sizes, latency histograms."""
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", response_model=ModelsResponse, responses=ERROR_RESPONSES)
    async def models() -> dict[str, Any]:
        """The served model: architecture, classes, preprocessing, runtime, batching and limits."""
        description = {**served.describe(), "max_batch_size": settings.max_batch_size,
                       "max_wait_ms": settings.max_wait_ms, "limits": asdict(settings.limits)}
        return {"data": [description]}


def _add_inference_routes(app: FastAPI, served: ServedModel, settings: ServeSettings, metrics: Metrics,
                          batchers: dict[str, DynamicBatcher]) -> None:
    @app.post("/v1/predict", response_model=PredictResponse, responses=ERROR_RESPONSES, openapi_extra=IMAGES_BODY)
    async def predict(request: Request,
                      top_k: Annotated[int, Query(ge=1, le=100_000, description="length of each top-k list "
                                                  "(at most the class count)")] = settings.top_k,
                      scores: Annotated[bool, Query(description="add pred_scores, every class "
                                                    "probability")] = False) -> JSONResponse:
        """Classify the images: mmpretrain's pred_label, pred_score, pred_class (pred_scores on
        request) and the top-k labels with their class names, per image."""
        if "predict" not in batchers:
            raise Rejected(409, "cannot_classify", f"model {served.name} has no classification head; use "
                                                   "/v1/embed")
        names = served.class_names
        results = await _answer(request, batchers["predict"], served, settings.limits, metrics,
                                lambda index, row: prediction_record(row, names, top_k, index=index,
                                                                   with_scores=scores))
        return JSONResponse({"model": served.name, "results": results})

    @app.post("/v1/embed", response_model=EmbedResponse, responses=ERROR_RESPONSES, openapi_extra=IMAGES_BODY)
    async def embed(request: Request,
                    tokens: Annotated[bool, Query(description="every image token (T, D) of a Florence-2 projector "
                                                  "instead of the pooled (D,) vector")] = False) -> JSONResponse:
        """Embed the images: the pooled embedding (D,) per image, or every token (T, D)."""
        kind = "tokens" if tokens else "pooled"
        if "pooled" not in batchers:
            raise Rejected(409, "cannot_embed", f"model {served.name} is an exported classifier, which gives class "
                                                "scores only; use /v1/predict, or serve the model it was exported from")
        if kind not in batchers:
            raise Rejected(400, "tokens_unavailable", f"model {served.name} has no Florence-2 projector to give "
                                                      "token embeddings; leave out tokens=true for pooled ones")
        results = await _answer(request, batchers[kind], served, settings.limits, metrics,
                                lambda index, row: {"index": index, "embedding": row.tolist()})
        return JSONResponse({"model": served.name, "kind": kind, "results": results})


async def _answer(request: Request, batcher: DynamicBatcher, served: ServedModel, limits: Limits, metrics: Metrics,
                  answer: Callable[[int, np.ndarray], dict[str, Any]]) -> list[dict[str, Any]]:
    """Read, preprocess and batch the request's images; one result (or error) per image."""
    items = await read_items(request, limits)
    request.state.images = len(items)
    metrics.images_received(request.url.path, len(items))
    # on the model's thread, between its batches: see model_thread
    prepared = await asyncio.get_running_loop().run_in_executor(batcher.executor, _prepare_all, items, limits,
                                                                served.transform)
    usable = [(index, item) for index, item in enumerate(prepared) if isinstance(item, Tensor)]
    if not usable:
        raise _nothing_usable(prepared)
    rows = await asyncio.gather(*(batcher.submit(tensor) for _, tensor in usable))
    answers = {index: answer(index, row) for (index, _), row in zip(usable, rows)}
    return [_item_error(index, item) if isinstance(item, Rejected) else answers[index]
            for index, item in enumerate(prepared)]


def _prepare_all(items: list[Item], limits: Limits, transform: TestTransform) -> list[Tensor | Rejected]:
    """Each image's model input or refusal. The request's images share ``limits.max_request_pixels``
    (their decoded sizes, from the headers): an image past what is left is refused, the ones
    before it are kept."""
    left = limits.max_request_pixels
    prepared: list[Tensor | Rejected] = []
    for item in items:
        if isinstance(item, Rejected):
            prepared.append(item)
            continue
        outcome = _prepare(item, limits, transform, left)
        if isinstance(outcome, Rejected):
            prepared.append(outcome)
        else:
            prepared.append(outcome[0])
            left -= outcome[1]
    return prepared


def _prepare(data: bytes, limits: Limits, transform: TestTransform, left: int) -> tuple[Tensor, int] | Rejected:
    """One image's model input and decoded pixel count: decoded as :func:`davit.data.load_image`
    decodes files, then the model card's transform, as :func:`davit.inference_model` does. Its
    decoded and resized sizes are checked from the header, before any pixel is decoded."""
    try:
        image = open_image(data, limits)
        pixels = image.width * image.height
        if pixels > left:
            raise Rejected(413, "request_too_many_pixels",
                           f"the image's {pixels} pixels are over what the request has left of its limit of "
                           f"{limits.max_request_pixels} pixels; send fewer or smaller images per request")
        resized_size(transform, image.width, image.height, "the image")
    except Rejected as refusal:
        return refusal
    except ImageLoadError as error:
        return Rejected(422, "image_too_large", str(error))
    try:
        decoded = load_image(image)
    except Exception as error:  # any failure to decode untrusted bytes is that image's problem
        message = " ".join(str(error).replace("the given PIL image", "the image").split())
        return Rejected(422, "corrupt_image", message or f"the image cannot be decoded ({type(error).__name__})")
    return transform(decoded), pixels


def _item_error(index: int, refusal: Rejected) -> dict[str, Any]:
    return error_record(refusal.message, refusal.code, index=index)


def _nothing_usable(prepared: list[Tensor | Rejected]) -> Rejected:
    """The refusal of a request none of whose images can be used."""
    refusals = [item for item in prepared if isinstance(item, Rejected)]
    message = "; ".join(f"image {index}: {refusal.message}" for index, refusal in enumerate(refusals))
    return Rejected(refusals[0].status, refusals[0].code, message)
