"""The server's counters, rendered in Prometheus' text format (no client library needed)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
ROUND_BUCKETS = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [
            f'{name}_bucket{{{labels}{sep}le="{edge:g}"}} {n}'
            for edge, n in zip(self.buckets, self.counts, strict=True)
        ]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        brace = f"{{{labels}}}" if labels else ""
        return [*out, f"{name}_sum{brace} {self.sum:.6f}", f"{name}_count{brace} {self.count}"]


class Metrics:
    """Everything /metrics reports. ``budget`` and ``spend`` read the pacer's live values."""

    def __init__(self, budget: float, spend: Callable[[], float]) -> None:
        self.budget, self.spend = budget, spend
        self.requests: Counter[tuple[str, str]] = Counter()  # (route, HTTP status) -> count
        self.samples: Counter[str] = Counter()  # route -> samples drawn upstream
        self.errors: Counter[str] = Counter()  # kind -> count
        self.closed: Counter[str] = Counter()  # reason -> connections cut off (slow clients)
        self.upstream_latency = Histogram()
        self.request_latency = Histogram()
        self.in_flight = 0
        self.decision_batch = Histogram(BATCH_BUCKETS)
        self.ready = 0  # 1 once calibrated and answering
        self.startup_seconds = 0.0  # from the start of start-up to ready
        self.calibration: Counter[str] = Counter()  # "cache" or "featurised" -> prompts
        # Menu mode (menu set true): draws and spend by decoder, rounds, stops, the paced knob.
        self.menu = False
        self.decoder_samples: Counter[str] = Counter()
        self.decoder_cost: defaultdict[str, float] = defaultdict(float)
        self.rounds = Histogram(ROUND_BUCKETS)
        self.stops: Counter[str] = Counter()
        self.knob: Callable[[], float] = lambda: float("nan")

    def render(self) -> str:
        lines = [
            "# HELP howhard_requests_total Requests answered, by route taken and HTTP status.",
            "# TYPE howhard_requests_total counter",
            *(
                f'howhard_requests_total{{route="{r}",status="{s}"}} {n}'
                for (r, s), n in sorted(self.requests.items())
            ),
            "# HELP howhard_samples_total Samples drawn upstream, by route.",
            "# TYPE howhard_samples_total counter",
            *(f'howhard_samples_total{{route="{r}"}} {n}' for r, n in sorted(self.samples.items())),
            "# HELP howhard_budget_target Target mean spend per request (budget: samples, or in "
            "menu mode the decoders' cost unit).",
            "# TYPE howhard_budget_target gauge",
            f"howhard_budget_target {self.budget:g}",
            "# HELP howhard_budget_spent_per_request Mean spend per request so far (samples "
            "decided, or in menu mode cost realised).",
            "# TYPE howhard_budget_spent_per_request gauge",
            f"howhard_budget_spent_per_request {self.spend():.6f}",
            "# HELP howhard_errors_total Failed requests, by kind.",
            "# TYPE howhard_errors_total counter",
            *(f'howhard_errors_total{{kind="{k}"}} {n}' for k, n in sorted(self.errors.items())),
            "# HELP howhard_connections_closed_total Connections cut off before a request was "
            "read, by reason (header_timeout, header_too_large).",
            "# TYPE howhard_connections_closed_total counter",
            *(
                f'howhard_connections_closed_total{{reason="{r}"}} {n}'
                for r, n in sorted(self.closed.items())
            ),
            "# HELP howhard_requests_in_flight Requests being answered now.",
            "# TYPE howhard_requests_in_flight gauge",
            f"howhard_requests_in_flight {self.in_flight}",
            "# HELP howhard_upstream_latency_seconds Time to draw a request's samples upstream.",
            "# TYPE howhard_upstream_latency_seconds histogram",
            *self.upstream_latency.lines("howhard_upstream_latency_seconds"),
            "# HELP howhard_request_latency_seconds Time to answer a completion request "
            "(a stream: to its first byte).",
            "# TYPE howhard_request_latency_seconds histogram",
            *self.request_latency.lines("howhard_request_latency_seconds"),
            "# HELP howhard_decision_batch_size Requests featurised and decided together.",
            "# TYPE howhard_decision_batch_size histogram",
            *self.decision_batch.lines("howhard_decision_batch_size"),
            "# HELP howhard_ready 1 once calibrated and answering, 0 while starting (or failed).",
            "# TYPE howhard_ready gauge",
            f"howhard_ready {self.ready}",
            "# HELP howhard_startup_seconds Seconds start-up took until ready (0 while starting).",
            "# TYPE howhard_startup_seconds gauge",
            f"howhard_startup_seconds {self.startup_seconds:.3f}",
            "# HELP howhard_calibration_prompts Calibration prompts, by where their features came "
            "from (cache or featurised).",
            "# TYPE howhard_calibration_prompts gauge",
            *(
                f'howhard_calibration_prompts{{source="{k}"}} {n}'
                for k, n in sorted(self.calibration.items())
            ),
        ]
        if self.menu:
            lines += self._menu_lines()
        return "\n".join(lines) + "\n"

    def _menu_lines(self) -> list[str]:
        return [
            "# HELP howhard_decoder_samples_total Samples drawn, by decoder of the menu.",
            "# TYPE howhard_decoder_samples_total counter",
            *(
                f'howhard_decoder_samples_total{{decoder="{d}"}} {n}'
                for d, n in sorted(self.decoder_samples.items())
            ),
            "# HELP howhard_decoder_cost_total Cost spent (the prices' unit), by decoder.",
            "# TYPE howhard_decoder_cost_total counter",
            *(
                f'howhard_decoder_cost_total{{decoder="{d}"}} {c:.6f}'
                for d, c in sorted(self.decoder_cost.items())
            ),
            "# HELP howhard_rounds Rounds of draws per request.",
            "# TYPE howhard_rounds histogram",
            *self.rounds.lines("howhard_rounds"),
            "# HELP howhard_stops_total Requests by why their rounds stopped (policy, max_samples, "
            "max_cost, max_rounds, max_seconds, spend_rate, upstream).",
            "# TYPE howhard_stops_total counter",
            *(f'howhard_stops_total{{reason="{r}"}} {n}' for r, n in sorted(self.stops.items())),
            "# HELP howhard_knob The policy family's paced knob (its mean over the last draw).",
            "# TYPE howhard_knob gauge",
            f"howhard_knob {self.knob():.6g}",
        ]
