"""The configuration of Ray's autoscaler on the head of an autoscaled cluster.

Its node provider (``gpu_pool.node_provider``) asks the head's agent over a Unix socket
(``gpu_pool.autoscaler_relay``), and the agent asks the portal; where the head starts (``ray_node``, or
``isolation`` for a container) the provider's module and the socket's path are filled in.
"""

from __future__ import annotations

from typing import Any

from gpu_pool.ray_node import HEAD_TYPE, WORKER_TYPE


def config(
    *,
    cluster_id: str,
    min_workers: int,
    max_workers: int,
    idle_timeout_s: float,
    head_resources: dict[str, float],
    worker_resources: dict[str, float],
) -> dict[str, Any]:
    """The autoscaling configuration for the head of one cluster (an external provider gets no defaults
    merged, so every section Ray reads is named, empty where the portal does the work)."""
    return {
        "cluster_name": f"portal-{cluster_id[:8]}",
        "max_workers": max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_s / 60,
        "provider": {
            "type": "external",
            "module": None,
            "socket": None,
            # The portal's agents start the Ray nodes themselves: no SSH, no updaters.
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "auth": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "head_node_type": HEAD_TYPE,
        "available_node_types": {
            HEAD_TYPE: {"resources": head_resources, "node_config": {}, "max_workers": 0},
            WORKER_TYPE: {
                "resources": worker_resources,
                "node_config": {},
                "min_workers": min_workers,
                "max_workers": max_workers,
            },
        },
    }
