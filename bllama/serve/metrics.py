"""`GET /metrics`: the server's counters in Prometheus' text format (version 0.0.4).

Updated from the engine thread (tokens, time to first token) and the event loop (requests by status); one lock.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RATE_WINDOW_S = 10.0  # tokens/s is measured over this many recent seconds


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: Counter = Counter()  # by HTTP status
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.ttft_counts = [0] * (len(TTFT_BUCKETS) + 1)
        self.ttft_sum = 0.0
        self._recent: deque = deque()  # (monotonic second, tokens) for the tokens/s gauge

    def request(self, status: int, prompt_tokens: int = 0) -> None:
        with self._lock:
            self.requests[int(status)] += 1
            self.prompt_tokens += prompt_tokens

    def first_token(self, seconds: float, cached: int = 0) -> None:
        with self._lock:
            self.ttft_sum += seconds
            self.cached_tokens += cached
            i = next((k for k, b in enumerate(TTFT_BUCKETS) if seconds <= b), len(TTFT_BUCKETS))
            self.ttft_counts[i] += 1

    def tokens(self, n: int) -> None:
        now = int(time.monotonic())
        with self._lock:
            self.completion_tokens += n
            if self._recent and self._recent[-1][0] == now:
                self._recent[-1][1] += n
            else:
                self._recent.append([now, n])

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
                self._recent.popleft()
            return sum(n for _, n in self._recent) / RATE_WINDOW_S

    def render(self, queue_depth: int, running: int, capacity: int) -> str:
        rate = self.tokens_per_second()
        with self._lock:
            lines = []

            def metric(name, kind, help_, samples):
                lines.extend([f"# HELP bllama_{name} {help_}", f"# TYPE bllama_{name} {kind}"])
                lines.extend(f"bllama_{name}{labels} {value}" for labels, value in samples)

            metric("requests_total", "counter", "Requests answered, by HTTP status (499: the client hung up first; a stream that fails after its 200 counts "
                   "under the error's status).",
                   [(f'{{status="{s}"}}', c) for s, c in sorted(self.requests.items())] or [("", 0)])
            metric("prompt_tokens_total", "counter", "Prompt tokens of requests answered.", [("", self.prompt_tokens)])
            metric("prompt_tokens_cached_total", "counter", "Prompt tokens reused from a kept KV cache.",
                   [("", self.cached_tokens)])
            metric("completion_tokens_total", "counter", "Tokens generated.", [("", self.completion_tokens)])
            metric("queue_depth", "gauge", "Sequences waiting for a slot.", [("", queue_depth)])
            metric("running_sequences", "gauge", "Sequences being decoded.", [("", running)])
            metric("slots", "gauge", "Sequences the engine decodes together at most.", [("", capacity)])
            metric("tokens_per_second", "gauge", f"Tokens generated per second over the last {RATE_WINDOW_S:g} s.",
                   [("", round(rate, 3))])
            cumulative, samples = 0, []
            for b, c in zip(list(TTFT_BUCKETS) + ["+Inf"], self.ttft_counts):
                cumulative += c
                samples.append((f'_bucket{{le="{b}"}}', cumulative))
            samples += [("_sum", round(self.ttft_sum, 6)), ("_count", cumulative)]
            metric("time_to_first_token_seconds", "histogram", "From admission to the first generated token.",
                   samples)
            return "\n".join(lines) + "\n"
