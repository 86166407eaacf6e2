"""Fault injection for tests: a real worker process to kill, and an SMTP server that
kills it right after accepting a mail (the worst moment: the provider has the message,
the worker never hears so)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from core.settings import Settings
from tests.activities.fakes import SmtpSink

ROOT = Path(__file__).resolve().parents[1]


def start_worker_process(settings: Settings, queue: str | None = None) -> subprocess.Popen[bytes]:
    """`retenshun worker` as a subprocess (on its own task queue when `queue` is given)."""
    env = {**os.environ, "RETENSHUN_ENV": "test", "DATABASE_URL": settings.database_url,
           "TEMPORAL_ADDRESS": settings.temporal_address,
           "RETENSHUN_SECRET_KEY": settings.secret_key,
           "TEMPORAL_TASK_QUEUE": queue or settings.temporal_task_queue}
    return subprocess.Popen([sys.executable, "-c", "import worker; worker.main()"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class KillingSmtpSink(SmtpSink):
    """Accepts a mail, then SIGKILLs `victim` before it can hear the 250."""

    victim: subprocess.Popen[bytes] | None = None

    def start(self) -> KillingSmtpSink:
        super().start()
        assert self._controller is not None
        handler = self._controller.handler
        original = handler.handle_DATA

        async def handle_data(server: Any, session: Any, envelope: Any) -> str:
            reply: str = await original(server, session, envelope)
            if self.victim is not None and self.victim.poll() is None:
                os.kill(self.victim.pid, signal.SIGKILL)
                self.victim.wait(10)
            return reply

        handler.handle_DATA = handle_data
        return self
