"""Prometheus metrics in the text exposition format (0.0.4), written here to keep the base install small.

Counters, gauges and histograms with labels; updates take a lock per metric (nanoseconds uncontended).
Each worker process has its own registry: scrape every worker, or run one worker per pod.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    if v == float("inf"):
        return "+Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: Iterable[str] = ()) -> None:
        self.name, self.help = name, help_text
        self.label_names = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        return tuple(str(labels[n]) for n in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Iterable[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.label_names:
            items = [((), 0.0)]
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in items]


class Gauge(_Metric):
    """A gauge set directly, or computed at scrape time by `collect` (e.g. the index size)."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, labels: Iterable[str] = (),
                 collect: Callable[[], dict[tuple[str, ...], float]] | None = None) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[tuple[str, ...], float] = {}
        self.collect = collect

    def set(self, value: float, **labels: str) -> None:
        with self._lock:
            self._values[self._key(labels)] = value

    def render(self) -> list[str]:
        if self.collect is not None:
            try:
                items = sorted(self.collect().items())
            except Exception:  # a scrape must not fail because one gauge could not be read
                items = []
        else:
            with self._lock:
                items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in items]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, labels: Iterable[str] = (),
                 buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[tuple[str, ...], list[float]] = {}  # per label set: bucket counts…, sum, count

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        i = bisect.bisect_left(self.buckets, value)
        with self._lock:
            s = self._series.get(key)
            if s is None:
                s = self._series[key] = [0.0] * (len(self.buckets) + 2)
            if i < len(self.buckets):
                s[i] += 1
            s[-2] += value
            s[-1] += 1

    def count(self, **labels: str) -> float:
        s = self._series.get(self._key(labels))
        return s[-1] if s else 0.0

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        out = self.header()
        for key, s in items:
            cumulative = 0.0
            for bound, n in zip(self.buckets, s, strict=False):
                cumulative += n
                le = 'le="' + _num(bound) + '"'
                out.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {_num(cumulative)}")
            inf = 'le="+Inf"'
            out.append(f"{self.name}_bucket{_labels(self.label_names, key, inf)} {_num(s[-1])}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key)} {_num(s[-2])}")
            out.append(f"{self.name}_count{_labels(self.label_names, key)} {_num(s[-1])}")
        return out


class Metrics:
    """Every series the service exports. One instance per app (tests get fresh ones)."""

    def __init__(self) -> None:
        # `variant`: the A/B variant that answered (recommend, rank, batch score; "default" without
        # XREC_VARIANTS), empty for other routes.
        self.request_seconds = Histogram("xrec_http_request_duration_seconds",
                                         "Request latency by route template and A/B variant.",
                                         ("method", "route", "variant"))
        self.requests = Counter("xrec_http_requests_total", "Requests by route, A/B variant and status.",
                                ("method", "route", "variant", "status"))
        self.ranked_cache = Counter("xrec_ranked_cache_requests_total",
                                    "Recommendations answered from the in-process ranked cache (hit) or "
                                    "computed (miss), or with Redis unavailable (degraded).", ("result",))
        self.profile_source = Counter("xrec_profile_loads_total",
                                      "Where a person's profile came from.", ("source",))
        self.redis_errors = Counter("xrec_redis_errors_total", "Redis calls that failed (timeouts, refused).")
        self.redis_up = Gauge("xrec_redis_up", "1 while Redis answers, 0 while the service runs degraded.")
        self.events = Counter("xrec_events_total", "Ingested events by outcome.", ("result",))
        self.batch_rows = Counter("xrec_batch_rows_total", "Persons scored by /v1/batch/score.")
        self.reloads = Counter("xrec_bundle_reloads_total", "Bundle reloads by outcome.", ("result",))
        self.model_info = Gauge("xrec_model_info", "The served model version and execution provider (1).",
                                ("model_version", "provider"))
        self.index_items = Gauge("xrec_index_items", "Live items in the retrieval index, per platform.",
                                 ("platform",))
        self.variant_share = Gauge("xrec_variant_share", "The share of persons each A/B variant serves.",
                                   ("variant", "model_version"))
        self.recommend_batch = Histogram("xrec_recommend_batch_size",
                                         "Uncached /v1/recommend requests computed together (micro-batching).",
                                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.recommend_hold = Histogram("xrec_recommend_batch_hold_seconds",
                                        "How long a request waited for others to join its batch (not counting "
                                        "the wait for the batch before it to finish).",
                                        buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05))
        self.all = [self.request_seconds, self.requests, self.ranked_cache, self.profile_source,
                    self.redis_errors, self.redis_up, self.events, self.batch_rows, self.reloads,
                    self.model_info, self.index_items, self.variant_share, self.recommend_batch,
                    self.recommend_hold]

    def render(self) -> str:
        lines: list[str] = []
        for m in self.all:
            lines.extend(m.render())
        return "\n".join(lines) + "\n"
