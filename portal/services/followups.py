"""What a service command hands on once its transaction has committed: task messages (advance a cluster,
reconcile, settle payouts) and agent wake-ups. Commands receive it, so they never import the task layer;
``tasks.followups.TaskFollowUps`` sends the messages, and without it the periodic passes pick the work up."""

from __future__ import annotations

import uuid
from typing import Protocol


class FollowUps(Protocol):
    """Best effort, after the commit: what is asked is already in the database, and the periodic passes
    (reconciler every 5 s, settlement every period, agents' polls) do it anyway, only later."""

    def advance_cluster(self, cluster_id: uuid.UUID) -> None: ...

    def reconcile_clusters(self) -> None: ...

    def settle_payouts(self) -> None: ...

    def wake_agent(self, device_id: uuid.UUID) -> None: ...


class LeftToPeriodicPasses:
    """Sends nothing: a part built without the task layer (a test, a tool) leaves the follow-ups to the
    periodic passes."""

    def advance_cluster(self, cluster_id: uuid.UUID) -> None:
        pass

    def reconcile_clusters(self) -> None:
        pass

    def settle_payouts(self) -> None:
        pass

    def wake_agent(self, device_id: uuid.UUID) -> None:
        pass
