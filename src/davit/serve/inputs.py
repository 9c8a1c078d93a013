"""Reading the images of a request: multipart uploads or base64 in JSON, each opened safely.

A request-level problem (content type, malformed JSON, no or too many images) refuses the whole
request. A problem of one image (not an image, truncated, too many pixels, bad base64) is kept as
that image's :class:`~.limits.Rejected`, so that the other images of the request still get their
results. Strings that look like URLs are refused, never fetched.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from typing import Any

from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from .limits import Limits, Rejected, check_image_count, check_pixels

CONTENT_TYPES = ("multipart/form-data", "application/json")
FIELD = "images"
_URL_PREFIXES = ("http://", "https://", "ftp://", "file:")

Item = bytes | Rejected  # one image's bytes, or why it has none


async def read_items(request: Request, limits: Limits) -> list[Item]:
    """The images of ``request`` in order, as bytes (or per-image refusals); refuses the request
    when its body cannot be read as images at all."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        items = await _multipart_items(request, limits)
    elif media_type == "application/json":
        items = _json_items(await request.body(), limits)
    else:
        shown = media_type or "none"
        raise Rejected(415, "unsupported_media_type",
                       f"content type {shown!r} is not accepted; send multipart/form-data with 'images' "
                       "file fields, or application/json {\"images\": [base64, ...]}")
    check_image_count(len(items), limits)
    return items


async def _multipart_items(request: Request, limits: Limits) -> list[Item]:
    try:
        form = await request.form()  # starlette's caps on parts; the body size limit bounds them too
    except Exception as error:  # starlette wraps python-multipart's parse errors in an HTTPException
        detail = str(getattr(error, "detail", None) or error) or type(error).__name__
        if "too many files" in detail.lower():
            check_image_count(limits.max_images + 1, limits)
        raise Rejected(400, "malformed_multipart", f"the multipart body cannot be parsed: {detail}") from None
    try:
        values = form.getlist(FIELD)
        if not values and len(form):
            raise Rejected(400, "no_images", f"the form has no {FIELD!r} field (it has "
                                             f"{', '.join(sorted(set(form.keys())))}); upload each image "
                                             f"as a file in a field named {FIELD!r}")
        check_image_count(len(values), limits)
        items: list[Item] = []
        for value in values:
            if isinstance(value, UploadFile):
                items.append(await value.read())
            else:
                items.append(Rejected(422, "not_a_file", f"the {FIELD!r} field is text, not a file upload; "
                                                         "upload the image file (curl -F images=@photo.jpg)"))
        return items
    finally:
        await form.close()


def _json_items(body: bytes, limits: Limits) -> list[Item]:
    try:
        document: Any = json.loads(body)
    except RecursionError:
        raise Rejected(400, "malformed_json", "the JSON body is nested too deeply; send "
                                              "{\"images\": [base64, ...]}") from None
    except ValueError as error:  # not JSON, not UTF-8, or a number too long to convert
        message = " ".join(str(error).split())
        raise Rejected(400, "malformed_json", f"the body is not valid JSON ({message}); send "
                                              "{\"images\": [base64, ...]}") from None
    if not isinstance(document, dict) or not isinstance(document.get(FIELD), list):
        raise Rejected(400, "invalid_request", f"the JSON body must be an object with an {FIELD!r} list of "
                                               "base64 strings")
    check_image_count(len(document[FIELD]), limits)  # before any image is decoded
    return [_decode_base64(value) for value in document[FIELD]]


def _decode_base64(value: Any) -> Item:
    """The bytes of one JSON image: base64, optionally as a ``data:`` URL."""
    if not isinstance(value, str):
        return Rejected(422, "invalid_base64", f"an image must be a base64 string, got {type(value).__name__}")
    text = value.strip()
    if text.lower().startswith(_URL_PREFIXES):
        return Rejected(422, "url_not_fetched", "the server does not fetch URLs; send the image bytes "
                                                "base64-encoded")
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        return Rejected(422, "invalid_base64", f"the image is not valid base64 ({error})")


def open_image(data: bytes, limits: Limits) -> Image.Image:
    """``data`` opened as an image, its pixel count checked from the header before anything is
    decoded (the caller's transform decodes it and refuses a truncated file)."""
    if not data:
        raise Rejected(422, "empty_image", "the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise Rejected(422, "too_many_pixels", f"the image is refused as a decompression bomb ({error})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise Rejected(422, "not_an_image", "the upload is not an image file the server can read (or is "
                                            "cut off within its header); send a JPEG, PNG, WebP or other "
                                            "common image") from None
    check_pixels(image.width, image.height, limits)
    return image
