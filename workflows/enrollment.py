"""AutomationEnrollmentWorkflow: one run of one automation for one user.

Id `enroll:{automationId}:{userId}` (core.temporal), started by signal-with-start from
the outbox dispatcher, so a user is in at most one running enrollment of an automation
and a trigger during a run only delivers a signal that the run ignores. The steps are a
snapshot in the input: editing the automation never changes a run under way. Waits are
durable timers; `exitEvent`, awaited events and cancellation arrive as signals.

Changing what this workflow does (its commands) must go behind `workflow.patched(...)`;
tests/workflows/test_enrollment_replay.py replays saved histories to catch mistakes.
"""

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow

# The types live in activities/automations.py (created once per process, no string
# annotations for the payload converter to evaluate). Passed through, so that this
# stays cheap should the workflow ever be sandboxed again (see the class below).
with workflow.unsafe.imports_passed_through():
    from activities.automations import (
        AutomationActivities,
        BeginInput,
        BranchInput,
        CancelSignal,
        EnrollmentInput,
        EnrollmentResult,
        EnrollmentState,
        EventSignal,
        FinishInput,
        SendStepInput,
        StepProgressInput,
    )
    from core.automation_steps import SEND_CHANNELS
    from workflows.options import DB, SEND

__all__ = ["AutomationEnrollmentWorkflow", "CancelSignal", "EnrollmentInput",
           "EnrollmentResult", "EnrollmentState", "EventSignal"]

RECENT_EVENTS = 100
# Patch (docs/automations.md): the run's row is written by a LOCAL activity that also
# records the first step, and the row is closed by a local activity: a `[WAIT …]` run goes
# to sleep in one workflow task instead of two plus an activity task. Histories of runs
# started before it: tests/workflows/histories/enrollment_multi_step.json.
LOCAL_BEGIN_FINISH = "local-begin-and-finish"
LOCAL_DB = {"start_to_close_timeout": DB.start_to_close_timeout,
            "retry_policy": DB.retry_policy}


