"""Retry and timeout presets for activity calls: every `execute_activity*` uses one.

Temporal owns retries (client libraries run with theirs off), so these are the only
place where "how long" and "how often" are decided. Use them as keyword arguments:

    await workflow.execute_activity_method(Acts.method, Input(...), **DB.kwargs())
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy


@dataclass(frozen=True)
class ActivityPreset:
    start_to_close_timeout: timedelta
    retry_policy: RetryPolicy
    schedule_to_close_timeout: timedelta | None = None
    heartbeat_timeout: timedelta | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for workflow.execute_activity / execute_activity_method."""
        out: dict[str, Any] = {
            "start_to_close_timeout": self.start_to_close_timeout,
            "retry_policy": self.retry_policy,
        }
        if self.schedule_to_close_timeout is not None:
            out["schedule_to_close_timeout"] = self.schedule_to_close_timeout
        if self.heartbeat_timeout is not None:
            out["heartbeat_timeout"] = self.heartbeat_timeout
        out.update(self.extra)
        return out


# Reads and writes in PostgreSQL: short, retried until the database is back.
DB = ActivityPreset(
    start_to_close_timeout=timedelta(seconds=30),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=10),
    ),
)

# A call to a delivery provider (SMTP, Postalynk, Web Push, Twilio): idempotent by its
# send key, so retries are safe; a provider outage is ridden out for about a day.
SEND = ActivityPreset(
    start_to_close_timeout=timedelta(seconds=30),
    schedule_to_close_timeout=timedelta(hours=24),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(seconds=2),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(minutes=5),
    ),
)

# An LLM call: slow, costly, and a few tries are enough before giving up.
AI = ActivityPreset(
    start_to_close_timeout=timedelta(seconds=120),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(seconds=2),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=30),
        maximum_attempts=5,
    ),
)
