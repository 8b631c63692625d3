"""Ray's autoscaler asking the portal for devices: a v1 ``NodeProvider`` that the v2 autoscaler wraps.

The head of an autoscaled cluster runs Ray's autoscaler with the configuration ``config`` builds. Its
provider talks to the portal over HTTP with the head device's token: the portal books a device for each
node asked for (within the cluster's ``max_workers`` and the customer's credit), starts a Ray worker on
it, and stops and returns the device when the autoscaler releases an idle node. Nodes are matched to the
autoscaler's instances by ``RAY_CLOUD_INSTANCE_ID`` (the portal's node id), not by IP, so several nodes
on one host (the local agents) are told apart.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from ray.autoscaler.node_provider import NodeProvider
from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    NODE_KIND_WORKER,
    STATUS_UNINITIALIZED,
    STATUS_UP_TO_DATE,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

from gpu_pool.ray_node import HEAD_TYPE, WORKER_TYPE

logger = logging.getLogger("gpu_pool.autoscaler")
LIST_TTL_S = 1.0  # the autoscaler asks for the list and then each node's tags: one request serves them
TIMEOUT_S = 15


class PortalNodeProvider(NodeProvider):
    """Nodes of one portal cluster; ``provider_config`` names the portal and the file with the token."""

    def __init__(self, provider_config: dict[str, Any], cluster_name: str) -> None:
        super().__init__(provider_config, cluster_name)
        token = Path(provider_config["token_file"]).read_text().strip()
        self._http = httpx.Client(
            base_url=provider_config["portal_url"].rstrip("/") + "/api/v1/worker/autoscaler",
            headers={"Authorization": f"Bearer {token}"},
            timeout=TIMEOUT_S,
        )
        self._nodes: dict[str, dict[str, Any]] = {}
        self._listed_at = 0.0
        self._lock = threading.Lock()

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        reply = self._http.request(method, path, json=body)
        if reply.status_code >= 400:
            message = reply.json().get("error", {}).get("message", "") if reply.content else ""
            raise RuntimeError(f"the portal answered {reply.status_code}: {message or reply.text[:300]}")
        return reply.json() if reply.content else None

    def _listed(self) -> dict[str, dict[str, Any]]:
        """The cluster's nodes, fresh within LIST_TTL_S; the last list while the portal cannot be reached
        (the nodes keep running meanwhile, and an empty list would read as all of them gone)."""
        with self._lock:
            if time.monotonic() - self._listed_at > LIST_TTL_S:
                try:
                    nodes = self._call("GET", "/nodes")["nodes"]
                except (httpx.HTTPError, RuntimeError) as error:
                    logger.warning("cannot list the cluster's nodes, using the last list: %s", error)
                else:
                    self._nodes = {node["id"]: node for node in nodes}
                    self._listed_at = time.monotonic()
            return self._nodes

    def _forget_list(self) -> None:
        with self._lock:
            self._listed_at = 0.0

    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        return [
            node_id
            for node_id in self._listed()
            if all(self.node_tags(node_id).get(key) == value for key, value in tag_filters.items())
        ]

    def node_tags(self, node_id: str) -> dict[str, str]:
        node = self._listed().get(node_id)
        if node is None:
            return {}
        return {
            TAG_RAY_NODE_KIND: NODE_KIND_HEAD if node["role"] == "head" else NODE_KIND_WORKER,
            TAG_RAY_USER_NODE_TYPE: HEAD_TYPE if node["role"] == "head" else WORKER_TYPE,
            TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE if node["state"] == "joined" else STATUS_UNINITIALIZED,
        }

    def is_running(self, node_id: str) -> bool:
        return node_id in self._listed()

    def is_terminated(self, node_id: str) -> bool:
        return node_id not in self._listed()

    def internal_ip(self, node_id: str) -> str:
        return self._listed().get(node_id, {}).get("ip") or "127.0.0.1"

    def external_ip(self, node_id: str) -> str:
        return self.internal_ip(node_id)

    def set_node_tags(self, node_id: str, tags: dict[str, str]) -> None:
        pass  # the portal's node states are the tags; nothing else is kept

    def create_node(self, node_config: dict[str, Any], tags: dict[str, str], count: int) -> dict[str, Any]:
        if tags.get(TAG_RAY_USER_NODE_TYPE, WORKER_TYPE) != WORKER_TYPE:
            raise RuntimeError(f"the portal starts only {WORKER_TYPE} nodes")
        reply = self._call("POST", "/nodes", {"count": count})
        self._forget_list()
        logger.info("the portal booked %d of %d node(s): %s", len(reply["nodes"]), count, reply["nodes"])
        return {node["id"]: node for node in reply["nodes"]}

    def terminate_node(self, node_id: str) -> None:
        self._call("DELETE", f"/nodes/{node_id}")
        self._forget_list()


def config(
    *,
    cluster_id: str,
    portal_url: str,
    min_workers: int,
    max_workers: int,
    idle_timeout_s: float,
    head_resources: dict[str, float],
    worker_resources: dict[str, float],
) -> dict[str, Any]:
    """The autoscaling configuration for the head of one cluster (an external provider gets no defaults
    merged, so every section Ray reads is named, empty where the portal does the work). The token file's
    path is filled in where the head starts (``ray_node``), beside the node's own files."""
    return {
        "cluster_name": f"portal-{cluster_id[:8]}",
        "max_workers": max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_s / 60,
        "provider": {
            "type": "external",
            "module": f"{__name__}.{PortalNodeProvider.__name__}",
            "portal_url": portal_url,
            "token_file": None,
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
