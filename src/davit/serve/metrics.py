"""The server's Prometheus metrics, kept in memory and written in the text exposition format
(version 0.0.4) by hand, so that serving needs no metrics library.

Exposed: ``davit_requests_total{endpoint,status}``, ``davit_request_errors_total{endpoint,code}``,
``davit_images_total{endpoint}``, the histograms ``davit_request_duration_seconds{endpoint}``,
``davit_batch_size`` and ``davit_batch_duration_seconds``, and the gauge ``davit_requests_in_flight``.
Endpoints outside the API are counted as ``other``, so that probing random paths cannot grow the
label set.
"""
from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Labels = tuple[tuple[str, str], ...]


class Histogram:
    """Cumulative bucket counts, sum and count of observations, per label set."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(sorted(buckets))
        self.counts: dict[Labels, list[int]] = defaultdict(lambda: [0] * len(self.buckets))
        self.sums: dict[Labels, float] = defaultdict(float)
        self.totals: dict[Labels, int] = defaultdict(int)

    def observe(self, value: float, labels: Labels = ()) -> None:
        counts = self.counts[labels]
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                counts[index] += 1
        self.sums[labels] += value
        self.totals[labels] += 1

    def lines(self, name: str) -> list[str]:
        lines = []
        for labels, counts in sorted(self.counts.items()):
            for bound, count in zip(self.buckets, counts):
                lines.append(f"{name}_bucket{_labels((*labels, ('le', _number(bound))))} {count}")
            lines.append(f"{name}_bucket{_labels((*labels, ('le', '+Inf')))} {self.totals[labels]}")
            lines.append(f"{name}_sum{_labels(labels)} {_number(self.sums[labels])}")
            lines.append(f"{name}_count{_labels(labels)} {self.totals[labels]}")
        return lines


class Metrics:
    """What the server counts; safe to update from the event loop and worker threads alike."""

    def __init__(self, endpoints: Sequence[str], max_batch_size: int) -> None:
        self.endpoints = frozenset(endpoints)
        self._lock = threading.Lock()
        self.requests: dict[Labels, int] = defaultdict(int)
        self.errors: dict[Labels, int] = defaultdict(int)
        self.images: dict[Labels, int] = defaultdict(int)
        self.in_flight = 0
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_duration = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(_powers_of_two_up_to(max_batch_size))

    def endpoint(self, path: str) -> str:
        """The label for ``path``: itself for an API endpoint, else ``other``."""
        return path if path in self.endpoints else "other"

    def request_started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def request_finished(self, path: str, status: int, seconds: float, error_code: str | None) -> None:
        endpoint = self.endpoint(path)
        with self._lock:
            self.in_flight -= 1
            self.requests[(("endpoint", endpoint), ("status", str(status)))] += 1
            if error_code is not None:
                self.errors[(("endpoint", endpoint), ("code", error_code))] += 1
            self.latency.observe(seconds, (("endpoint", endpoint),))

    def images_received(self, path: str, count: int) -> None:
        with self._lock:
            self.images[(("endpoint", self.endpoint(path)),)] += count

    def batch_done(self, size: int, seconds: float) -> None:
        with self._lock:
            self.batch_size.observe(size)
            self.batch_duration.observe(seconds)

    def render(self) -> str:
        """Every metric in Prometheus' text format."""
        with self._lock:
            parts = [
                _counter("davit_requests_total", "HTTP requests answered, by endpoint and status.", self.requests),
                _counter("davit_request_errors_total", "Requests answered with an error, by endpoint and "
                                                       "error code.", self.errors),
                _counter("davit_images_total", "Images received, by endpoint.", self.images),
                ["# HELP davit_requests_in_flight Requests being answered now.",
                 "# TYPE davit_requests_in_flight gauge", f"davit_requests_in_flight {self.in_flight}"],
                _histogram("davit_request_duration_seconds", "Time from request to answer.", self.latency),
                _histogram("davit_batch_size", "Images per model run.", self.batch_size),
                _histogram("davit_batch_duration_seconds", "Time of one model run.", self.batch_duration),
            ]
        return "\n".join(line for part in parts for line in part) + "\n"


def _counter(name: str, help_text: str, values: dict[Labels, int]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} counter",
            *(f"{name}{_labels(labels)} {count}" for labels, count in sorted(values.items()))]


def _histogram(name: str, help_text: str, histogram: Histogram) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} histogram", *histogram.lines(name)]


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    escaped = (value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n") for _, value in labels)
    return "{" + ",".join(f'{key}="{value}"' for (key, _), value in zip(labels, escaped)) + "}"


def _number(value: float) -> str:
    return repr(float(value))  # Prometheus reads Python's float notation


def _powers_of_two_up_to(limit: int) -> list[float]:
    bounds = [1.0]
    while bounds[-1] < limit:
        bounds.append(bounds[-1] * 2)
    return bounds
