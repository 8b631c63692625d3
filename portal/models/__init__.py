"""Every table of the portal; importing this package registers them all on ``SQLModel.metadata``."""

from sqlmodel import SQLModel

from portal.models.auth import AuthSession, OAuthIdentity, RefreshToken
from portal.models.billing import (
    AccountKind,
    Deposit,
    DepositAccount,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    Payout,
    PayoutState,
    UsageRecord,
)
from portal.models.clusters import (
    Cluster,
    ClusterConnection,
    ClusterEvent,
    ClusterNode,
    ClusterState,
    Job,
    JobStatus,
    NodeRole,
    NodeState,
)
from portal.models.devices import (
    CommandState,
    ConnectivityTier,
    Device,
    DeviceCommand,
    DeviceState,
    Gpu,
    MeshState,
)
from portal.models.mesh import MeshCertificate
from portal.models.monitoring import (
    AuditLog,
    FaultEvent,
    GpuSample,
    HearingGap,
    NetworkSnapshot,
    StateTransition,
)
from portal.models.users import ApiKey, Role, User, UserRole

metadata = SQLModel.metadata

__all__ = [
    "AccountKind",
    "ApiKey",
    "AuditLog",
    "AuthSession",
    "Cluster",
    "ClusterConnection",
    "ClusterEvent",
    "ClusterNode",
    "ClusterState",
    "CommandState",
    "ConnectivityTier",
    "Deposit",
    "DepositAccount",
    "Device",
    "DeviceCommand",
    "DeviceState",
    "FaultEvent",
    "Gpu",
    "GpuSample",
    "HearingGap",
    "Job",
    "JobStatus",
    "LedgerAccount",
    "LedgerEntry",
    "LedgerTransaction",
    "MeshCertificate",
    "MeshState",
    "NetworkSnapshot",
    "NodeRole",
    "NodeState",
    "OAuthIdentity",
    "Payout",
    "PayoutState",
    "RefreshToken",
    "Role",
    "StateTransition",
    "UsageRecord",
    "User",
    "UserRole",
    "metadata",
]
