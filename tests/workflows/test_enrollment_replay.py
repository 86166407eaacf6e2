"""Replay saved histories of AutomationEnrollmentWorkflow runs against today's code.

A change to the workflow that would break enrollments already running (they may sleep for
days) makes this fail in CI. To change the workflow's commands safely, put the new code
behind `if workflow.patched("<change-id>"):` and keep the old path; see docs/automations.md.

To record a new history (after a deliberate, patched change), point RECORDED at a new
file, run `RETENSHUN_RECORD_HISTORIES=1 scripts/test tests/workflows/test_enrollment_replay.py`
and commit the JSON it writes beside the old ones (they are the runs still in flight).

Saved histories:
- enrollment_multi_step.json: before the `local-begin-and-finish` patch (begin and
  finish as regular activities, the first step recorded by its own local activity).
- enrollment_local_begin.json: with it (begin, which records the first step, and finish
  as local activities), recorded 2026-11-27 with the command above.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from tests.activities.fakes import SmtpSink
from tests.support import Tenant
from tests.workflows.conftest import QUEUE, Env
from workflows.enrollment import AutomationEnrollmentWorkflow, EnrollmentInput, EventSignal

HISTORIES = Path(__file__).parent / "histories"
RECORDED = HISTORIES / "enrollment_local_begin.json"  # what today's code issues
BEFORE_LOCAL_BEGIN = HISTORIES / "enrollment_multi_step.json"

# Every kind of step, so every command the workflow can issue is in the saved history.
STEPS = [
    {"type": "SEND_EMAIL", "subject": "Welcome", "body": "<p>Hi {{ name }}</p>"},
    {"type": "WAIT", "delay": 259200},
    {"type": "BRANCH", "rules": [{"field": "plan", "operator": "eq", "value": "pro"}],
     "then": [{"type": "SEND_EMAIL", "subject": "Pro tips", "body": "<p>Tips</p>"}],
     "else": [{"type": "SEND_EMAIL", "subject": "Upgrade", "body": "<p>Go pro</p>"}]},
    {"type": "WAIT_FOR_EVENT", "event": "checkout_completed", "timeout": 3600,
     "matchProperty": "cartId",
     "then": [{"type": "SEND_IN_APP", "subject": "Thanks", "body": "Order received"}],
     "else": [{"type": "SEND_EMAIL", "subject": "Forgot something?", "body": "<p>Cart</p>"}]},
    {"type": "SEND_EMAIL", "subject": "Bye", "body": "<p>See you</p>", "delay": 60},
]


async def test_fresh_multi_step_run_matches_saved_history(skipping: Env,
                                                          tenant: Tenant) -> None:
    """Runs every step kind for real, then checks today's run issues the same commands as
    the saved one (and saves it instead when RETENSHUN_RECORD_HISTORIES is set)."""
    with SmtpSink() as sink:
        tenant.sk.put("/channels", json={"emailProvider": "SMTP", "smtpHost": "127.0.0.1",
                                         "smtpPort": sink.port,
                                         "smtpFromEmail": "hi@shop.example.com"})
        tenant.pk.post("/identify", json={"userId": "ann", "email": "ann@example.com",
                                           "properties": {"name": "Ann", "plan": "pro"}})
        automation = tenant.sk.post("/automations", json={
            "name": "Replay", "triggerType": "EVENT", "triggerEvent": "cart_abandoned",
            "active": True, "steps": STEPS}).json()
        handle = await skipping.client.start_workflow(
            AutomationEnrollmentWorkflow.run,
            EnrollmentInput(project_id=tenant.project_id, automation_id=automation["id"],
                            user_id="ann", version=1, steps=automation["steps"],
                            trigger=EventSignal("evt_t", "cart_abandoned", {"cartId": "c1"})),
            id=f"enroll:{automation['id']}:ann", task_queue=QUEUE)
        await asyncio.to_thread(sink.wait_for_blocking, 1, 30)
        await skipping.env.sleep(259200 + 5)  # past the WAIT: the branch sends
        await asyncio.to_thread(sink.wait_for_blocking, 2, 30)
        await handle.signal(AutomationEnrollmentWorkflow.event,
                            EventSignal(f"evt_{uuid.uuid4().hex}", "checkout_completed",
                                        {"cartId": "c1"}))
        result = await asyncio.wait_for(handle.result(), 60)
        assert result.status == "completed"
        history = await handle.fetch_history()
    fresh = json.loads(history.to_json())
    if os.environ.get("RETENSHUN_RECORD_HISTORIES"):
        HISTORIES.mkdir(exist_ok=True)
        RECORDED.write_text(json.dumps(fresh, indent=1))
    saved = json.loads(RECORDED.read_text())
    assert _commands(fresh) == _commands(saved)


def _commands(history: dict[str, Any]) -> list[str]:
    """The workflow's decisions in order: what replay compares."""
    wanted = ("ACTIVITY_TASK_SCHEDULED", "TIMER_STARTED", "MARKER_RECORDED",
              "WORKFLOW_EXECUTION_COMPLETED")
    out = []
    for event in history["events"]:
        kind = event["eventType"].removeprefix("EVENT_TYPE_")
        if kind in wanted:
            attrs = event.get("activityTaskScheduledEventAttributes") or {}
            out.append(f"{kind}:{attrs.get('activityType', {}).get('name', '')}")
    return out


def _saved() -> list[Path]:
    return sorted(HISTORIES.glob("enrollment_*.json"))  # other workflows keep theirs here too


@pytest.mark.parametrize("path", [RECORDED, BEFORE_LOCAL_BEGIN], ids=lambda p: p.stem)
def test_a_multi_step_history_is_saved(path: Path) -> None:
    assert path in _saved(), "record it: see this module's docstring"
    events = json.loads(path.read_text())["events"]
    kinds = {e["eventType"] for e in events}
    # The saved run exercised timers, activities, local activities and signals.
    assert {"EVENT_TYPE_TIMER_FIRED", "EVENT_TYPE_ACTIVITY_TASK_COMPLETED",
            "EVENT_TYPE_MARKER_RECORDED", "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED"} <= kinds


def test_old_runs_keep_the_old_commands_and_new_runs_take_the_patch() -> None:
    """The patch changed the commands: the old history has `begin_enrollment` and
    `finish_enrollment` as activity tasks, the new one has neither (local activities)."""
    old = _commands(json.loads(BEFORE_LOCAL_BEGIN.read_text()))
    new = _commands(json.loads(RECORDED.read_text()))
    assert "ACTIVITY_TASK_SCHEDULED:begin_enrollment" in old
    assert "ACTIVITY_TASK_SCHEDULED:finish_enrollment" in old
    assert not any(c.endswith(("begin_enrollment", "finish_enrollment")) for c in new)
    assert len(new) > 0 and new.count("ACTIVITY_TASK_SCHEDULED:send_automation_step") == \
        old.count("ACTIVITY_TASK_SCHEDULED:send_automation_step")


@pytest.mark.parametrize("path", _saved(), ids=lambda p: p.stem)
async def test_saved_histories_replay(path: Path) -> None:
    history = WorkflowHistory.from_json("enroll:replay", path.read_text())
    await Replayer(workflows=[AutomationEnrollmentWorkflow]).replay_workflow(history)
