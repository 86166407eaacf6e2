"""GenerateContentWorkflow: one POST /ai/generate, id `ai-generate:{project}:{nonce}`.

The model call runs as an activity with the AI preset, so Temporal retries transient
failures, times the call out and shows it in its UI. Someone is waiting on the HTTP side,
so the whole generation (every retry included) is bounded by INTERACTIVE_BUDGET. The
input is the brief only: the activity loads (and decrypts) the project's AI settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow

from workflows.options import AI

with workflow.unsafe.imports_passed_through():
    from activities.ai import AiActivities, GeneratedContent, GenerateInput

# Retries included; the API waits a little longer than this for the result.
INTERACTIVE_BUDGET = timedelta(seconds=100)
AI_INTERACTIVE = dataclasses.replace(AI, schedule_to_close_timeout=INTERACTIVE_BUDGET)


@dataclass
class GenerateContentInput:
    project_id: str
    channel: str
    context: str
    tone: str | None = None


@workflow.defn
class GenerateContentWorkflow:
    @workflow.run
    async def run(self, input: GenerateContentInput) -> GeneratedContent:
        return await workflow.execute_activity_method(
            AiActivities.generate,
            GenerateInput(project_id=input.project_id, channel=input.channel,
                          context=input.context, tone=input.tone),
            **AI_INTERACTIVE.kwargs(),
        )
