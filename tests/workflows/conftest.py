"""The time-skipping Temporal test server with the real worker (activities on the real
PostgreSQL), shared by the workflow tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from core.crypto import SecretBox
from core.db import make_async_engine, make_sessionmaker
from core.devstack import venv_binary
from core.settings import Settings
from worker import WORKFLOWS, WorkerDeps, build_activities

QUEUE = "enrollment-tests"


@dataclass
class Env:
    client: Client
    env: WorkflowEnvironment


@pytest.fixture(scope="session")
async def skipping(settings: Settings) -> AsyncIterator[Env]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=venv_binary("temporal-test-server"))
    engine = make_async_engine(settings.database_url, 4)
    async with httpx.AsyncClient() as http:
        deps = WorkerDeps(settings=settings, engine=engine, sessions=make_sessionmaker(engine),
                          secrets=SecretBox(settings.secret_key), http=http)
        async with Worker(env.client, task_queue=QUEUE, workflows=WORKFLOWS,
                          activities=build_activities(deps)):
            yield Env(env.client, env)
    await engine.dispose()
    await env.shutdown()


