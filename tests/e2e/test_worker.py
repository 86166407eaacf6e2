"""The worker process's core, in-process: it serves a task queue and reaches PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from datetime import timedelta

import pytest
from temporalio.client import Client

from core.devstack import free_port
from core.settings import Settings
from worker import WorkerError, run_worker
from workflows.ping import WorkerPingInput, WorkerPingWorkflow, ping_workflow_id


async def test_worker_runs_the_ping_workflow_against_postgres(settings: Settings) -> None:
    # A task queue of its own, so no other test's worker can take the ping.
    mine = settings.model_copy(update={"temporal_task_queue": f"ping-{uuid.uuid4().hex[:8]}"})
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(mine, stop=stop))
    try:
        client = await Client.connect(mine.temporal_address, namespace=mine.temporal_namespace)
        result = await client.execute_workflow(
            WorkerPingWorkflow.run, WorkerPingInput(reason="test"),
            id=ping_workflow_id(uuid.uuid4().hex), task_queue=mine.temporal_task_queue,
            execution_timeout=timedelta(seconds=30),
        )
        assert isinstance(result, str)
        assert "PostgreSQL" in result
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)  # a clean stop, not a cancellation
    assert task.exception() is None


async def test_worker_gives_up_on_unreachable_temporal_with_a_clear_error(
    settings: Settings,
) -> None:
    nowhere = settings.model_copy(update={"temporal_address": f"127.0.0.1:{free_port()}"})
    started = time.monotonic()
    expected = re.escape(f"cannot reach Temporal at {nowhere.temporal_address} ")
    with pytest.raises(WorkerError, match=expected):
        await run_worker(nowhere, connect_timeout=2)
    assert time.monotonic() - started < 15


async def test_worker_stops_promptly_while_still_waiting_for_temporal(settings: Settings) -> None:
    nowhere = settings.model_copy(update={"temporal_address": f"127.0.0.1:{free_port()}"})
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(nowhere, stop=stop, connect_timeout=60))
    await asyncio.sleep(1)
    assert not task.done()
    started = time.monotonic()
    stop.set()  # what SIGTERM does in worker.main()
    await asyncio.wait_for(task, 10)
    assert task.exception() is None
    assert time.monotonic() - started < 6
