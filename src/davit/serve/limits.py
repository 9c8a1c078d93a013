"""What the server refuses: the limits on a request and the one exception that turns into a 4xx.

A refusal names its problem twice: ``code`` (stable, for programs) and ``message`` (one line, for
people). Limits are checked before the expensive step they guard: the body size before it is read
in full, the pixel count from the image header before the pixels are decoded.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidArgumentError

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """The most a request may ask of the server."""

    max_body_bytes: int = 20 * MiB
    max_pixels: int = 40_000_000  # per image, width x height from its header
    max_images: int = 32  # per request
    timeout_s: float = 30.0  # from the first byte read to the last byte of the answer
    max_request_pixels: int = 160_000_000  # decoded pixels of all the images of one request

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_pixels", "max_images", "timeout_s", "max_request_pixels"):
            if getattr(self, name) <= 0:
                raise InvalidArgumentError(f"the serve limit {name} must be positive, got {getattr(self, name)}")


class Rejected(InvalidArgumentError):
    """A request (or one image of it) the server refuses: an HTTP ``status``, a ``code`` and a
    one-line message; raised by request parsing, answered as JSON by the app."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def check_image_count(count: int, limits: Limits) -> None:
    """Refuse a request without images, or with more than ``limits.max_images``."""
    if count == 0:
        raise Rejected(400, "no_images", "the request holds no image; send one or more in 'images'")
    if count > limits.max_images:
        raise Rejected(413, "too_many_images", f"the request holds {count} images, over the limit of "
                                               f"{limits.max_images}; split it into several requests")


def check_pixels(width: int, height: int, limits: Limits) -> None:
    """Refuse an image whose header announces more than ``limits.max_pixels`` pixels (a
    decompression bomb: a small file that decodes to gigabytes)."""
    if width * height > limits.max_pixels:
        raise Rejected(422, "too_many_pixels",
                       f"the image is {width}x{height} = {width * height} pixels, over the limit of "
                       f"{limits.max_pixels}; downscale it before sending")


def check_body_size(size: int, limits: Limits) -> None:
    """Refuse a body (announced or read so far) larger than ``limits.max_body_bytes``."""
    if size > limits.max_body_bytes:
        raise Rejected(413, "body_too_large", f"the request body is over the limit of {limits.max_body_bytes} "
                                              "bytes; send fewer or smaller images per request")
