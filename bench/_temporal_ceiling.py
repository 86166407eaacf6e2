"""The Temporal ceiling of a send: how many workflows of the send's shape the same Temporal
server completes per second when the workflow does nothing else.

SendMessageWorkflow is one workflow task that runs one local activity (`deliver`). Here
the same shape, with a local activity that does nothing but tell the waiting caller,
is started by --concurrency closed-loop callers (start, then wait for the activity's
word in this process, as POST /messages waits on the worker's NOTIFY) against a worker
in this process. No PostgreSQL, SMTP or HTTP: the rate is what Temporal (server and
Python SDK) allows before the product adds anything, so `ceiling / baseline` bounds
the send ratio of a design with one workflow per message.
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


@activity.defn(name="bench_ceiling_deliver")
async def deliver(workflow_id: str) -> None:
    """The stand-in for `deliver`: wakes the caller waiting on this workflow."""
    waiter = _arrived.pop(workflow_id, None)
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


@workflow.defn(name="BenchCeilingSend", sandboxed=False)
class CeilingSendWorkflow:
    @workflow.run
    async def run(self) -> None:
        await workflow.execute_local_activity(
            deliver, workflow.info().workflow_id, start_to_close_timeout=timedelta(seconds=30))


async def ceiling_phase(address: str, seconds: float, warmup: float, concurrency: int,
                        cpu_groups: dict[str, Callable[[], list[int]]]) -> dict[str, Any]:
    from temporalio.client import Client
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
    async with Worker(client, task_queue=queue, workflows=[CeilingSendWorkflow],
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
                    await client.start_workflow(CeilingSendWorkflow.run, id=wid,
                                                task_queue=queue)
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
