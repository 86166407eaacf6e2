"""The Temporal ceiling: how many workflows of a product workflow's shape the same
Temporal server runs per second when the workflow does nothing else.

Two shapes, each a workflow whose only work is a local activity that tells the waiting
caller it ran, started by `concurrency` closed-loop callers (start, then wait for that
word in this process) against a worker in this process:

- `send`: SendMessageWorkflow's shape: start, one workflow task running one local
  activity (`deliver`), done. The callers wait as POST /messages waits on the worker's
  NOTIFY.
- `enrollment`: AutomationEnrollmentWorkflow's shape as the dispatcher starts it:
  signal-with-start with a memo and the three search attributes, an input the size of
  a step snapshot, one workflow task running one local activity (`begin`), then a timer
  of a day (the run stays open, as a drip sequence's does). Counted when the local
  activity has run, as the automations bench counts enrollments started.
- `timer-only`: the `enrollment` shape minus the local activity (the caller is told
  from the workflow's first activation): the least a run that waits can cost.

No PostgreSQL, SMTP or HTTP: the rate is what Temporal (server and Python SDK) allows
before the product adds anything, so `ceiling / baseline` bounds the ratio of any
design with one workflow per message or per enrollment.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import _common as c
import _stack as st
from temporalio import activity, workflow

_arrived: dict[str, asyncio.Future[None]] = {}


def _wake(workflow_id: str) -> None:
    waiter = _arrived.pop(workflow_id, None)
    if waiter is not None and not waiter.done():
        waiter.get_loop().call_soon_threadsafe(_set, waiter)


def _set(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@activity.defn(name="bench_ceiling_deliver")
async def deliver(workflow_id: str) -> None:
    """The stand-in for `deliver`: wakes the caller waiting on this workflow."""
    _wake(workflow_id)


@workflow.defn(name="BenchCeilingSend", sandboxed=False)
class CeilingSendWorkflow:
    @workflow.run
    async def run(self) -> None:
        await workflow.execute_local_activity(
            deliver, workflow.info().workflow_id, start_to_close_timeout=timedelta(seconds=30))


@workflow.defn(name="BenchCeilingEnrollment", sandboxed=False)
class CeilingEnrollmentWorkflow:
    @workflow.signal
    def event(self, payload: Any) -> None:
        pass

    @workflow.run
    async def run(self, steps: list[dict[str, Any]]) -> None:
        await workflow.execute_local_activity(
            deliver, workflow.info().workflow_id, start_to_close_timeout=timedelta(seconds=30))
        await workflow.sleep(timedelta(days=1))


@workflow.defn(name="BenchCeilingTimerOnly", sandboxed=False)
class CeilingTimerOnlyWorkflow:
    """The enrollment's shape minus the local activity: the least a run that waits can do.
    Its caller is told from the first activation (not on replay), by a side effect that
    only a benchmark may take: the workflow is unsandboxed and in this process."""

    @workflow.signal
    def event(self, payload: Any) -> None:
        pass

    @workflow.run
    async def run(self, steps: list[dict[str, Any]]) -> None:
        if not workflow.unsafe.is_replaying():
            _wake(workflow.info().workflow_id)
        await workflow.sleep(timedelta(days=1))


# An input like a two-step automation's snapshot with its trigger.
_STEPS = [{"type": "WAIT", "delay": 86_400},
          {"type": "SEND_EMAIL", "subject": "Bench", "body": "<p>Hello from the bench</p>",
           "trigger": {"eventId": "evt_" + "x" * 22, "eventName": "bench_trigger",
                       "properties": {"plan": "pro"}}}]
SHAPES = ("send", "enrollment", "timer-only")


async def ceiling_phase(address: str, seconds: float, warmup: float, concurrency: int,
                        cpu_groups: dict[str, Callable[[], list[int]]],
                        shape: str = "send") -> dict[str, Any]:
    from temporalio.client import Client
    from temporalio.common import (
        SearchAttributeKey,
        SearchAttributePair,
        TypedSearchAttributes,
    )
    from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
    from temporalio.worker import Worker

    quiet = Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(
        filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))))
    client = await Client.connect(address, runtime=quiet)
    queue = f"bench-ceiling-{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex[:8]
    meter = st.CpuMeter({**cpu_groups, "bench": lambda: [os.getpid()]})
    done = errors = 0
    latencies: list[float] = []
    samples: list[str] = []
    cpu: dict[str, float] = {}
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}")
    search = TypedSearchAttributes([
        SearchAttributePair(SearchAttributeKey.for_keyword(k), f"bench-{k}")
        for k in ("projectId", "automationId", "userId")])

    async def start(wid: str) -> None:
        if shape == "send":
            await client.start_workflow(CeilingSendWorkflow.run, id=wid, task_queue=queue)
        else:
            run = (CeilingEnrollmentWorkflow.run if shape == "enrollment"
                   else CeilingTimerOnlyWorkflow.run)
            await client.start_workflow(
                run, _STEPS, id=wid, task_queue=queue,
                start_signal="event", start_signal_args=[{"eventId": wid}],
                memo={"automation": "bench", "userId": wid}, search_attributes=search)

    async with Worker(client, task_queue=queue,
                      workflows=[CeilingSendWorkflow, CeilingEnrollmentWorkflow,
                                 CeilingTimerOnlyWorkflow],
                      activities=[deliver]):
        t0 = time.monotonic() + 0.2 + warmup
        t1 = t0 + seconds

        async def caller(k: int) -> None:
            nonlocal done, errors
            loop = asyncio.get_running_loop()
            for i in itertools.count():
                s = time.monotonic()
                if s >= t1:
                    return
                wid = f"ceiling:{tag}:{k}:{i}"
                arrived = _arrived[wid] = loop.create_future()
                try:
                    await start(wid)
                    await asyncio.wait_for(arrived, 30)
                    good, what = True, ""
                except Exception as exc:
                    _arrived.pop(wid, None)
                    good, what = False, repr(exc)[:200]
                e = time.monotonic()
                if s >= t0 and e <= t1:
                    if good:
                        done += 1
                        latencies.append((e - s) * 1000)
                    else:
                        errors += 1
                        if len(samples) < 5:
                            samples.append(what)

        async def metering() -> None:
            await asyncio.sleep(max(0.0, t0 - time.monotonic()))
            meter.start()
            await asyncio.sleep(max(0.0, t1 - time.monotonic()))
            cpu.update(meter.stop())

        await asyncio.gather(metering(), *(caller(k) for k in range(concurrency)))
    latencies.sort()
    return {"workflows_per_s": done / seconds, "errors": errors, "error_samples": samples,
            "p50_ms": c.percentile(latencies, 50), "p99_ms": c.percentile(latencies, 99),
            "cpu": cpu}
