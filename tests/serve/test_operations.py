"""Access, failures, load and shutdown: the token, a 500 without traceback, health while a batch
runs, the request timeout and a graceful stop that answers the accepted requests."""
from __future__ import annotations

import dataclasses
import logging
import threading
import time

import httpx
import pytest
import torch

from davit.serve.app import ServeSettings, create_app
from davit.serve.limits import Limits

from .conftest import LIMITS, running

TOKEN = "s3cret-token"


def test_token_guards_every_endpoint_but_health(served, photos):
    files = [("images", ("a.jpg", photos["a.jpg"]))]
    with running(create_app(served, ServeSettings(limits=LIMITS, token=TOKEN))) as server:
        http = server.http
        assert http.get("/health").status_code == 200
        requests = [("GET", "/v1/models", {}), ("GET", "/metrics", {}), ("GET", "/openapi.json", {}),
                    ("POST", "/v1/predict", {"files": files}), ("POST", "/v1/embed", {"files": files})]
        for method, path, extra in requests:
            for headers in ({}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"},
                            {"Authorization": "Bearer"}):
                answer = http.request(method, path, headers=headers, **extra)
                assert answer.status_code == 401, (path, headers)
                assert answer.json()["error"]["code"] == "unauthorized"
                assert answer.json()["error"]["message"].startswith("this server needs a bearer token")
                assert answer.headers["www-authenticate"] == "Bearer"
            answer = http.request(method, path, headers={"Authorization": "Bearer wrong-guess"}, **extra)
            assert answer.status_code == 401, path
            assert answer.json()["error"]["code"] == "wrong_token"
            assert answer.json()["error"]["message"].startswith("the bearer token is wrong; ")
            assert "wrong-guess" not in answer.text and TOKEN not in answer.text
            assert answer.headers["www-authenticate"].startswith("Bearer")
            answer = http.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"}, **extra)
            assert answer.status_code == 200, (path, answer.text)


class Failing:
    """A classifier that fails (or stalls) the way a bug or an overloaded machine would."""

    name = "failing"

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.delay_s = delay_s
        self.fail = fail

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("secret internal detail")
        return torch.zeros(len(images), 3)


def test_internal_failure_is_a_500_with_request_id_and_no_traceback(served, photos, caplog):
    broken = dataclasses.replace(served, classifier=Failing(fail=True))
    with running(create_app(broken, ServeSettings(limits=LIMITS))) as server, \
            caplog.at_level(logging.ERROR, logger="davit.serve"):
        answer = server.http.post("/v1/predict", files=[("images", ("a.jpg", photos["a.jpg"]))],
                                  headers={"X-Request-ID": "trace-me"})
        assert server.http.get("/health").status_code == 200
    assert answer.status_code == 500
    assert answer.json() == {"error": {"code": "internal_error", "message": answer.json()["error"]["message"]},
                             "request_id": "trace-me"}
    assert "trace-me" in answer.json()["error"]["message"]
    assert "Traceback" not in answer.text and "secret" not in answer.text
    assert "secret internal detail" in caplog.text  # the log keeps what the answer hides


def test_health_answers_while_a_batch_runs_and_slow_requests_time_out(served, photos):
    slow = dataclasses.replace(served, classifier=Failing(delay_s=1.5))
    settings = ServeSettings(limits=dataclasses.replace(LIMITS, timeout_s=0.6))
    with running(create_app(slow, settings)) as server:
        answers: list[httpx.Response] = []
        sender = threading.Thread(target=lambda: answers.append(
            server.http.post("/v1/predict", files=[("images", ("a.jpg", photos["a.jpg"]))])))
        sender.start()
        time.sleep(0.3)  # the batch is running now
        started = time.perf_counter()
        assert server.http.get("/health").status_code == 200
        assert time.perf_counter() - started < 0.5
        sender.join()
    assert answers[0].status_code == 503 and answers[0].json()["error"]["code"] == "timeout"


def test_graceful_shutdown_answers_accepted_requests(served, photos):
    # a long batching wait keeps the request in flight when the shutdown starts
    settings = ServeSettings(max_wait_ms=1000, limits=LIMITS)
    answers: list[httpx.Response] = []
    with running(create_app(served, settings)) as server:
        sender = threading.Thread(target=lambda: answers.append(
            server.http.post("/v1/predict", files=[("images", ("a.jpg", photos["a.jpg"]))])))
        sender.start()
        time.sleep(0.3)
        server.server.should_exit = True  # what SIGINT/SIGTERM do
        sender.join(timeout=10)
        server.thread.join(timeout=10)
        assert not server.thread.is_alive()
    assert answers[0].status_code == 200 and answers[0].json()["results"][0]["pred_class"]


def test_limits_are_checked():
    with pytest.raises(ValueError, match="max_images"):
        Limits(max_images=0)
    with pytest.raises(ValueError, match="token"):
        ServeSettings(token=" ")


def test_loading_preprocessing_and_the_model_share_one_thread(tiny_folder, photos):
    # each thread that runs PyTorch operators gets its own OpenMP team, and on a 2-core AMX Xeon
    # a second one made every forward pass up to 2x slower: the server keeps them on one thread
    from davit.serve.app import model_thread
    from davit.serve.model import load_served_model

    executor = model_thread()
    loaded_on = executor.submit(lambda: threading.current_thread().name).result()
    served = executor.submit(load_served_model, str(tiny_folder)).result()
    seen = set()

    class Recorded:
        """``function``, noting which thread calls it."""

        def __init__(self, what, function):
            self.what, self.function, self.name = what, function, getattr(function, "name", what)

        def __call__(self, *args):
            seen.add((self.what, threading.current_thread().name))
            return self.function(*args)

        def __getattr__(self, name):  # the transform's settings, read when checking an image's size
            return getattr(self.function, name)

    served = dataclasses.replace(served, transform=Recorded("preprocessing", served.transform),
                                 classifier=Recorded("model", served.classifier))
    with running(create_app(served, ServeSettings(limits=LIMITS), executor)) as server:
        answer = server.http.post("/v1/predict", files=[("images", ("a.jpg", photos["a.jpg"]))])
    assert answer.status_code == 200, answer.text
    assert loaded_on.startswith("davit-model")
    assert seen == {("preprocessing", loaded_on), ("model", loaded_on)}
