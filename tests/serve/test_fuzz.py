"""Fuzzing the served API: schemathesis against the OpenAPI schema the server publishes, and
randomly damaged photos; no answer may be a 5xx, and the server stays up."""
from __future__ import annotations

import random

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

OPERATIONS = ["GET /health", "GET /metrics", "GET /v1/models", "POST /v1/predict", "POST /v1/embed"]


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


def test_schema_lists_every_endpoint(api_schema):
    labels = {result.ok().label for result in api_schema.get_all_operations()}
    assert labels == set(OPERATIONS)


# negative cases (what the schema forbids) exist only where there are parameters or a body
RUNS = [(label, GenerationMode.POSITIVE) for label in OPERATIONS] + \
    [(label, GenerationMode.NEGATIVE) for label in OPERATIONS if label.startswith("POST")]


@pytest.mark.parametrize(("label", "mode"), RUNS)
def test_schema_fuzz_finds_no_server_error(api_schema, server, label, mode):
    operation = api_schema.find_operation_by_label(label)

    @given(operation.as_strategy(generation_mode=mode))
    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def check(case) -> None:
        response = case.call(base_url=server.url, timeout=30)
        assert response.status_code < 500, f"{label}: {response.status_code} {response.text[:300]}"

    check()
    assert server.http.get("/health").status_code == 200


def mutate(data: bytes, rng: random.Random) -> bytes:
    """``data`` with a few bytes flipped, a slice removed or repeated, or cut short."""
    buffer = bytearray(data)
    kind = rng.choice(["flip", "cut", "drop", "repeat"])
    if kind == "flip":
        for _ in range(rng.randint(1, 20)):
            buffer[rng.randrange(len(buffer))] = rng.randrange(256)
    elif kind == "cut":
        del buffer[rng.randrange(1, len(buffer)):]
    else:
        start = rng.randrange(len(buffer))
        piece = buffer[start:start + rng.randint(1, 200)]
        if kind == "drop":
            del buffer[start:start + len(piece)]
        else:
            buffer[start:start] = piece * rng.randint(1, 5)
    return bytes(buffer)


def test_mutated_images_never_cause_a_server_error(server, photos):
    rng = random.Random(0)
    statuses = set()
    for round_ in range(40):
        name = rng.choice(sorted(photos))
        files = [("images", (name, mutate(photos[name], rng))), ("images", (name, photos[name]))]
        answer = server.http.post("/v1/predict" if round_ % 2 else "/v1/embed", files=files)
        assert answer.status_code == 200, answer.text  # the intact photo always gets its result
        statuses.update("error" if "error" in result else "ok" for result in answer.json()["results"])
    assert statuses == {"ok", "error"}  # some mutations were readable, others refused
    assert server.http.get("/health").status_code == 200
