"""The portal's own Prometheus metrics, exposed at ``/metrics``."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram

from portal.infra.cache import Cache

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "portal_http_requests",
    "HTTP requests answered by the portal, by route template and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_REQUEST_SECONDS = Histogram(
    "portal_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template.",
    ["method", "route"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HEARTBEATS = Counter("portal_heartbeats", "Heartbeats received from worker agents.", registry=REGISTRY)
PLACEMENTS = Counter(
    "portal_placements",
    "Cluster placements, by outcome (booked; refused for capacity or credit; busy, to retry).",
    ["outcome"],
    registry=REGISTRY,
)
# Actor runs are counted in the cache by every task-worker process (see tasks.broker.ActorMetrics).
COUNTER_TTL_S = 10 * 365 * 24 * 3600
OUTCOMES = ("success", "failure")


def actor_runs_key(actor: str, outcome: str) -> str:
    return f"actor-runs:{actor}:{outcome}"


def actor_runs_exposition(cache: Cache, actors: Sequence[str]) -> bytes:
    """``portal_actor_runs_total`` by actor and outcome, summed over every task-worker process."""
    keys = [(actor, outcome) for actor in sorted(actors) for outcome in OUTCOMES]
    counts = cache.batch([("get", actor_runs_key(actor, outcome)) for actor, outcome in keys])
    lines = [
        "# HELP portal_actor_runs_total Task actor runs, by actor and outcome, in every task-worker process.",
        "# TYPE portal_actor_runs_total counter",
        *(
            f'portal_actor_runs_total{{actor="{escape_label(actor)}",outcome="{outcome}"}} '
            f"{float(count or 0)!r}"
            for (actor, outcome), count in zip(keys, counts, strict=True)
        ),
    ]
    return ("\n".join(lines) + "\n").encode()


def escape_label(value: str) -> str:
    """A label value as the text exposition format writes it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def payouts_exposition(totals: dict[str, tuple[int, int]]) -> bytes:
    """Payouts by state (a gauge: they move between states) and the micro-USD paid out (a counter)."""
    states = ("pending", "submitted", "confirmed", "failed")
    lines = [
        "# HELP portal_payouts Provider payouts, by state.",
        "# TYPE portal_payouts gauge",
        *(f'portal_payouts{{state="{state}"}} {float(totals.get(state, (0, 0))[0])!r}' for state in states),
        "# HELP portal_payouts_paid_micro_total Micro-USD paid to providers, confirmed on chain.",
        "# TYPE portal_payouts_paid_micro_total counter",
        f"portal_payouts_paid_micro_total {float(totals.get('confirmed', (0, 0))[1])!r}",
    ]
    return ("\n".join(lines) + "\n").encode()
