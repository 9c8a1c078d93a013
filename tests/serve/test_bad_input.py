"""Each kind of bad input is a 4xx with a JSON error naming the problem, and the server goes on."""
from __future__ import annotations

import base64
import dataclasses
import io
import socket
import struct
import time
import zlib

import pytest
from PIL import Image

from davit.serve.app import ServeSettings, create_app

from .conftest import LIMITS, running


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and header announcing ``width`` x ``height`` pixels, with an empty
    image stream: what a decompression bomb looks like before its pixels are inflated."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def upload(*images: bytes) -> dict:
    return {"files": [("images", (f"{i}.bin", data)) for i, data in enumerate(images)]}


def json_images(*values) -> dict:
    return {"json": {"images": list(values)}}


CASES = {
    "non-image upload": (lambda p: upload(b"%PDF-1.4 not an image at all"), 422, "not_an_image"),
    "empty upload": (lambda p: upload(b""), 422, "empty_image"),
    "truncated image": (lambda p: upload(p["a.jpg"][: len(p["a.jpg"]) // 2]), 422, "corrupt_image"),
    "decompression bomb under PIL's limit": (lambda p: upload(png_header_only(1000, 1000)), 422, "too_many_pixels"),
    "decompression bomb over PIL's limit": (lambda p: upload(png_header_only(20000, 20000)), 422, "too_many_pixels"),
    "oversized body": (lambda p: upload(b"\xff" * (LIMITS.max_body_bytes + 1)), 413, "body_too_large"),
    "oversized streamed body": (lambda p: {"content": iter([b"{" * 100_000] * 3),
                                           "headers": {"content-type": "application/json"}}, 413, "body_too_large"),
    "wrong content type": (lambda p: {"content": p["a.jpg"], "headers": {"content-type": "image/jpeg"}},
                           415, "unsupported_media_type"),
    "no content type": (lambda p: {"content": b"x"}, 415, "unsupported_media_type"),
    "malformed JSON": (lambda p: {"content": b'{"images": [', "headers": {"content-type": "application/json"}},
                       400, "malformed_json"),
    "JSON not an object": (lambda p: {"json": ["abc"]}, 400, "invalid_request"),
    "images not a list": (lambda p: {"json": {"images": "abc"}}, 400, "invalid_request"),
    "malformed base64": (lambda p: json_images("not*base64!"), 422, "invalid_base64"),
    "base64 not a string": (lambda p: json_images(12), 422, "invalid_base64"),
    "URL instead of bytes": (lambda p: json_images("https://example.com/cat.jpg"), 422, "url_not_fetched"),
    "no images (JSON)": (lambda p: json_images(), 400, "no_images"),
    "no images (form)": (lambda p: {"files": [("other", ("a.jpg", p["a.jpg"]))]}, 400, "no_images"),
    "too many images (form)": (lambda p: upload(*[p["a.jpg"]] * (LIMITS.max_images + 1)), 413, "too_many_images"),
    "too many images (JSON)": (lambda p: json_images(*[base64.b64encode(p["a.jpg"]).decode()] * 9),
                               413, "too_many_images"),
    "text field instead of a file": (lambda p: {"data": {"images": "hello"}, "files": [("other", ("a", b"x"))]},
                                     422, "not_a_file"),
    "multipart without boundary": (lambda p: {"content": b"--x\r\n",
                                              "headers": {"content-type": "multipart/form-data"}},
                                   400, "malformed_multipart"),
}


# both endpoints read images with the same code: a few cases suffice for /v1/embed
ENDPOINT_CASES = [(case, "/v1/predict") for case in CASES] + \
    [(case, "/v1/embed") for case in ("non-image upload", "oversized body", "malformed JSON")]


@pytest.mark.parametrize(("case", "endpoint"), ENDPOINT_CASES)
def test_bad_input_is_refused_with_its_name(server, photos, case, endpoint):
    make, status, code = CASES[case]
    answer = server.http.post(endpoint, **make(photos))
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"] and "\n" not in body["error"]["message"]
    assert body["request_id"] == answer.headers["x-request-id"]
    assert server.http.get("/health").status_code == 200  # still serving


def test_error_message_names_the_bad_image(server, photos):
    answer = server.http.post("/v1/predict", **upload(b"junk", b"more junk"))
    assert answer.status_code == 422
    message = answer.json()["error"]["message"]
    assert "image 0:" in message and "image 1:" in message


def test_truncated_image_message_says_truncated(server, photos):
    answer = server.http.post("/v1/predict", **upload(photos["a.jpg"][:-300]))
    assert answer.status_code == 422 and "truncated" in answer.json()["error"]["message"]


@pytest.mark.parametrize("params", [{"top_k": 0}, {"top_k": "many"}, {"scores": "perhaps"}])
def test_bad_parameter_is_422(server, photos, params):
    answer = server.http.post("/v1/predict", params=params, **upload(photos["a.jpg"]))
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "invalid_parameter"


def test_unknown_path_and_method(server):
    assert server.http.get("/v2/nothing").json()["error"]["code"] == "not_found"
    answer = server.http.get("/v1/predict")
    assert answer.status_code == 405 and answer.json()["error"]["code"] == "method_not_allowed"


def test_a_client_sending_an_oversized_body_reads_the_413(server):
    """The client sends the whole body it announced (16 MiB, more than the socket buffers hold) before
    it reads: the server reads and drops it, so the client gets the 413 rather than a reset."""
    host, port = server.url.removeprefix("http://").split(":")
    body = b"\xff" * (16 << 20)
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(head)
        time.sleep(0.2)  # the server has refused by now, from the header alone
        sock.sendall(body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def test_an_image_whose_resize_is_over_budget_costs_only_its_own_result(server, photos):
    files = [("images", ("a.jpg", photos["a.jpg"])), ("images", ("tall.png", _png(1, 250_000)))]
    answer = server.http.post("/v1/predict", files=files)
    assert answer.status_code == 200
    good, tall = answer.json()["results"]
    assert "pred_label" in good and tall["error"]["code"] == "image_too_large"
    assert "would be resized" in tall["error"]["message"]


def test_a_request_shares_one_pixel_budget(served, photos):
    limits = dataclasses.replace(LIMITS, max_request_pixels=4000)  # a.jpg is 1920 pixels, b.png 2560
    with running(create_app(served, ServeSettings(limits=limits))) as live:
        files = [("images", ("a.jpg", photos["a.jpg"])), ("images", ("b.png", photos["b.png"])),
                 ("images", ("c.jpg", photos["c.jpg"]))]  # c.jpg is 1089 pixels: it still fits
        first, second, third = live.http.post("/v1/predict", files=files).json()["results"]
    assert "pred_label" in first and "pred_label" in third
    assert second["error"]["code"] == "request_too_many_pixels"


@pytest.mark.parametrize("body", [b'{"images": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                  b'{"images": [' + b"9" * 50_000 + b"]}",
                                  b'{"images": "' + b"\xff\xfe" * 10 + b'"}',
                                  b'{"images": [' + b'"", ' * 40 + b'""]}'])
def test_pathological_json_is_a_4xx(server, body):
    answer = server.http.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert 400 <= answer.status_code < 500, answer.text[:300]
    assert answer.json()["error"]["code"] in ("malformed_json", "invalid_request", "too_many_images")
