"""Every telemetry name otelres emits, in one place.

The README's telemetry reference fixes these: dashboards, alert rules and users' queries depend on
them, and the dashboard generator imports this module so that a query cannot
drift from the code. Change one only together with all of those.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ATTR_ATTEMPT",
    "ATTR_ATTEMPTS",
    "ATTR_BREAKER",
    "ATTR_FAILURE_RATE",
    "ATTR_FROM_STATE",
    "ATTR_OUTCOME",
    "ATTR_REJECTION_REASON",
    "ATTR_RETRY_AFTER",
    "ATTR_RETRY_DELAY",
    "ATTR_RETRY_REASON",
    "ATTR_SHED_REASON",
    "ATTR_STATE",
    "ATTR_TO_STATE",
    "CALLS",
    "CALL_DURATION",
    "CIRCUIT_STATE",
    "CIRCUIT_TRANSITIONS",
    "EVENT_CIRCUIT_REJECTED",
    "EVENT_CIRCUIT_TRANSITION",
    "EVENT_RETRY",
    "LOG_CALL_REJECTED",
    "LOG_CIRCUIT_TRANSITION",
    "LOG_LIMIT_CHANGED",
    "LOG_REQUEST_REJECTED",
    "LOG_REQUEST_SHED",
    "LOG_RETRY",
    "LOG_RETRY_EXHAUSTED",
    "LOG_RETRY_SUPPRESSED",
    "METER_NAME",
    "OUTCOMES",
    "PROMETHEUS",
    "REJECTIONS",
    "REJECTION_REASONS",
    "RETRIES",
    "RETRIES_SUPPRESSED",
    "RETRY_DELAY",
    "SERVER_IN_FLIGHT",
    "SERVER_LIMIT",
    "SERVER_SHED",
    "SHARED_STATE_CONNECTED",
    "SHARED_STATE_DISAGREEING",
    "SHARED_STATE_PROCESSES",
    "SHED_REASONS",
    "STATES",
    "SUPPRESSED_REASONS",
]

#: The instrumentation scope of every tracer and meter otelres uses.
METER_NAME: Final = "otelres"

# -- metric instruments (OpenTelemetry names) ---------------------------------------
CALLS: Final = "otelres.calls"
CALL_DURATION: Final = "otelres.call.duration"
RETRIES: Final = "otelres.retries"
RETRIES_SUPPRESSED: Final = "otelres.retries.suppressed"
CIRCUIT_STATE: Final = "otelres.circuit.state"
CIRCUIT_TRANSITIONS: Final = "otelres.circuit.transitions"
#: Beyond the README table's six: the delay actually scheduled before each retry.
RETRY_DELAY: Final = "otelres.retry.delay"
#: Shared breaker state (``OTELRES_SHARED_STATE``): only while it is on.
SHARED_STATE_CONNECTED: Final = "otelres.shared_state.connected"
SHARED_STATE_PROCESSES: Final = "otelres.shared_state.processes"
SHARED_STATE_DISAGREEING: Final = "otelres.shared_state.disagreeing"
#: The server middleware's concurrency limit (``ResilienceMiddleware(..., limit=...)``): only
#: while a middleware has one. The limit now and the requests in flight under it (gauges, summed
#: over the process's limited middlewares), and the requests shed (a counter, by reason).
SERVER_LIMIT: Final = "otelres.server.limit"
SERVER_IN_FLIGHT: Final = "otelres.server.in_flight"
SERVER_SHED: Final = "otelres.server.shed"
#: Calls rejected without an attempt, by reason (REJECTION_REASONS): an open circuit, or the
#: adaptive throttle beside a closed one. Each is also an ``otelres.calls`` with outcome rejected.
REJECTIONS: Final = "otelres.rejections"

#: The series the standard OpenTelemetry Prometheus exporter makes of them.
PROMETHEUS: Final = {
    CALLS: "otelres_calls_total",
    CALL_DURATION: "otelres_call_duration_seconds",  # _bucket, _sum, _count
    RETRIES: "otelres_retries_total",
    RETRIES_SUPPRESSED: "otelres_retries_suppressed_total",
    CIRCUIT_STATE: "otelres_circuit_state",
    CIRCUIT_TRANSITIONS: "otelres_circuit_transitions_total",
    RETRY_DELAY: "otelres_retry_delay_seconds",  # _bucket, _sum, _count
    SHARED_STATE_CONNECTED: "otelres_shared_state_connected",
    SHARED_STATE_PROCESSES: "otelres_shared_state_processes",
    SHARED_STATE_DISAGREEING: "otelres_shared_state_disagreeing",
    SERVER_LIMIT: "otelres_server_limit",
    SERVER_IN_FLIGHT: "otelres_server_in_flight",
    SERVER_SHED: "otelres_server_shed_total",
    REJECTIONS: "otelres_rejections_total",
}

# -- attributes -------------------------------------------------------------------------
ATTR_BREAKER: Final = "otelres.breaker"
ATTR_OUTCOME: Final = "otelres.outcome"
ATTR_RETRY_REASON: Final = "otelres.retry.reason"
ATTR_STATE: Final = "otelres.state"
ATTR_FROM_STATE: Final = "otelres.from_state"
ATTR_TO_STATE: Final = "otelres.to_state"
ATTR_ATTEMPT: Final = "otelres.attempt"
ATTR_ATTEMPTS: Final = "otelres.attempts"
ATTR_RETRY_DELAY: Final = "otelres.retry.delay"
ATTR_FAILURE_RATE: Final = "otelres.failure_rate"
ATTR_RETRY_AFTER: Final = "otelres.retry_after"
#: Why the middleware shed a request (SHED_REASONS).
ATTR_SHED_REASON: Final = "otelres.shed.reason"
#: Why a call was rejected without an attempt (REJECTION_REASONS).
ATTR_REJECTION_REASON: Final = "otelres.rejection.reason"

#: The closed sets attribute values come from (bounded cardinality).
OUTCOMES: Final = ("success", "failure", "rejected", "fallback")
STATES: Final = ("closed", "open", "half_open", "forced_open", "disabled")
SUPPRESSED_REASONS: Final = (
    "budget",
    "deadline",
    "not_idempotent",
    "not_replayable",
    "circuit_open",
    "retry_after",
)
#: ``limit``: the limit was taken; ``critical``: a critical request found the limit and the
#: headroom above it taken.
SHED_REASONS: Final = ("limit", "critical")
#: ``circuit_open``: the breaker is open (or half-open with its probes taken); ``throttled``: the
#: adaptive throttle (``BreakerPolicy(throttle=...)``) refused the call.
REJECTION_REASONS: Final = ("circuit_open", "throttled")

# -- span events ------------------------------------------------------------------------
EVENT_RETRY: Final = "otelres.retry"
EVENT_CIRCUIT_TRANSITION: Final = "otelres.circuit.transition"
EVENT_CIRCUIT_REJECTED: Final = "otelres.circuit.rejected"

# -- log events (structlog when the application configured it, else the logger "otelres") --
LOG_RETRY: Final = "otelres.retry"
LOG_RETRY_SUPPRESSED: Final = "otelres.retry.suppressed"
LOG_RETRY_EXHAUSTED: Final = "otelres.retry.exhausted"
LOG_CIRCUIT_TRANSITION: Final = "otelres.circuit.transition"
LOG_CALL_REJECTED: Final = "otelres.call.rejected"
#: A request the middleware (or the framework glue) answered 503 because a circuit is open.
LOG_REQUEST_REJECTED: Final = "otelres.request.rejected"
#: A request the middleware shed with 503 (over its concurrency limit); rate-limited.
LOG_REQUEST_SHED: Final = "otelres.request.shed"
#: An adaptive concurrency limit moved by a quarter or more since the last such line; rate-limited.
LOG_LIMIT_CHANGED: Final = "otelres.limit.changed"