# Not sandboxed: the sandbox re-created this module for every run (~12% of the worker's
# CPU per enrollment) to guard against non-determinism that this code does not have: it
# only interprets the step snapshot in its input through workflow APIs (no clock,
# randomness, I/O or shared mutable state). Keep it that way; the replay test catches
# changed commands.
@workflow.defn(sandboxed=False)
class AutomationEnrollmentWorkflow:
    def __init__(self) -> None:
        self._stop: str | None = None  # exited | cancelled
        self._reason: str | None = None
        self._events: list[tuple[int, EventSignal]] = []
        self._seen: set[str] = set()
        self._seq = 0
        self._step: str | None = None
        self._exit_event: str | None = None
        self._trigger_id: str | None = None
        self._local = False  # LOCAL_BEGIN_FINISH applies to this run
        self._recorded: str | None = None  # the step `begin` already recorded

    @workflow.signal
    def event(self, signal: EventSignal) -> None:
        """An event of this user that the automation watches (trigger, exit, awaited)."""
        if signal.event_id in self._seen or signal.event_id == self._trigger_id:
            return  # duplicates, and the trigger delivered again by signal-with-start
        self._seen.add(signal.event_id)
        if self._exit_event and signal.event_name == self._exit_event and self._stop is None:
            self._stop, self._reason = "exited", f"exit event {signal.event_name}"
        self._seq += 1
        self._events = [*self._events[-(RECENT_EVENTS - 1):], (self._seq, signal)]

    @workflow.signal
    def cancel(self, signal: CancelSignal) -> None:
        if self._stop is None:
            self._stop, self._reason = "cancelled", signal.reason

    @workflow.query
    def state(self) -> EnrollmentState:
        return EnrollmentState(self._stop or "running", self._step, self._reason)

    @workflow.run
    async def run(self, input: EnrollmentInput) -> EnrollmentResult:
        self._exit_event = input.exit_event
        self._trigger_id = input.trigger.event_id if input.trigger else None
        self._input = input
        info = workflow.info()
        self._enrollment_id = f"run_{info.run_id.replace('-', '')}"
        begin = BeginInput(input.project_id, input.automation_id, input.user_id,
                           self._enrollment_id, info.workflow_id, input.version,
                           self._trigger_id)
        if workflow.patched(LOCAL_BEGIN_FINISH):
            self._local = True
            if input.steps:
                begin.step = self._recorded = f"steps[0] {input.steps[0]['type']}"
            begun = await workflow.execute_local_activity_method(
                AutomationActivities.begin, begin, **LOCAL_DB)
        else:
            begun = await workflow.execute_activity_method(
                AutomationActivities.begin, begin, **DB.kwargs())
        if not begun.ok:
            return EnrollmentResult("skipped", reason=begun.reason)
        try:
            await self._run_steps(input.steps, "steps")
        except asyncio.CancelledError:
            self._stop, self._reason = "cancelled", "workflow cancelled"
            await self._finish("cancelled")  # a cancelled workflow may still clean up
            raise
        status = self._stop or "completed"
        await self._finish(status)
        return EnrollmentResult(status, self._step, self._reason)

    async def _finish(self, status: str) -> None:
        finish = FinishInput(self._enrollment_id, status, self._step)
        if self._local:
            await workflow.execute_local_activity_method(
                AutomationActivities.finish, finish, **LOCAL_DB)
        else:
            await workflow.execute_activity_method(
                AutomationActivities.finish, finish, **DB.kwargs())

    async def _run_steps(self, steps: list[dict[str, Any]], path: str) -> None:
        for index, step in enumerate(steps):
            if self._stop:
                return
            here = f"{path}[{index}]"
            await self._enter(here, step)
            await self._sleep(step.get("delay") or 0)
            if self._stop:
                return
            await self._run_step(step, here)

    async def _run_step(self, step: dict[str, Any], here: str) -> None:
        kind = step["type"]
        if kind in SEND_CHANNELS:
            await self._send(step, here, SEND_CHANNELS[kind])
        elif kind == "WAIT":
            return  # its `delay` was the wait
        elif kind == "BRANCH":
            matched = await workflow.execute_activity_method(
                AutomationActivities.evaluate_branch,
                BranchInput(self._input.project_id, self._input.user_id, step["rules"]),
                **DB.kwargs(),
            )
            arm = "then" if matched else "else"
            await self._run_steps(step.get(arm) or [], f"{here}.{arm}")
        elif kind == "WAIT_FOR_EVENT":
            arrived = await self._wait_for_event(step)
            arm = "then" if arrived else "else"
            await self._run_steps(step.get(arm) or [], f"{here}.{arm}")

    async def _enter(self, here: str, step: dict[str, Any]) -> None:
        self._step = f"{here} {step['type']}"
        if self._recorded is not None:  # the first step, recorded by `begin`
            recorded, self._recorded = self._recorded, None
            if recorded == self._step:
                return
        await workflow.execute_local_activity_method(
            AutomationActivities.record_step, StepProgressInput(self._enrollment_id, self._step),
            start_to_close_timeout=timedelta(seconds=30),
        )

    async def _sleep(self, seconds: float) -> None:
        """A durable timer that an exit event or a cancel cuts short."""
        if seconds <= 0:
            return
        try:
            await workflow.wait_condition(lambda: self._stop is not None,
                                          timeout=timedelta(seconds=seconds))
        except TimeoutError:
            pass

    async def _wait_for_event(self, step: dict[str, Any]) -> bool:
        start = self._seq
        match_property = step.get("matchProperty")
        trigger_props = self._input.trigger.properties if self._input.trigger else {}
        wanted = trigger_props.get(match_property) if match_property else None

        def arrived() -> bool:
            return any(
                seq > start and ev.event_name == step["event"]
                and (not match_property or ev.properties.get(match_property) == wanted)
                for seq, ev in self._events
            )

        try:
            await workflow.wait_condition(lambda: arrived() or self._stop is not None,
                                          timeout=timedelta(seconds=step["timeout"]))
        except TimeoutError:
            return False
        return arrived()

    async def _send(self, step: dict[str, Any], here: str, channel: str) -> None:
        trigger = self._input.trigger
        event = None
        if trigger is not None:
            event = {"id": trigger.event_id, "name": trigger.event_name,
                     "properties": trigger.properties, "timestamp": trigger.timestamp}
        result = await workflow.execute_activity_method(
            AutomationActivities.send_step,
            SendStepInput(
                project_id=self._input.project_id, automation_id=self._input.automation_id,
                enrollment_id=self._enrollment_id, user_id=self._input.user_id,
                step_path=here, channel=channel, version=self._input.version,
                template_id=step.get("templateId"), subject=step.get("subject"),
                body=step.get("body"), ai=step.get("ai"), event=event,
            ),
            **SEND.kwargs(),
        )
        if result.status == "stopped" and self._stop is None:
            self._stop, self._reason = "cancelled", result.reason
