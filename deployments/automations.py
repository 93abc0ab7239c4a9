"""Automations: a collector whose heartbeats stop is marked Crashed (its interval schedule then restarts it).

Flow runs emit ``prefect.flow-run.heartbeat`` events when ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` is set (>= 30 s;
``marketprism up`` sets 30). If neither another heartbeat nor a final state follows within 3 heartbeats, the
run is a zombie. The same definition is in ``deployments/automations.yaml`` for ``prefect automation create``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

HEARTBEAT_S = 30
ZOMBIE_NAME = "marketprism: crash runs whose heartbeats stopped"


def zombie_automation(heartbeat_s: int = HEARTBEAT_S) -> AutomationCore:
    return AutomationCore(
        name=ZOMBIE_NAME,
        description="A MarketPrism flow run that stopped sending heartbeats is marked Crashed.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=3 * heartbeat_s),
        ),
        actions=[
            ChangeFlowRunState(
                name="Crashed",
                state=StateType.CRASHED,
                message="No heartbeat: marked Crashed by MarketPrism",
                force=False,
            )
        ],
    )


async def ensure_automations(client: Any) -> list[str]:
    """Create the automations that do not exist yet (by name). Returns the names created."""
    created = []
    for automation in (zombie_automation(),):
        if not await client.read_automations_by_name(automation.name):
            await client.create_automation(automation)
            created.append(automation.name)
    return created
